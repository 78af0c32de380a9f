/* libFuzzer target for src/codec/http1.c.
 *
 * The input is a raw byte stream (corpus files are plain HTTP). It is run as:
 *  1. a request connection: pipelined heads + bodies until error / end;
 *  2. a response connection (req_flags 0 / HEAD / CONNECT, chosen from a hash
 *     of the input);
 *  3. a chunked body, a Content-Length body, and a trailer section on their own;
 *  4. the list helpers.
 * Connections are run twice: with the whole input at once and fed in
 * pseudo-random splits (seeded from the input); both must produce the same
 * event transcript (hashed). Each call sees an exact-size heap copy of only
 * the bytes fed so far, so ASan catches any read past `len`. Limits are also
 * derived from the hash so limit paths get exercised.
 */
#include "skiff/err.h"
#include "skiff/http1.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NHDRS 32

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_http1: invariant failed %s:%d: %s\n", __FILE__, __LINE__, #c);   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct cfg {
    int resp;
    unsigned req_flags;
    struct sk_h1_limits lim;
    size_t max_trailer;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    return fnv(h, &v, sizeof(v));
}

static int is_err(ssize_t r)
{
    switch (r) {
    case SK_ERR_H1_BAD_START:
    case SK_ERR_H1_BAD_HEADER:
    case SK_ERR_H1_OBS_FOLD:
    case SK_ERR_H1_SMUGGLE:
    case SK_ERR_H1_BAD_CHUNK:
    case SK_ERR_H1_HDR_TOO_LARGE:
    case SK_ERR_H1_TOO_MANY_HDRS:
    case SK_ERR_H1_BAD_VERSION:
    case SK_ERR_H1_BAD_CL:
    case SK_ERR_H1_BAD_TE:
        return 1;
    }
    return 0;
}

static int within(const char *p, size_t n, const char *buf, size_t len)
{
    return p >= buf && n <= len && p + n <= buf + len;
}

static void check_head(const struct sk_h1_msg *m, const char *buf, ssize_t r, const struct cfg *c)
{
    size_t n = (size_t)r;
    REQUIRE(n <= c->lim.max_head_bytes);
    REQUIRE(n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0);
    REQUIRE(m->nhdrs <= c->lim.max_headers && m->nhdrs <= m->hdrs_cap);
    REQUIRE(m->minor_version == 0 || m->minor_version == 1);
    for (size_t i = 0; i < m->nhdrs; i++) {
        const struct sk_h1_header *h = &m->hdrs[i];
        REQUIRE(h->name_len > 0 && within(h->name, h->name_len, buf, n));
        REQUIRE(within(h->value, h->value_len, buf, n));
        for (size_t k = 0; k < h->value_len; k++)
            REQUIRE(h->value[k] != '\r' && h->value[k] != '\n' && h->value[k] != '\0');
        if (h->value_len) {
            REQUIRE(h->value[0] != ' ' && h->value[0] != '\t');
            REQUIRE(h->value[h->value_len - 1] != ' ' && h->value[h->value_len - 1] != '\t');
        }
    }
    REQUIRE(!((m->flags & SK_H1_F_HAS_CL) && (m->flags & SK_H1_F_HAS_TE)));
    REQUIRE(m->content_length <= (uint64_t)INT64_MAX);
    if (m->body_kind == SK_H1_BODY_CHUNKED)
        REQUIRE(m->flags & SK_H1_F_HAS_TE);
    if (m->body_kind == SK_H1_BODY_LENGTH)
        REQUIRE((m->flags & SK_H1_F_HAS_CL) && m->content_length > 0);
    if (m->host)
        REQUIRE(within(m->host, m->host_len, buf, n));
    if (m->upgrade)
        REQUIRE(within(m->upgrade, m->upgrade_len, buf, n));
    if (m->flags & SK_H1_F_UPGRADE)
        REQUIRE(m->upgrade != NULL);
    if (c->resp) {
        REQUIRE(m->status >= 100 && m->status <= 999);
        REQUIRE(within(m->reason, m->reason_len, buf, n));
        REQUIRE(m->body_kind >= SK_H1_BODY_NONE && m->body_kind <= SK_H1_BODY_EOF);
        if (m->status < 200 || m->status == 204 || m->status == 304 ||
            (c->req_flags & SK_H1_F_HEAD))
            REQUIRE(m->body_kind == SK_H1_BODY_NONE);
        if (m->body_kind == SK_H1_BODY_EOF)
            REQUIRE(!(m->flags & SK_H1_F_KEEPALIVE));
    } else {
        REQUIRE(m->method_len > 0 && within(m->method, m->method_len, buf, n));
        REQUIRE(m->target_len > 0 && within(m->target, m->target_len, buf, n));
        REQUIRE(m->body_kind != SK_H1_BODY_EOF);
        if (m->minor_version == 1)
            REQUIRE(m->host != NULL && (m->flags & SK_H1_F_HAS_HOST));
        if (m->flags & SK_H1_F_CONNECT)
            REQUIRE(m->body_kind == SK_H1_BODY_NONE);
    }
    REQUIRE(!((m->flags & SK_H1_F_KEEPALIVE) && (m->flags & SK_H1_F_CONN_CLOSE)));
}

static uint64_t hash_head(uint64_t h, const struct sk_h1_msg *m, ssize_t r)
{
    h = fnv_u64(h, (uint64_t)r);
    h = fnv_u64(h, m->flags);
    h = fnv_u64(h, (uint64_t)m->body_kind);
    h = fnv_u64(h, m->content_length);
    h = fnv_u64(h, m->nhdrs);
    h = fnv_u64(h, (uint64_t)m->status);
    return h;
}

/* Run a connection over data[0..size). step == 0: whole input; otherwise
 * feed pseudo-random amounts (1..step) derived from `seed`. Returns the
 * transcript hash. */
static uint64_t run_conn(const uint8_t *data, size_t size, const struct cfg *c, size_t step,
                         uint64_t seed)
{
    struct sk_h1_header hdrs[NHDRS];
    struct sk_h1_msg m = {.hdrs = hdrs, .hdrs_cap = NHDRS};
    struct sk_h1_body b;
    size_t pos = 0, avail = step ? 0 : size;
    int in_body = 0;
    uint64_t h = 14695981039346656037ull, rs = seed | 1;
    uint64_t body_hash = 0, body_len = 0;
    int steps = 0;

    for (;;) {
        int need_more = 0;
        size_t n = avail - pos;
        char *copy = malloc(n ? n : 1);
        REQUIRE(copy != NULL);
        memcpy(copy, data + pos, n);
        if (!in_body) {
            ssize_t r = SK_ERR_AGAIN;
            if (n) {
                r = c->resp ? sk_h1_parse_response(copy, n, &m, &c->lim, c->req_flags)
                            : sk_h1_parse_request(copy, n, &m, &c->lim);
            }
            if (r == SK_ERR_AGAIN) {
                need_more = 1;
            } else if (r < 0) {
                REQUIRE(is_err(r));
                free(copy);
                return fnv_u64(h, (uint64_t)r);
            } else {
                REQUIRE((size_t)r <= n);
                check_head(&m, copy, r, c);
                h = hash_head(h, &m, r);
                pos += (size_t)r;
                sk_h1_body_init(&b, m.body_kind, m.content_length, c->max_trailer);
                in_body = 1;
                body_hash = 14695981039346656037ull;
                body_len = 0;
            }
        } else {
            int ev = -1;
            const char *d = NULL;
            size_t dl = 0;
            ssize_t r = sk_h1_body_step(&b, copy, n, &ev, &d, &dl);
            if (r < 0) {
                REQUIRE(is_err(r));
                free(copy);
                h = fnv_u64(h, body_hash);
                h = fnv_u64(h, body_len);
                return fnv_u64(h, (uint64_t)r);
            }
            REQUIRE((size_t)r <= n);
            switch (ev) {
            case SK_H1_BEV_DATA:
                REQUIRE(dl > 0 && within(d, dl, copy, (size_t)r));
                if (m.body_kind == SK_H1_BODY_LENGTH)
                    REQUIRE(sk_h1_body_done(&b) == (body_len + dl == m.content_length));
                body_hash = fnv(body_hash, d, dl);
                body_len += dl;
                break;
            case SK_H1_BEV_TRAILERS: {
                REQUIRE(dl > 0 && within(d, dl, copy, (size_t)r));
                REQUIRE(sk_h1_body_done(&b));
                REQUIRE(dl <= (c->max_trailer ? c->max_trailer : SK_H1_DEFAULT_MAX_HEAD));
                struct sk_h1_header th[NHDRS];
                ssize_t nt = sk_h1_parse_trailers(d, dl, th, NHDRS);
                /* validated by body_step already: only the count can fail */
                REQUIRE(nt >= 0 || nt == SK_ERR_H1_TOO_MANY_HDRS);
                for (ssize_t i = 0; i < nt; i++)
                    REQUIRE(within(th[i].name, th[i].name_len, d, dl) &&
                            within(th[i].value, th[i].value_len, d, dl));
                h = fnv(h, "T", 1);
                h = fnv(h, d, dl);
                break;
            }
            case SK_H1_BEV_DONE:
                REQUIRE(r == 0 || m.body_kind == SK_H1_BODY_CHUNKED);
                REQUIRE(sk_h1_body_done(&b));
                if (m.body_kind == SK_H1_BODY_LENGTH)
                    REQUIRE(body_len == m.content_length);
                h = fnv_u64(h, body_hash);
                h = fnv_u64(h, body_len);
                in_body = 0;
                break;
            case SK_H1_BEV_NEED_MORE:
                need_more = 1;
                break;
            default:
                REQUIRE(0);
            }
            pos += (size_t)r;
        }
        free(copy);
        REQUIRE(++steps < 10 * 1000 * 1000);
        if (need_more) {
            if (avail == size) {
                h = fnv_u64(h, body_hash);
                h = fnv_u64(h, body_len);
                return fnv_u64(h, in_body ? 1 : pos == size ? 2 : 3);
            }
            rs ^= rs << 13;
            rs ^= rs >> 7;
            rs ^= rs << 17;
            size_t k = 1 + (size_t)(rs % step);
            avail = avail + k > size ? size : avail + k;
        }
    }
}

/* A body decoded from offset 0 with the whole input available. */
static void run_body(const uint8_t *data, size_t size, int kind, uint64_t cl, size_t mt)
{
    struct sk_h1_body b;
    const char *in = (const char *)data;
    size_t pos = 0;
    sk_h1_body_init(&b, kind, cl, mt);
    for (int i = 0; i < 100000; i++) {
        int ev = -1;
        const char *d = NULL;
        size_t dl = 0;
        ssize_t r = sk_h1_body_step(&b, in + pos, size - pos, &ev, &d, &dl);
        if (r < 0) {
            REQUIRE(is_err(r));
            return;
        }
        REQUIRE((size_t)r <= size - pos);
        if (ev == SK_H1_BEV_DATA || ev == SK_H1_BEV_TRAILERS)
            REQUIRE(within(d, dl, in + pos, (size_t)r));
        pos += (size_t)r;
        if (ev == SK_H1_BEV_DONE || ev == SK_H1_BEV_NEED_MORE)
            return;
    }
    REQUIRE(0); /* no progress */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = fnv(14695981039346656037ull, data, size);
    struct cfg c = {0};

    c.lim.max_head_bytes = (seed & 3) == 0 ? 64 + (seed >> 8) % 256 : SK_H1_DEFAULT_MAX_HEAD;
    c.lim.max_headers = (seed & 12) == 0 ? 1 + (seed >> 16) % 6 : NHDRS;
    c.max_trailer = (seed & 48) == 0 ? 8 + (seed >> 24) % 64 : 0;

    /* 1. requests */
    uint64_t whole = run_conn(data, size, &c, 0, seed);
    uint64_t split = run_conn(data, size, &c, 1 + (seed >> 32) % 24, seed);
    REQUIRE(whole == split);

    /* 2. responses */
    static const unsigned rf[] = {0, SK_H1_F_HEAD, SK_H1_F_CONNECT, 0};
    c.resp = 1;
    c.req_flags = rf[(seed >> 40) & 3];
    whole = run_conn(data, size, &c, 0, seed);
    split = run_conn(data, size, &c, 1 + (seed >> 44) % 24, seed >> 3);
    REQUIRE(whole == split);

    /* 3. bodies and trailers on their own */
    run_body(data, size, SK_H1_BODY_CHUNKED, 0, c.max_trailer);
    run_body(data, size, SK_H1_BODY_LENGTH, size / 2, 0);
    run_body(data, size, SK_H1_BODY_EOF, 0, 0);
    struct sk_h1_header th[4];
    ssize_t nt = sk_h1_parse_trailers((const char *)data, size, th, 4);
    REQUIRE(nt == SK_ERR_H1_BAD_HEADER || nt == SK_ERR_H1_OBS_FOLD ||
            nt == SK_ERR_H1_TOO_MANY_HDRS || (nt >= 0 && nt <= 4));
    for (ssize_t i = 0; i < nt; i++)
        REQUIRE(within(th[i].name, th[i].name_len, (const char *)data, size) &&
                within(th[i].value, th[i].value_len, (const char *)data, size));

    /* 4. helpers */
    (void)sk_h1_has_token((const char *)data, size, "chunked");
    (void)sk_h1_name_eq((const char *)data, size, "transfer-encoding");
    return 0;
}
