/* Access log rendering: the compiled formats (sk_al_compile + the renderer in
 * src/stream/accesslog.c) against the interpreter they replaced
 * (ref_render.inc), byte for byte: every operator in text and JSON formats,
 * streams with every field set, with fields missing ("-" / null / omitted),
 * escaping (quotes, backslashes, control bytes, DEL, Latin-1, UTF-8, UTF-8
 * split across operators), :N truncation, omit_empty, long values that make
 * the buffer grow or hit its cap; then thousands of random formats and
 * streams. Plus fixed expected lines, so a bug shared by both fails too. */
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

#include "ref_render.inc"

static int failures, checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static struct sk_arena A;

/* ---- building formats ------------------------------------------------------------- */

static struct sk_al_format text_fmt(const char *s)
{
    struct sk_al_format f = {0};
    char err[256];
    if (sk_al_parse_format(&A, s, strlen(s), &f, err, sizeof(err)) < 0) {
        fprintf(stderr, "parse %s: %s\n", s, err);
        abort();
    }
    if (sk_al_compile(&A, &f) < 0)
        abort();
    return f;
}

/* keys are given as translate.c stores them: already escaped */
static struct sk_al_format json_fmt(size_t n, const char *const *kv, bool omit)
{
    struct sk_al_format f = {0};
    f.json = true;
    f.omit_empty = omit;
    f.njson = n;
    f.json_keys = sk_arena_alloc(&A, n * sizeof(char *) + 1);
    f.json_vals = sk_arena_alloc(&A, n * sizeof(struct sk_al_format) + 1);
    for (size_t i = 0; i < n; i++) {
        f.json_keys[i] = sk_arena_strdup(&A, kv[2 * i]);
        char err[256];
        if (sk_al_parse_format(&A, kv[2 * i + 1], strlen(kv[2 * i + 1]), &f.json_vals[i], err,
                               sizeof(err)) < 0) {
            fprintf(stderr, "parse %s: %s\n", kv[2 * i + 1], err);
            abort();
        }
    }
    if (sk_al_compile(&A, &f) < 0)
        abort();
    return f;
}

/* ---- streams ---------------------------------------------------------------------- */

struct fixture {
    struct sk_stream st;
    struct sk_hdr req[16], resp[8];
    struct sk_cluster cluster;
    struct sk_route route;
    struct sk_listener listener;
};

static void add(struct sk_hdrs *h, struct sk_hdr *v, const char *n, const char *val, size_t vl)
{
    h->v = v;
    v[h->n].name = n;
    v[h->n].nlen = (uint32_t)strlen(n);
    v[h->n].value = val;
    v[h->n].vlen = (uint32_t)vl;
    h->n++;
}
#define ADD(h, v, n, s) add(h, v, n, s, strlen(s))

static const double T0 = 1764000000.5; /* 2025-11-24T16:00:00.500Z */

/* every field set */
static void full(struct fixture *x)
{
    memset(x, 0, sizeof(*x));
    struct sk_stream *st = &x->st;
    st->method = "GET";
    st->method_len = 3;
    st->path = "/a?b=c";
    st->path_len = 6;
    st->authority = "svc.local:8080";
    st->authority_len = 14;
    st->scheme = "https";
    ADD(&st->req, x->req, "user-agent", "curl/8.5");
    ADD(&st->req, x->req, "x-request-id", "abc-123");
    ADD(&st->req, x->req, "x-envoy-original-path", "/orig");
    ADD(&st->req, x->req, "x-a", "va");
    ADD(&st->req, x->req, "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    ADD(&st->resp_hdrs, x->resp, "x-envoy-upstream-service-time", "12");
    ADD(&st->resp_hdrs, x->resp, "grpc-status", "0");
    st->status = 200;
    st->bytes_rx = 123;
    st->bytes_tx = 4567;
    st->t_start = T0;
    st->t_first_byte = T0 + 0.25;
    strcpy(st->upstream_host, "10.0.0.1:80");
    x->cluster.name = "backend";
    st->cluster = &x->cluster;
    st->attempt = 2;
    strcpy(st->peer_ip, "192.168.1.2");
    st->peer_port = 5555;
    x->listener.addr_str = "0.0.0.0:10000";
    st->listener = &x->listener;
    x->route.name = "r1";
    st->route = &x->route;
    st->conn_id = 77;
    st->stream_id = 3;
    st->downstream_h2 = true;
}

/* a tcp_proxy connection record: nothing but the peer */
static void empty(struct fixture *x)
{
    memset(x, 0, sizeof(*x));
    x->st.t_start = T0;
    strcpy(x->st.peer_ip, "127.0.0.1");
    x->st.peer_port = 1;
}

static const double NOW = T0 + 0.046;

/* ---- comparing -------------------------------------------------------------------- */

static char *render_new(const struct sk_al_format *f, const struct sk_stream *st, size_t *n)
{
    struct sk_buf b;
    sk_buf_init(&b, 8u << 20);
    sk_access_log_render(f, st, NOW, &b);
    *n = sk_buf_used(&b);
    char *r = malloc(*n + 1);
    memcpy(r, sk_buf_rptr(&b), *n);
    r[*n] = 0;
    sk_buf_free(&b);
    return r;
}

static char *render_ref(const struct sk_al_format *f, const struct sk_stream *st, size_t *n)
{
    struct sk_buf b;
    sk_buf_init(&b, 8u << 20);
    ref_render(f, st, NOW, &b);
    *n = sk_buf_used(&b);
    char *r = malloc(*n + 1);
    memcpy(r, sk_buf_rptr(&b), *n);
    r[*n] = 0;
    sk_buf_free(&b);
    return r;
}

static void dump(const char *what, const char *s, size_t n)
{
    fprintf(stderr, "  %s (%zu): ", what, n);
    for (size_t i = 0; i < n && i < 600; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f)
            fputc(c, stderr);
        else
            fprintf(stderr, "<%02x>", c);
    }
    fputc('\n', stderr);
}

static int same(const struct sk_al_format *f, const struct sk_stream *st, const char *label)
{
    size_t a, b;
    char *x = render_new(f, st, &a), *y = render_ref(f, st, &b);
    int ok = a == b && memcmp(x, y, a) == 0;
    checks++;
    if (!ok) {
        failures++;
        fprintf(stderr, "%s: compiled renderer differs from the reference\n", label);
        dump("compiled", x, a);
        dump("reference", y, b);
    }
    free(x);
    free(y);
    return ok;
}

static bool line_is(const struct sk_al_format *f, const struct sk_stream *st, const char *want)
{
    size_t n;
    char *x = render_new(f, st, &n);
    bool ok = n == strlen(want) && memcmp(x, want, n) == 0;
    if (!ok) {
        dump("got", x, n);
        dump("want", want, strlen(want));
    }
    free(x);
    return ok;
}

/* ---- the operators ---------------------------------------------------------------- */

static const char *const OPS[] = {
    "%START_TIME%", "%START_TIME(X)%", "%START_TIME:10%", "%REQ(:METHOD)%", "%REQ(:PATH)%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "%REQ(:AUTHORITY)%", "%REQ(:SCHEME)%", "%REQ(HOST)%",
    "%REQ(:BOGUS)%", "%REQ(X-A)%", "%REQ(X-NONE?X-A)%", "%REQ(X-NONE?:METHOD)%", "%REQ(X-A):1%",
    "%REQ(USER-AGENT)%", "%REQ(X-REQUEST-ID)%", "%REQ(X-NONE)%", "%REQ(X-NONE?)%",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "%RESP(X-NONE?GRPC-STATUS)%", "%RESP(X-NONE)%",
    "%TRAILER(GRPC-STATUS)%", "%PROTOCOL%", "%RESPONSE_CODE%", "%RESPONSE_CODE:1%",
    "%RESPONSE_FLAGS%", "%RESPONSE_CODE_DETAILS%", "%BYTES_RECEIVED%", "%BYTES_SENT%",
    "%BYTES_SENT:2%", "%DURATION%", "%RESPONSE_DURATION%", "%UPSTREAM_HOST%", "%UPSTREAM_HOST:4%",
    "%UPSTREAM_CLUSTER%", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "%DOWNSTREAM_REMOTE_ADDRESS%",
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "%DOWNSTREAM_LOCAL_ADDRESS%", "%DOWNSTREAM_PEER_URI_SAN%", "%DOWNSTREAM_TLS_VERSION%",
    "%REQUESTED_SERVER_NAME%", "%ROUTE_NAME%", "%CONNECTION_ID%", "%STREAM_ID%",
    "%GRPC_STATUS%", "%HOSTNAME%", "%TRACE_ID%",
};
#define NOPS (sizeof(OPS) / sizeof(OPS[0]))

/* Envoy's default text format (translate.c) */
static const char DEFAULT_FMT[] =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/* bench/overhead.sh's JSON format */
static const char *const BENCH_JSON[] = {
    "start", "%START_TIME%", "method", "%REQ(:METHOD)%", "path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority", "%REQ(:AUTHORITY)%", "protocol", "%PROTOCOL%", "code", "%RESPONSE_CODE%",
    "flags", "%RESPONSE_FLAGS%", "rx", "%BYTES_RECEIVED%", "tx", "%BYTES_SENT%",
    "duration", "%DURATION%", "upstream_time", "%RESPONSE_DURATION%", "upstream", "%UPSTREAM_HOST%",
    "cluster", "%UPSTREAM_CLUSTER%", "request_id", "%REQ(X-REQUEST-ID)%",
};

/* one format per operator (text and json, json with and without omit_empty),
 * then all of them in one format */
static void check_all_operators(struct fixture *x, const char *label)
{
    char lab[256];
    for (size_t i = 0; i < NOPS; i++) {
        struct sk_al_format t = text_fmt(OPS[i]);
        snprintf(lab, sizeof(lab), "%s text %s", label, OPS[i]);
        same(&t, &x->st, lab);
        char withnl[128];
        snprintf(withnl, sizeof(withnl), "<%s>\n", OPS[i]);
        t = text_fmt(withnl);
        same(&t, &x->st, lab);
        const char *kv[] = {"k", OPS[i]};
        for (int omit = 0; omit < 2; omit++) {
            struct sk_al_format j = json_fmt(1, kv, omit);
            snprintf(lab, sizeof(lab), "%s json%s %s", label, omit ? " omit_empty" : "", OPS[i]);
            same(&j, &x->st, lab);
        }
        /* the operator between two others, and inside a longer value */
        char mixed[256];
        snprintf(mixed, sizeof(mixed), "x%s y", OPS[i]);
        const char *kv2[] = {"a", "%REQ(X-NONE)%", "b", OPS[i], "c", mixed, "d", "%DURATION%"};
        for (int omit = 0; omit < 2; omit++) {
            struct sk_al_format j = json_fmt(4, kv2, omit);
            snprintf(lab, sizeof(lab), "%s json4%s %s", label, omit ? " omit_empty" : "", OPS[i]);
            same(&j, &x->st, lab);
        }
    }
    /* every operator in one text line and one JSON object */
    char all[4096] = "";
    const char *kv[2 * NOPS];
    char keys[NOPS][24];
    for (size_t i = 0; i < NOPS; i++) {
        strcat(all, OPS[i]);
        strcat(all, i % 3 ? " " : "");
        snprintf(keys[i], sizeof(keys[i]), "k%zu", i);
        kv[2 * i] = keys[i];
        kv[2 * i + 1] = OPS[i];
    }
    struct sk_al_format t = text_fmt(all);
    snprintf(lab, sizeof(lab), "%s text all", label);
    same(&t, &x->st, lab);
    for (int omit = 0; omit < 2; omit++) {
        struct sk_al_format j = json_fmt(NOPS, kv, omit);
        snprintf(lab, sizeof(lab), "%s json all%s", label, omit ? " omit_empty" : "");
        same(&j, &x->st, lab);
    }
    t = text_fmt(DEFAULT_FMT);
    snprintf(lab, sizeof(lab), "%s default text", label);
    same(&t, &x->st, lab);
    struct sk_al_format j = json_fmt(14, BENCH_JSON, false);
    snprintf(lab, sizeof(lab), "%s bench json", label);
    same(&j, &x->st, lab);
}

static void test_full_and_empty(void)
{
    struct fixture x;
    full(&x);
    check_all_operators(&x, "full");
    x.st.downstream_h2 = false;
    x.st.cause = SK_TERM_UPSTREAM_RESET;
    x.st.status = 502;
    check_all_operators(&x, "full UC");
    x.st.fault_delayed = true;
    check_all_operators(&x, "full DI,UC");
    x.st.cause = SK_TERM_DIRECT_RESPONSE;
    check_all_operators(&x, "full DI direct");
    x.st.fault_delayed = false;
    x.st.toxic = true;
    x.st.cause = 0;
    check_all_operators(&x, "full TX");
    empty(&x);
    check_all_operators(&x, "empty");
    strcpy(x.st.peer_ip, "2001:db8::1");
    x.st.peer_port = 65535;
    check_all_operators(&x, "empty v6");

    /* a downstream TLS object with no handshake: version, SNI and SAN readers run */
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    CHECK(ssl != NULL);
    if (ssl) {
        full(&x);
        x.st.tls = ssl;
        check_all_operators(&x, "tls");
        SSL_set_tlsext_host_name(ssl, "sni.example");
        check_all_operators(&x, "tls sni");
        SSL_free(ssl);
    }
    SSL_CTX_free(ctx);
}

/* fixed lines: the compiled renderer and the reference could share a bug */
static void test_expected_lines(void)
{
    struct fixture x;
    full(&x);
    struct sk_al_format t = text_fmt(DEFAULT_FMT);
    CHECK(line_is(&t, &x.st,
                  "[2025-11-24T16:00:00.500Z] \"GET /orig HTTP/2\" 200 - 123 4567 46 12 \"-\" "
                  "\"curl/8.5\" \"abc-123\" \"svc.local:8080\" \"10.0.0.1:80\"\n"));
    struct sk_al_format j = json_fmt(14, BENCH_JSON, false);
    CHECK(line_is(&j, &x.st,
                  "{\"start\":\"2025-11-24T16:00:00.500Z\",\"method\":\"GET\",\"path\":\"/orig\","
                  "\"authority\":\"svc.local:8080\",\"protocol\":\"HTTP/2\",\"code\":200,"
                  "\"flags\":\"-\",\"rx\":123,\"tx\":4567,\"duration\":46,\"upstream_time\":\"250\","
                  "\"upstream\":\"10.0.0.1:80\",\"cluster\":\"backend\",\"request_id\":\"abc-123\"}\n"));
    empty(&x);
    CHECK(line_is(&j, &x.st,
                  "{\"start\":\"2025-11-24T16:00:00.500Z\",\"method\":null,\"path\":null,"
                  "\"authority\":null,\"protocol\":null,\"code\":0,\"flags\":\"-\",\"rx\":0,\"tx\":0,"
                  "\"duration\":46,\"upstream_time\":null,\"upstream\":null,\"cluster\":null,"
                  "\"request_id\":null}\n"));
    struct sk_al_format jo = json_fmt(14, BENCH_JSON, true);
    CHECK(line_is(&jo, &x.st,
                  "{\"start\":\"2025-11-24T16:00:00.500Z\",\"code\":0,\"flags\":\"-\",\"rx\":0,"
                  "\"tx\":0,\"duration\":46}\n"));
    /* omit_empty when the first keys are the empty ones: no leading comma */
    const char *kv[] = {"a", "%REQ(X-NONE)%", "b", "%UPSTREAM_HOST%", "c", "%RESPONSE_CODE%",
                        "d", "%ROUTE_NAME%"};
    struct sk_al_format j2 = json_fmt(4, kv, true);
    CHECK(line_is(&j2, &x.st, "{\"c\":0}\n"));
    const char *kv3[] = {"a", "%REQ(X-NONE)%"};
    struct sk_al_format j3 = json_fmt(1, kv3, true);
    CHECK(line_is(&j3, &x.st, "{}\n"));
    /* literal values, numbers from the config, an escaped key, an empty value */
    const char *kv4[] = {"lit", "a \"quoted\" \\ value", "num", "42", "k\\\"ey", "%REQ(X-NONE)%",
                         "e", ""};
    struct sk_al_format j4 = json_fmt(4, kv4, false);
    CHECK(line_is(&j4, &x.st,
                  "{\"lit\":\"a \\\"quoted\\\" \\\\ value\",\"num\":\"42\",\"k\\\"ey\":null,"
                  "\"e\":\"\"}\n"));
    same(&j4, &x.st, "literal values");
    /* text: %% and a format without a trailing newline */
    struct sk_al_format t2 = text_fmt("100%% %RESPONSE_CODE%");
    CHECK(line_is(&t2, &x.st, "100% 0\n"));
    struct sk_al_format t3 = text_fmt("");
    CHECK(line_is(&t3, &x.st, "\n"));
}

/* escaping: header values with every kind of byte, in every position */
static void test_escaping(void)
{
    static const char *const vals[] = {
        "plain",
        "with \"quotes\" and \\backslash\\",
        "ctl\x01\x1f tab\t nl\n cr\r del\x7f",
        "latin1 caf\xe9 \xff\xfe",
        "utf8 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
        "bad utf8 \xc3 \xe2\x82 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf",
        "\xc3",
        "\xa9",
        "12345678\"",
        "1234567\"",
        "\"",
        "",
        "\x80\x80\x80\x80\x80\x80\x80\x80\x80",
    };
    size_t nv = sizeof(vals) / sizeof(vals[0]);
    static const char *const fmts[] = {
        "%REQ(X-A)%", "%REQ(X-A)%%REQ(X-B)%", "%REQ(X-A)%\xc3", "\xa9%REQ(X-A)%",
        "%REQ(X-A)% %REQ(X-B)%", "%REQ(X-A):5%", "\xc3%REQ(X-A)%\xa9", "%REQ(X-A)%-%RESP(X-R)%",
        "%REQ(:PATH)%", "%REQ(:AUTHORITY)%%REQ(X-A)%", "%REQ(X-A)%%%%REQ(X-B)%",
    };
    size_t nf = sizeof(fmts) / sizeof(fmts[0]);
    struct fixture x;
    for (size_t a = 0; a < nv; a++)
        for (size_t b = 0; b < nv; b++) {
            full(&x);
            x.st.req.n = 0;
            ADD(&x.st.req, x.req, "x-a", vals[a]);
            ADD(&x.st.req, x.req, "x-b", vals[b]);
            x.st.path = vals[b];
            x.st.path_len = (uint32_t)strlen(vals[b]);
            x.st.resp_hdrs.n = 0;
            ADD(&x.st.resp_hdrs, x.resp, "x-r", vals[a]);
            for (size_t f = 0; f < nf; f++) {
                char lab[64];
                snprintf(lab, sizeof(lab), "escape v%zu v%zu f%zu", a, b, f);
                const char *kv[] = {"v", fmts[f]};
                for (int omit = 0; omit < 2; omit++) {
                    struct sk_al_format j = json_fmt(1, kv, omit);
                    same(&j, &x.st, lab);
                }
                struct sk_al_format t = text_fmt(fmts[f]);
                same(&t, &x.st, lab);
            }
        }
    /* at every offset: the word-at-a-time scan and its tail */
    char buf[80];
    for (size_t len = 0; len < 40; len++)
        for (size_t at = 0; at <= len; at++)
            for (int k = 0; k < 4; k++) {
                memset(buf, 'a', len);
                if (at < len)
                    buf[at] = "\"\\\x05\xe9"[k];
                full(&x);
                x.st.req.n = 0;
                add(&x.st.req, x.req, "x-a", buf, len);
                const char *kv[] = {"v", "%REQ(X-A)%"};
                struct sk_al_format j = json_fmt(1, kv, false);
                same(&j, &x.st, "escape offset");
            }
    /* a traceparent nobody validated: its trace id is escaped now (the
     * reference wrote it raw, which was not valid JSON) */
    full(&x);
    x.st.req.n = 0;
    ADD(&x.st.req, x.req, "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e47\"6-00f067aa0ba902b7-01");
    const char *kv[] = {"t", "%TRACE_ID%"};
    struct sk_al_format j = json_fmt(1, kv, false);
    CHECK(line_is(&j, &x.st, "{\"t\":\"4bf92f3577b34da6a3ce929d0e0e47\\\"6\"}\n"));
}

/* long values: the buffer grows (and compacts) mid-line; a line that does not
 * fit under the cap is not written at all */
static void test_buffers(void)
{
    struct fixture x;
    full(&x);
    /* (the reference rendered an escaped JSON value in a 64 KiB scratch buffer:
     * a longer value came out empty; the compiled renderer writes it whole and
     * the writer's line limit applies: compared below that size) */
    size_t big = 60000;
    char *v = malloc(big);
    for (size_t i = 0; i < big; i++)
        v[i] = (char)(i % 7 == 0 ? '"' : 'a' + i % 26);
    x.st.req.n = 0;
    add(&x.st.req, x.req, "x-a", v, big);
    add(&x.st.req, x.req, "x-b", v, 1000);
    const char *kv[] = {"a", "%REQ(X-A)%", "b", "%REQ(X-B)%%REQ(X-A)%", "c", "%DURATION%"};
    struct sk_al_format j = json_fmt(3, kv, false);
    same(&j, &x.st, "big json");
    struct sk_al_format t = text_fmt("%REQ(X-A)% %REQ(X-B)%");
    same(&t, &x.st, "big text");

    /* in place after earlier lines, with consumed bytes in front (compaction) */
    struct sk_buf b;
    sk_buf_init(&b, 8u << 20);
    sk_buf_append(&b, "0123456789\n", 11);
    sk_buf_consume(&b, 5);
    sk_access_log_render(&j, &x.st, NOW, &b);
    size_t n;
    char *want = render_ref(&j, &x.st, &n);
    CHECK(sk_buf_used(&b) == 6 + n && memcmp(sk_buf_rptr(&b), "56789\n", 6) == 0 &&
          memcmp(sk_buf_rptr(&b) + 6, want, n) == 0);
    free(want);
    sk_buf_free(&b);

    /* cap: the line is taken back whole, what was there stays */
    for (size_t cap = 1; cap < 400; cap += 7) {
        full(&x);
        struct sk_al_format jb = json_fmt(14, BENCH_JSON, false);
        sk_buf_init(&b, cap + 3);
        sk_buf_append(&b, "xy\n", 3);
        sk_access_log_render(&jb, &x.st, NOW, &b);
        size_t used = sk_buf_used(&b);
        CHECK(used == 3 || (used > 3 && sk_buf_rptr(&b)[used - 1] == '\n'));
        CHECK(memcmp(sk_buf_rptr(&b), "xy\n", 3) == 0);
        sk_buf_free(&b);
    }
    /* longer than the reference's scratch buffer: written whole */
    size_t huge = 300000;
    char *hv = malloc(huge);
    memset(hv, '"', huge);
    x.st.req.n = 0;
    add(&x.st.req, x.req, "x-a", hv, huge);
    const char *kh[] = {"a", "%REQ(X-A)%"};
    struct sk_al_format jh = json_fmt(1, kh, false);
    char *out = render_new(&jh, &x.st, &n);
    CHECK(n == 2 * huge + 9 && memcmp(out, "{\"a\":\"\\\"", 8) == 0 &&
          memcmp(out + n - 5, "\\\"\"}\n", 5) == 0);
    free(out);
    free(hv);

    sk_buf_init(&b, 100);
    x.st.req.n = 0;
    add(&x.st.req, x.req, "x-a", v, big);
    sk_access_log_render(&t, &x.st, NOW, &b);
    CHECK(sk_buf_used(&b) == 0);
    sk_buf_free(&b);
    free(v);
}

/* ---- random formats and streams ------------------------------------------------------ */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static const char *const LITS[] = {" ", "-", "\"", "\\", "\xc3", "\xa9", "caf\xc3\xa9", "\t",
                                   "abc", "[", "]", "%%", ":", "\xe2\x82\xac", "\n", "x\x01y"};
static const char *const HVALS[] = {"", "a", "\"", "\\", "\xc3", "\xa9", "\xc3\xa9", "\x01",
                                    "hello world", "\xe2\x82", "\xac", "0123456789abcdef\"",
                                    "\xff", "GET", "/p/a/t/h?q=1"};

static void random_value(char *v, size_t cap)
{
    size_t n = 0;
    unsigned k = rnd(4);
    for (unsigned i = 0; i < k; i++) {
        const char *s = HVALS[rnd(sizeof(HVALS) / sizeof(HVALS[0]))];
        size_t l = strlen(s);
        if (n + l + 1 >= cap)
            break;
        memcpy(v + n, s, l);
        n += l;
    }
    v[n] = 0;
}

static void random_format(char *out, size_t cap)
{
    size_t n = 0;
    unsigned k = rnd(5);
    out[0] = 0;
    for (unsigned i = 0; i < k; i++) {
        const char *s = rnd(3) ? OPS[rnd(NOPS)] : LITS[rnd(sizeof(LITS) / sizeof(LITS[0]))];
        size_t l = strlen(s);
        if (n + l + 1 >= cap)
            break;
        memcpy(out + n, s, l);
        n += l;
        out[n] = 0;
    }
}

static void test_random(void)
{
    static char vals[8][64];
    static char fmts[8][512];
    static const char *const KEYS[] = {"a", "b", "c", "d", "e", "f", "g", "h"};
    int bad = 0;
    for (int it = 0; it < 20000 && bad < 5; it++) {
        struct fixture x;
        if (rnd(3))
            full(&x);
        else
            empty(&x);
        x.st.req.n = 0;
        x.st.resp_hdrs.n = 0;
        static const char *const names[] = {"x-a", "x-request-id", "user-agent", "host",
                                            "x-envoy-original-path"};
        for (int h = 0; h < 5; h++)
            if (rnd(2)) {
                random_value(vals[h], sizeof(vals[h]));
                ADD(&x.st.req, x.req, names[h], vals[h]);
            }
        if (rnd(2)) {
            random_value(vals[5], sizeof(vals[5]));
            ADD(&x.st.resp_hdrs, x.resp, "x-envoy-upstream-service-time", vals[5]);
        }
        if (rnd(2)) {
            random_value(vals[6], sizeof(vals[6]));
            ADD(&x.st.resp_hdrs, x.resp, "grpc-status", vals[6]);
        }
        if (x.st.method && rnd(3) == 0) {
            random_value(vals[7], sizeof(vals[7]));
            x.st.path = vals[7];
            x.st.path_len = (uint32_t)strlen(vals[7]);
        }
        x.st.cause = (int)rnd(SK_TERM__COUNT);
        x.st.fault_delayed = rnd(4) == 0;
        x.st.toxic = rnd(4) == 0;
        x.st.status = (int)rnd(600) - 1;
        if (rnd(2))
            x.st.t_first_byte = 0;
        x.st.t_start = T0 + rnd(100000) / 1000.0;
        char lab[64];
        snprintf(lab, sizeof(lab), "random %d", it);
        if (rnd(3) == 0) {
            random_format(fmts[0], sizeof(fmts[0]));
            struct sk_al_format t = text_fmt(fmts[0]);
            bad += !same(&t, &x.st, lab);
        } else {
            unsigned nk = 1 + rnd(6);
            const char *kv[16];
            for (unsigned k = 0; k < nk; k++) {
                random_format(fmts[k], sizeof(fmts[k]));
                kv[2 * k] = KEYS[k];
                kv[2 * k + 1] = fmts[k];
            }
            struct sk_al_format j = json_fmt(nk, kv, rnd(2));
            bad += !same(&j, &x.st, lab);
        }
        if (it % 1000 == 999) {
            sk_arena_free(&A);
            sk_arena_init(&A, 64 * 1024);
        }
    }
}

int main(void)
{
    sk_arena_init(&A, 64 * 1024);
    test_expected_lines();
    test_full_and_empty();
    test_escaping();
    test_buffers();
    test_random();
    sk_arena_free(&A);
    printf("accesslog: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
