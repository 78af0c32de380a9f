/* libFuzzer target for access-log formats: src/config/alformat.c (the
 * %COMMAND(arg):N% parser and sk_al_compile) and the compiled renderer in
 * src/stream/accesslog.c, checked against the interpreter it replaced
 * (tests/unit/accesslog/ref_render.inc).
 *
 * Input: byte 0 = flags (bit 0 JSON, bit 1 omit_empty); the rest split at NUL
 * bytes: the first part is the value of request header x-a (and the path),
 * the others are formats (text: only the first; JSON: one value each, keys
 * k0, k1, ...). Invariants: a format either parses or fails with a message
 * (never crashes); a parsed format compiles; the compiled renderer writes
 * exactly the reference's bytes for a stream with every field set and for
 * an empty one, rendering into a fresh buffer and after earlier lines. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "skiff/accesslog.h"
#include "skiff/arena.h"
#include "skiff/stream.h"
#include "skiff/tls.h"

#include "../unit/accesslog/ref_render.inc"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_alformat: invariant failed %s:%d: %s\n", __FILE__, __LINE__, #c);\
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_VALS 16

static void check_same(const struct sk_al_format *f, const struct sk_stream *st, double now)
{
    struct sk_buf a, b;
    sk_buf_init(&a, 1u << 20);
    sk_buf_init(&b, 1u << 20);
    sk_access_log_render(f, st, now, &a);
    ref_render(f, st, now, &b);
    REQUIRE(sk_buf_used(&a) == sk_buf_used(&b));
    REQUIRE(memcmp(sk_buf_rptr(&a), sk_buf_rptr(&b), sk_buf_used(&a)) == 0);
    /* in place after an earlier line: the same bytes follow it */
    size_t n = sk_buf_used(&a);
    sk_buf_append(&a, "\n", 1);
    sk_access_log_render(f, st, now, &a);
    REQUIRE(sk_buf_used(&a) == 2 * n + 1);
    REQUIRE(memcmp(sk_buf_rptr(&a) + n + 1, sk_buf_rptr(&b), n) == 0);
    sk_buf_free(&a);
    sk_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the reference rendered escaped values through a 64 KiB scratch buffer */
    if (size < 1 || size > 16384)
        return 0;
    bool json = data[0] & 1, omit = data[0] & 2;
    const char *p = (const char *)data + 1;
    size_t left = size - 1;
    const char *part[MAX_VALS + 1];
    size_t plen[MAX_VALS + 1];
    size_t np = 0;
    while (np < MAX_VALS + 1) {
        const char *z = memchr(p, 0, left);
        size_t l = z ? (size_t)(z - p) : left;
        part[np] = p;
        plen[np++] = l;
        if (!z)
            break;
        p = z + 1;
        left -= l + 1;
    }
    struct sk_arena a;
    sk_arena_init(&a, 16384);
    struct sk_al_format f = {0};
    char err[256];
    bool ok = true;
    if (!json) {
        if (np < 2) {
            sk_arena_free(&a);
            return 0;
        }
        err[0] = 0;
        ok = sk_al_parse_format(&a, part[1], plen[1], &f, err, sizeof(err)) == 0;
        REQUIRE(ok || err[0]);
    } else {
        size_t nk = np - 1;
        f.json = true;
        f.omit_empty = omit;
        f.njson = nk;
        f.json_keys = sk_arena_alloc(&a, nk * sizeof(char *) + 1);
        f.json_vals = sk_arena_alloc(&a, nk * sizeof(struct sk_al_format) + 1);
        REQUIRE(f.json_keys && f.json_vals);
        for (size_t k = 0; k < nk && ok; k++) {
            char key[24];
            snprintf(key, sizeof(key), "k%zu", k);
            f.json_keys[k] = sk_arena_strdup(&a, key);
            err[0] = 0;
            ok = sk_al_parse_format(&a, part[k + 1], plen[k + 1], &f.json_vals[k], err,
                                    sizeof(err)) == 0;
            REQUIRE(ok || err[0]);
        }
    }
    if (ok) {
        REQUIRE(sk_al_compile(&a, &f) == 0);
        struct sk_stream st;
        struct sk_hdr req[3], resp[2];
        struct sk_cluster cl;
        struct sk_route rt;
        struct sk_listener li;
        memset(&st, 0, sizeof(st));
        memset(&cl, 0, sizeof(cl));
        memset(&rt, 0, sizeof(rt));
        memset(&li, 0, sizeof(li));
        double t0 = 1764000000.25;
        st.t_start = t0;
        strcpy(st.peer_ip, "10.1.2.3");
        st.peer_port = 4242;
        check_same(&f, &st, t0 + 0.1); /* nothing set: "-", null, omitted */
        st.method = "POST";
        st.method_len = 4;
        st.path = part[0];
        st.path_len = (uint32_t)plen[0];
        st.authority = "h:1";
        st.authority_len = 3;
        st.scheme = "http";
        req[0] = (struct sk_hdr){"x-a", 3, part[0], (uint32_t)plen[0]};
        req[1] = (struct sk_hdr){"x-request-id", 12, "id\"1", 4};
        req[2] = (struct sk_hdr){"traceparent", 11,
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 55};
        st.req.v = req;
        st.req.n = 3;
        resp[0] = (struct sk_hdr){"grpc-status", 11, "14", 2};
        resp[1] = (struct sk_hdr){"x-a", 3, part[0], (uint32_t)plen[0]};
        st.resp_hdrs.v = resp;
        st.resp_hdrs.n = 2;
        st.status = 503;
        st.cause = SK_TERM_CONNECT_FAIL;
        st.fault_delayed = plen[0] & 1;
        st.bytes_rx = 1;
        st.bytes_tx = 1234567890123ull;
        st.t_first_byte = t0 + 0.05;
        strcpy(st.upstream_host, "[::1]:80");
        cl.name = "c\"l";
        st.cluster = &cl;
        rt.name = "r\\t";
        st.route = &rt;
        li.addr_str = "0.0.0.0:1";
        st.listener = &li;
        st.attempt = 3;
        st.conn_id = 9;
        st.stream_id = 11;
        check_same(&f, &st, t0 + 0.1);
    }
    sk_arena_free(&a);
    return 0;
}
