/* Unit tests for src/codec/http1.c.
 *
 * Most cases are "sessions": a byte stream (one or more pipelined messages)
 * is driven through head parse + body decode like a connection would, and the
 * run is summarised as a transcript string. Each session runs with the whole
 * input at once, byte by byte, and in many random splits; every run must
 * produce exactly the expected transcript. Transcript items:
 *   REQ <method> <target> 1.<minor> b<kind> cl<content_length> f=<flags> h<nhdrs>;
 *   RSP <status> [<reason>] 1.<minor> b<kind> cl<n> f=<flags> h<nhdrs>;
 *   B[<payload>];   body bytes (coalesced) before TRAILERS / DONE / ERR / EOF
 *   TR[<raw trailers>];  DONE;  ERR <name>;
 *   END;   input ended on a message boundary
 *   EOFH;  input ended inside a head;  EOF;  input ended inside a body
 */
#include "skiff/err.h"
#include "skiff/http1.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define NHDRS 64

static const char *errname(ssize_t e)
{
    switch (e) {
    case SK_ERR_AGAIN:
        return "AGAIN";
    case SK_ERR_INVAL:
        return "INVAL";
    case SK_ERR_H1_BAD_START:
        return "BAD_START";
    case SK_ERR_H1_BAD_HEADER:
        return "BAD_HEADER";
    case SK_ERR_H1_OBS_FOLD:
        return "OBS_FOLD";
    case SK_ERR_H1_SMUGGLE:
        return "SMUGGLE";
    case SK_ERR_H1_BAD_CHUNK:
        return "BAD_CHUNK";
    case SK_ERR_H1_HDR_TOO_LARGE:
        return "HDR_TOO_LARGE";
    case SK_ERR_H1_TOO_MANY_HDRS:
        return "TOO_MANY_HDRS";
    case SK_ERR_H1_BAD_VERSION:
        return "BAD_VERSION";
    case SK_ERR_H1_BAD_CL:
        return "BAD_CL";
    case SK_ERR_H1_BAD_TE:
        return "BAD_TE";
    }
    return "?";
}

/* ---- transcript ------------------------------------------------------- */

struct tr {
    char s[16384];
    size_t n;
};

static void tr_put(struct tr *t, const char *p, size_t n)
{
    if (n > sizeof(t->s) - 1 - t->n)
        n = sizeof(t->s) - 1 - t->n;
    memcpy(t->s + t->n, p, n);
    t->n += n;
    t->s[t->n] = '\0';
}

static void tr_printf(struct tr *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tr_printf(struct tr *t, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        tr_put(t, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void flags_str(unsigned f, char *out, size_t cap)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {SK_H1_F_KEEPALIVE, "ka"},  {SK_H1_F_EXPECT_CONTINUE, "exp"}, {SK_H1_F_UPGRADE, "upg"},
        {SK_H1_F_HAS_CL, "cl"},     {SK_H1_F_HAS_TE, "te"},           {SK_H1_F_CONN_CLOSE, "close"},
        {SK_H1_F_HAS_HOST, "host"}, {SK_H1_F_CONNECT, "connect"},     {SK_H1_F_HEAD, "head"},
    };
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (f & names[i].bit)
            n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? "," : "", names[i].name);
    }
}

static void tr_head(struct tr *t, const struct sk_h1_msg *m, int resp)
{
    char fl[128];
    flags_str(m->flags, fl, sizeof(fl));
    if (resp)
        tr_printf(t, "RSP %d%s%.*s 1.%d b%d cl%" PRIu64 " f=%s h%zu;", m->status,
                  m->reason_len ? " " : "", (int)m->reason_len, m->reason, m->minor_version,
                  m->body_kind, m->content_length, fl, m->nhdrs);
    else
        tr_printf(t, "REQ %.*s %.*s 1.%d b%d cl%" PRIu64 " f=%s h%zu;", (int)m->method_len,
                  m->method, (int)m->target_len, m->target, m->minor_version, m->body_kind,
                  m->content_length, fl, m->nhdrs);
}

/* ---- session driver --------------------------------------------------- */

struct scase {
    const char *name;
    const char *in;
    size_t len; /* 0: strlen(in) */
    int resp;
    unsigned req_flags;
    size_t max_head; /* 0: default */
    size_t max_hdrs; /* 0: NHDRS */
    size_t max_trailer;
    const char *want;
};

static uint64_t rng = 88172645463325252ull;
static size_t rnd(size_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (size_t)(rng % n);
}

/* mode 0: whole; 1: byte by byte; 2: random splits (1..17); 3: random (1..len) */
static void run_session(const struct scase *c, size_t len, int mode, struct tr *t)
{
    struct sk_h1_header hdrs[NHDRS];
    struct sk_h1_msg m = {.hdrs = hdrs, .hdrs_cap = NHDRS};
    struct sk_h1_limits lim = {.max_head_bytes = c->max_head ? c->max_head : 60 * 1024,
                               .max_headers = c->max_hdrs ? c->max_hdrs : NHDRS};
    struct sk_h1_body b;
    char body[8192];
    size_t blen = 0;
    size_t pos = 0, avail = 0;
    int in_body = 0;
    const char *in = c->in;

    t->n = 0;
    t->s[0] = '\0';
    /* copy the input to an exact-size heap block so ASan/valgrind catch any
     * read past the bytes fed so far */
    for (;;) {
        int need_more = 0;
        if (!in_body) {
            if (pos == avail) {
                need_more = 1;
            } else {
                char *copy = malloc(avail - pos);
                memcpy(copy, in + pos, avail - pos);
                ssize_t r = c->resp
                                ? sk_h1_parse_response(copy, avail - pos, &m, &lim, c->req_flags)
                                : sk_h1_parse_request(copy, avail - pos, &m, &lim);
                if (r > 0) {
                    /* re-point into the original so the transcript can print */
                    if (m.method)
                        m.method = in + pos + (m.method - copy);
                    if (m.target)
                        m.target = in + pos + (m.target - copy);
                    if (m.reason)
                        m.reason = in + pos + (m.reason - copy);
                    CHECK((size_t)r <= avail - pos);
                    for (size_t i = 0; i < m.nhdrs; i++) {
                        CHECK(hdrs[i].name >= copy && hdrs[i].name + hdrs[i].name_len <= copy + r);
                        CHECK(hdrs[i].value >= copy &&
                              hdrs[i].value + hdrs[i].value_len <= copy + r);
                    }
                }
                free(copy);
                if (r == SK_ERR_AGAIN) {
                    need_more = 1;
                } else if (r < 0) {
                    tr_printf(t, "ERR %s;", errname(r));
                    return;
                } else {
                    tr_head(t, &m, c->resp);
                    pos += (size_t)r;
                    sk_h1_body_init(&b, m.body_kind, m.content_length, c->max_trailer);
                    in_body = 1;
                    blen = 0;
                }
            }
        } else {
            int ev = -1;
            const char *data = NULL;
            size_t dlen = 99;
            size_t n = avail - pos;
            char *copy = malloc(n ? n : 1);
            memcpy(copy, in + pos, n);
            ssize_t r = sk_h1_body_step(&b, copy, n, &ev, &data, &dlen);
            if (r < 0) {
                free(copy);
                if (blen)
                    tr_printf(t, "B[%.*s];", (int)blen, body);
                tr_printf(t, "ERR %s;", errname(r));
                return;
            }
            CHECK((size_t)r <= n);
            if (ev == SK_H1_BEV_DATA) {
                CHECK(dlen > 0 && data >= copy && data + dlen <= copy + r);
                if (blen + dlen <= sizeof(body)) {
                    memcpy(body + blen, data, dlen);
                    blen += dlen;
                }
            } else if (ev == SK_H1_BEV_TRAILERS) {
                CHECK(data >= copy && data + dlen <= copy + r);
                if (blen)
                    tr_printf(t, "B[%.*s];", (int)blen, body);
                blen = 0;
                tr_printf(t, "TR[%.*s];", (int)dlen, data);
            } else if (ev == SK_H1_BEV_DONE) {
                if (blen)
                    tr_printf(t, "B[%.*s];", (int)blen, body);
                blen = 0;
                tr_printf(t, "DONE;");
                in_body = 0;
            } else {
                CHECK(ev == SK_H1_BEV_NEED_MORE);
                need_more = 1;
            }
            free(copy);
            pos += (size_t)r;
        }
        if (need_more) {
            if (avail == len) {
                if (in_body) {
                    if (blen)
                        tr_printf(t, "B[%.*s];", (int)blen, body);
                    tr_printf(t, "EOF;");
                } else {
                    tr_printf(t, pos == len ? "END;" : "EOFH;");
                }
                return;
            }
            size_t step;
            switch (mode) {
            case 0:
                step = len;
                break;
            case 1:
                step = 1;
                break;
            case 2:
                step = 1 + rnd(17);
                break;
            default:
                step = 1 + rnd(len);
                break;
            }
            avail = avail + step > len ? len : avail + step;
        }
    }
}

static int ncases;

static void run_cases(const struct scase *cs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct scase *c = &cs[i];
        size_t len = c->len ? c->len : strlen(c->in);
        struct tr t;
        ncases++;
        for (int run = 0; run < 60; run++) {
            int mode = run < 2 ? run : run < 30 ? 2 : 3;
            run_session(c, len, mode, &t);
            checks++;
            if (strcmp(t.s, c->want) != 0) {
                fprintf(stderr, "FAIL %s (mode %d)\n  want: %s\n  got:  %s\n", c->name, mode,
                        c->want, t.s);
                failures++;
                break;
            }
        }
    }
}

/* ---- request sessions ------------------------------------------------- */

#define H11 " HTTP/1.1\r\nHost: h\r\n"
static const struct scase req_ok[] = {
    {"simple GET", "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ GET / 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"POST with CL", "POST /submit?x=1&y=%20" H11 "Content-Length: 5\r\n\r\nhello", 0, 0, 0, 0, 0,
     0, "REQ POST /submit?x=1&y=%20 1.1 b1 cl5 f=ka,cl,host h2;B[hello];DONE;END;"},
    {"* for non-OPTIONS", "M-SEARCH *" H11 "\r\nPURGE /x" H11 "\r\nget /lower" H11 "\r\n", 0, 0, 0,
     0, 0, 0, "ERR BAD_START;"}, /* "*" is only for OPTIONS */
    {"custom methods", "PURGE /x" H11 "\r\nget /lower" H11 "\r\nM-SEARCH /" H11 "\r\n", 0, 0, 0, 0,
     0, 0,
     "REQ PURGE /x 1.1 b0 cl0 f=ka,host h1;DONE;REQ get /lower 1.1 b0 cl0 f=ka,host h1;DONE;"
     "REQ M-SEARCH / 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"absolute-form", "GET http://example.com:8080/a?b HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
     0, 0, 0, 0, 0, 0, "REQ GET http://example.com:8080/a?b 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"absolute-form https+x", "GET coap+tcp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ GET coap+tcp://x/ 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"CONNECT authority-form", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     0, 0, 0, 0, 0, 0, "REQ CONNECT example.com:443 1.1 b0 cl0 f=ka,host,connect h1;DONE;END;"},
    {"CONNECT ipv6", "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ CONNECT [::1]:8443 1.1 b0 cl0 f=ka,host,connect h1;DONE;END;"},
    {"CONNECT CL 0", "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 0\r\n\r\n", 0, 0, 0, 0,
     0, 0, "REQ CONNECT a:1 1.1 b0 cl0 f=ka,cl,host,connect h2;DONE;END;"},
    {"OPTIONS *", "OPTIONS *" H11 "\r\n", 0, 0, 0, 0, 0, 0,
     "REQ OPTIONS * 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"HEAD", "HEAD /x" H11 "\r\n", 0, 0, 0, 0, 0, 0,
     "REQ HEAD /x 1.1 b0 cl0 f=ka,host,head h1;DONE;END;"},
    {"HTTP/1.0 no Host", "GET / HTTP/1.0\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ GET / 1.0 b0 cl0 f= h0;DONE;END;"},
    {"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: a\r\n\r\n", 0, 0, 0,
     0, 0, 0, "REQ GET / 1.0 b0 cl0 f=ka,host h2;DONE;END;"},
    {"HTTP/1.0 expect/upgrade ignored",
     "GET / HTTP/1.0\r\nExpect: 100-continue\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", 0, 0, 0,
     0, 0, 0, "REQ GET / 1.0 b0 cl0 f= h3;DONE;END;"},
    {"Connection close", "GET /" H11 "Connection: foo, Close\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ GET / 1.1 b0 cl0 f=close,host h2;DONE;END;"},
    {"close wins over keep-alive",
     "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ GET / 1.0 b0 cl0 f=close h2;DONE;END;"},
    {"Expect 100-continue", "PUT /u" H11 "Expect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc", 0,
     0, 0, 0, 0, 0, "REQ PUT /u 1.1 b1 cl3 f=ka,exp,cl,host h3;B[abc];DONE;END;"},
    {"Expect other", "PUT /u" H11 "Expect: 100-continuex\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ PUT /u 1.1 b0 cl0 f=ka,host h2;DONE;END;"},
    {"upgrade", "GET /ws" H11 "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", 0, 0,
     0, 0, 0, 0, "REQ GET /ws 1.1 b0 cl0 f=ka,upg,host h3;DONE;END;"},
    {"Upgrade without Connection token", "GET /ws" H11 "Upgrade: websocket\r\n\r\n", 0, 0, 0, 0, 0,
     0, "REQ GET /ws 1.1 b0 cl0 f=ka,host h2;DONE;END;"},
    {"Connection upgrade without Upgrade", "GET /ws" H11 "Connection: upgrade\r\n\r\n", 0, 0, 0, 0,
     0, 0, "REQ GET /ws 1.1 b0 cl0 f=ka,host h2;DONE;END;"},
    {"leading empty lines", "\r\n\r\nGET /" H11 "\r\n", 0, 0, 0, 0, 0, 0,
     "REQ GET / 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"pipelined", "GET /a" H11 "\r\nPOST /b" H11 "Content-Length: 3\r\n\r\nxyzGET /c" H11 "\r\n", 0,
     0, 0, 0, 0, 0,
     "REQ GET /a 1.1 b0 cl0 f=ka,host h1;DONE;REQ POST /b 1.1 b1 cl3 f=ka,cl,host h2;B[xyz];DONE;"
     "REQ GET /c 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"pipelined chunked",
     "POST /a" H11 "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
     "GET /b" H11 "\r\n",
     0, 0, 0, 0, 0, 0,
     "REQ POST /a 1.1 b2 cl0 f=ka,te,host h2;B[abc];DONE;REQ GET /b 1.1 b0 cl0 f=ka,host h1;"
     "DONE;END;"},
    {"chunked with ext and trailers",
     "POST /" H11 "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1;q=\"a \\\"b\" ; z\r\n "
     "world\r\n0;last\r\nX-T: 1\r\nY:  2 \r\n\r\n",
     0, 0, 0, 0, 0, 0,
     "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;B[hello world];TR[X-T: 1\r\nY:  2 \r\n];DONE;END;"},
    {"chunked hex case, leading zeros",
     "POST /" H11 "Transfer-Encoding: Chunked\r\n\r\n"
     "00A\r\n0123456789\r\na\r\nabcdefghij\r\n000\r\n\r\n",
     0, 0, 0, 0, 0, 0, "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;B[0123456789abcdefghij];DONE;END;"},
    {"chunked incomplete", "POST /" H11 "Transfer-Encoding: chunked\r\n\r\n5\r\nhel", 0, 0, 0, 0, 0,
     0, "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;B[hel];EOF;"},
    {"chunked incomplete trailer", "POST /" H11 "Transfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n",
     0, 0, 0, 0, 0, 0, "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;EOF;"},
    {"TE with OWS", "POST /" H11 "Transfer-Encoding:  chunked \t\r\n\r\n0\r\n\r\n", 0, 0, 0, 0, 0,
     0, "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;DONE;END;"},
    {"CL equal duplicates", "POST /" H11 "Content-Length: 2\r\ncontent-length: 2, 2\r\n\r\nok", 0,
     0, 0, 0, 0, 0, "REQ POST / 1.1 b1 cl2 f=ka,cl,host h3;B[ok];DONE;END;"},
    {"CL zero", "POST /" H11 "Content-Length: 000\r\n\r\n", 0, 0, 0, 0, 0, 0,
     "REQ POST / 1.1 b0 cl0 f=ka,cl,host h2;DONE;END;"},
    {"CL max", "POST /" H11 "Content-Length: 9223372036854775807\r\n\r\nab", 0, 0, 0, 0, 0, 0,
     "REQ POST / 1.1 b1 cl9223372036854775807 f=ka,cl,host h2;B[ab];EOF;"},
    {"field variety",
     "GET / HTTP/1.1\r\nHOST: h\r\nX-Empty:\r\nX-Tab:\tv\tw\t\r\nX-Obs: \xc3\xa9t\xe9\r\n"
     "X~!#$%&'*+-.^_`|: 1\r\n\r\n",
     0, 0, 0, 0, 0, 0, "REQ GET / 1.1 b0 cl0 f=ka,host h5;DONE;END;"},
    {"incomplete head", "GET / HTTP/1.1\r\nHost: a\r\n", 0, 0, 0, 0, 0, 0, "EOFH;"},
    {"head exactly at limit", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, 0, 0, 27, 0, 0,
     "REQ GET / 1.1 b0 cl0 f=ka,host h1;DONE;END;"},
    {"headers exactly at count limit", "GET /" H11 "A: 1\r\nB: 2\r\n\r\n", 0, 0, 0, 0, 3, 0,
     "REQ GET / 1.1 b0 cl0 f=ka,host h3;DONE;END;"},
    {"trailer at limit", "POST /" H11 "Transfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\n\r\n", 0, 0,
     0, 0, 0, 6, "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;TR[A: 1\r\n];DONE;END;"},
};

#define REQ_ERR(n, s, e)                                                                           \
    {                                                                                              \
        n, s, sizeof(s) - 1, 0, 0, 0, 0, 0, "ERR " e ";"                                           \
    }
#define TE_HDR "POST /" H11 "Transfer-Encoding: "
#define CHUNKED(s) "POST /" H11 "Transfer-Encoding: chunked\r\n\r\n" s
#define CH_HEAD "REQ POST / 1.1 b2 cl0 f=ka,te,host h2;"
static const struct scase req_bad[] = {
    /* smuggling */
    REQ_ERR("CL+TE", "POST /" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "SMUGGLE"),
    REQ_ERR("TE+CL", "POST /" H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "SMUGGLE"),
    REQ_ERR("CL+TE other", "POST /" H11 "Content-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n",
            "SMUGGLE"),
    REQ_ERR("CL differ", "POST /" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "SMUGGLE"),
    REQ_ERR("CL list differ", "POST /" H11 "Content-Length: 5, 6\r\n\r\n", "SMUGGLE"),
    REQ_ERR("CL +5", "POST /" H11 "Content-Length: +5\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL -1", "POST /" H11 "Content-Length: -1\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL 0x5", "POST /" H11 "Content-Length: 0x5\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL empty", "POST /" H11 "Content-Length:\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL trailing comma", "POST /" H11 "Content-Length: 5,\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL inner space", "POST /" H11 "Content-Length: 1 2\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL 2^63", "POST /" H11 "Content-Length: 9223372036854775808\r\n\r\n", "BAD_CL"),
    REQ_ERR("CL huge", "POST /" H11 "Content-Length: 99999999999999999999999\r\n\r\n", "BAD_CL"),
    REQ_ERR("TE chunked\\x0b", TE_HDR "chunked\x0b\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("TE xchunked", TE_HDR "xchunked\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE chunked, chunked", TE_HDR "chunked, chunked\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE chunked twice", TE_HDR "chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE chunked, gzip", TE_HDR "chunked, gzip\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE gzip", TE_HDR "gzip\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE gzip, chunked", TE_HDR "gzip, chunked\r\n\r\n", "BAD_TE"),
    REQ_ERR("TE gzip + chunked fields", TE_HDR "gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "BAD_TE"),
    REQ_ERR("TE empty", TE_HDR "\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE empty element", TE_HDR ", chunked\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE params", TE_HDR "chunked;q=1\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE quoted", TE_HDR "\"chunked\"\r\n\r\n", "SMUGGLE"),
    REQ_ERR("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "SMUGGLE"),
    REQ_ERR("CONNECT with CL", "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 5\r\n\r\n",
            "SMUGGLE"),
    REQ_ERR("CONNECT with TE",
            "CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\n\r\n", "SMUGGLE"),
    REQ_ERR("space before colon TE", "POST /" H11 "Transfer-Encoding : chunked\r\n\r\n",
            "BAD_HEADER"),
    REQ_ERR("tab before colon CL", "POST /" H11 "Content-Length\t: 5\r\n\r\n", "BAD_HEADER"),
    /* field syntax */
    REQ_ERR("obs-fold", "GET /" H11 "X: a\r\n b\r\n\r\n", "OBS_FOLD"),
    REQ_ERR("obs-fold tab", "GET /" H11 "X: a\r\n\tb\r\n\r\n", "OBS_FOLD"),
    REQ_ERR("ws line after start line", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", "BAD_START"),
    REQ_ERR("NUL in value", "GET /" H11 "X: a\0b\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("bare CR in value", "GET /" H11 "X: a\rb\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("bare LF field", "GET /" H11 "X: a\n\r\n", "BAD_HEADER"),
    REQ_ERR("bare LF end of head", "GET /" H11 "\n", "BAD_HEADER"),
    REQ_ERR("bare CR end of head", "GET /" H11 "\rX", "BAD_HEADER"),
    REQ_ERR("bare LF request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CTL in value", "GET /" H11 "X: a\x7f\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("empty name", "GET /" H11 ": x\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("non-token name", "GET /" H11 "X(y): 1\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("no colon", "GET /" H11 "Xy\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("missing Host", "GET / HTTP/1.1\r\nX: 1\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("two Host", "GET /" H11 "Host: h\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("two Host 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("Host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("Host with @", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("Host with /", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "BAD_HEADER"),
    REQ_ERR("two Upgrade", "GET /" H11 "Upgrade: websocket\r\nUpgrade: h2c\r\n\r\n", "BAD_HEADER"),
    /* request line */
    REQ_ERR("HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", "BAD_VERSION"),
    REQ_ERR("HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", "BAD_VERSION"),
    REQ_ERR("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", "BAD_VERSION"),
    REQ_ERR("HTTP/1.1x", "GET / HTTP/1.1x\r\n\r\n", "BAD_START"),
    REQ_ERR("HTTP/11", "GET / HTTP/11\r\n\r\n", "BAD_START"),
    REQ_ERR("lowercase http", "GET / http/1.1\r\n\r\n", "BAD_START"),
    REQ_ERR("no version", "GET /\r\n\r\n", "BAD_START"),
    REQ_ERR("junk", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "BAD_START"),
    REQ_ERR("double SP", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("SP before version twice", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("trailing SP", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("tab separator", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CTL in target", "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("obs-text in target", "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("leading SP", " GET / HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("non-token method", "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("bare LF before request", "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("bare CR before request", "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("* for GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CONNECT no port", "CONNECT host HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CONNECT empty port", "CONNECT host: HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CONNECT userinfo", "CONNECT u@host:1 HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("CONNECT absolute", "CONNECT http://a:1/ HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("target no scheme", "GET foo HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    REQ_ERR("target bad scheme", "GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "BAD_START"),
    /* limits */
    {"head over limit", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, 0, 0, 26, 0, 0,
     "ERR HDR_TOO_LARGE;"},
    {"incomplete head over limit", "GET / HTTP/1.1\r\nHost: aaaaaaaaaaaaaaaaaaaaaaaaa", 0, 0, 0, 20,
     0, 0, "ERR HDR_TOO_LARGE;"},
    {"endless empty lines", "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n", 0, 0, 0, 16, 0, 0,
     "ERR HDR_TOO_LARGE;"},
    {"too many headers", "GET /" H11 "A: 1\r\nB: 2\r\nC: 3\r\n\r\n", 0, 0, 0, 0, 3, 0,
     "ERR TOO_MANY_HDRS;"},
    /* chunked body */
    {"chunk 0x5", CHUNKED("0x5\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk -1", CHUNKED("-1\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk +1", CHUNKED("+1\r\nh\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk empty size", CHUNKED("\r\nh\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk leading space", CHUNKED(" 1\r\nh\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk trailing space", CHUNKED("1 \r\nh\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk size 2^63", CHUNKED("8000000000000000\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk size 17 digits", CHUNKED("10000000000000000\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"chunk size overflow 2^64+5", CHUNKED("10000000000000005\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0,
     0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"missing CRLF after data", CHUNKED("5\r\nhelloX\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "B[hello];ERR BAD_CHUNK;"},
    {"LF only after data", CHUNKED("5\r\nhello\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "B[hello];ERR BAD_CHUNK;"},
    {"junk+LF after data", CHUNKED("5\r\nhelloX\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "B[hello];ERR BAD_CHUNK;"},
    {"CR only after data", CHUNKED("5\r\nhello\r0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "B[hello];ERR BAD_CHUNK;"},
    {"bare LF size line", CHUNKED("5\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"bare LF in ext", CHUNKED("5;a\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"bare LF in quoted ext", CHUNKED("5;a=\"x\ny\"\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"ext empty name", CHUNKED("5;=x\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"ext empty value", CHUNKED("5;a=\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"ext trailing ws", CHUNKED("5;a=b \r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"ext unterminated quote", CHUNKED("5;a=\"b\r\nhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"size line CR junk", CHUNKED("5\rhello\r\n0\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_CHUNK;"},
    {"last chunk bare LF", CHUNKED("0\n\r\n"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"trailer end bare CR", CHUNKED("0\r\n\rX"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_CHUNK;"},
    {"trailer bare LF", CHUNKED("0\r\nX: 1\n\r\n"), 0, 0, 0, 0, 0, 0, CH_HEAD "ERR BAD_HEADER;"},
    {"trailer obs-fold", CHUNKED("0\r\nX: 1\r\n 2\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR OBS_FOLD;"},
    {"trailer CL", CHUNKED("0\r\nContent-Length: 5\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_HEADER;"},
    {"trailer TE", CHUNKED("0\r\ntransfer-encoding: chunked\r\n\r\n"), 0, 0, 0, 0, 0, 0,
     CH_HEAD "ERR BAD_HEADER;"},
    {"trailer too large", CHUNKED("0\r\nA: 12\r\n\r\n"), 0, 0, 0, 0, 0, 6,
     CH_HEAD "ERR HDR_TOO_LARGE;"},
    {"trailer too large, unterminated", CHUNKED("0\r\nA: 1234567890"), 0, 0, 0, 0, 0, 6,
     CH_HEAD "ERR HDR_TOO_LARGE;"},
};

/* ---- response sessions ------------------------------------------------ */

#define RSP(n, s, f, w)                                                                            \
    {                                                                                              \
        n, s, 0, 1, f, 0, 0, 0, w                                                                  \
    }
static const struct scase rsp_cases[] = {
    RSP("200 CL", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 0,
        "RSP 200 OK 1.1 b1 cl2 f=ka,cl h1;B[hi];DONE;END;"),
    RSP("200 chunked",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nT: v\r\n\r\n", 0,
        "RSP 200 OK 1.1 b2 cl0 f=ka,te h1;B[hi];TR[T: v\r\n];DONE;END;"),
    RSP("200 EOF", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nall the rest\r\n", 0,
        "RSP 200 OK 1.1 b3 cl0 f= h1;B[all the rest\r\n];EOF;"),
    RSP("1.0 keep-alive CL",
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", 0,
        "RSP 200 OK 1.0 b1 cl1 f=ka,cl h2;B[x];DONE;END;"),
    RSP("1.0 no keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 0,
        "RSP 200 OK 1.0 b1 cl1 f=cl h1;B[x];DONE;END;"),
    RSP("204 then 200",
        "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        0,
        "RSP 204 No Content 1.1 b0 cl0 f=ka,cl h1;DONE;RSP 200 OK 1.1 b0 cl0 f=ka,cl h1;DONE;END;"),
    RSP("204 without CL is not EOF", "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\nx", 0,
        "RSP 204 No Content 1.1 b0 cl0 f=ka h0;DONE;RSP 200 OK 1.1 b3 cl0 f= h0;B[x];EOF;"),
    RSP("304 chunked", "HTTP/1.1 304 NM\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
        "RSP 304 NM 1.1 b0 cl0 f=ka,te h1;DONE;END;"),
    RSP("304 with CL", "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", 0,
        "RSP 304 Not Modified 1.1 b0 cl100 f=ka,cl h1;DONE;END;"),
    RSP("HEAD response with CL", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", SK_H1_F_HEAD,
        "RSP 200 OK 1.1 b0 cl100 f=ka,cl h1;DONE;END;"),
    RSP("HEAD response chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        SK_H1_F_HEAD, "RSP 200 OK 1.1 b0 cl0 f=ka,te h1;DONE;END;"),
    RSP("100 then 200", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        0, "RSP 100 Continue 1.1 b0 cl0 f=ka h0;DONE;RSP 200 OK 1.1 b0 cl0 f=ka,cl h1;DONE;END;"),
    RSP("101 upgrade",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0,
        "RSP 101 Switching Protocols 1.1 b0 cl0 f=ka,upg h2;DONE;END;"),
    RSP("2xx to CONNECT ignores framing",
        "HTTP/1.1 200 Connection established\r\n"
        "Transfer-Encoding: gzip\r\nContent-Length: x\r\n\r\n",
        SK_H1_F_CONNECT, "RSP 200 Connection established 1.1 b0 cl0 f=ka h2;DONE;END;"),
    RSP("407 to CONNECT has body", "HTTP/1.1 407 Auth\r\nContent-Length: 1\r\n\r\nx",
        SK_H1_F_CONNECT, "RSP 407 Auth 1.1 b1 cl1 f=ka,cl h1;B[x];DONE;END;"),
    RSP("empty reason with SP", "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", 0,
        "RSP 200 1.1 b0 cl0 f=ka,cl h1;DONE;END;"),
    RSP("no SP before empty reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 0,
        "RSP 200 1.1 b0 cl0 f=ka,cl h1;DONE;END;"),
    RSP("reason with obs-text",
        "HTTP/1.1 599 Sp\xe9"
        "cial \tx\r\nContent-Length: 0\r\n\r\n",
        0,
        "RSP 599 Sp\xe9"
        "cial \tx 1.1 b0 cl0 f=ka,cl h1;DONE;END;"),
    RSP("close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 0,
        "RSP 200 OK 1.1 b0 cl0 f=cl,close h2;DONE;END;"),
    RSP("status 20", "HTTP/1.1 20 OK\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("status 2000", "HTTP/1.1 2000 OK\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("status 099", "HTTP/1.1 099 X\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("status letters", "HTTP/1.1 2x0 OK\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("HTTP/2", "HTTP/2 200\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", 0, "ERR BAD_VERSION;"),
    RSP("double SP", "HTTP/1.1  200 OK\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("CTL in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", 0, "ERR BAD_START;"),
    RSP("bare LF status", "HTTP/1.1 200 OK\n\r\n", 0, "ERR BAD_START;"),
    RSP("TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 0, "ERR BAD_TE;"),
    RSP("TE gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0,
        "ERR BAD_TE;"),
    RSP("TE chunked, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 0,
        "ERR SMUGGLE;"),
    RSP("CL+TE", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
        "ERR SMUGGLE;"),
    RSP("CL differ", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 0,
        "ERR SMUGGLE;"),
    RSP("bad CL", "HTTP/1.1 200 OK\r\nContent-Length: 3a\r\n\r\n", 0, "ERR BAD_CL;"),
    RSP("TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, "ERR SMUGGLE;"),
    RSP("obs-fold", "HTTP/1.1 200 OK\r\nX: 1\r\n 2\r\n\r\n", 0, "ERR OBS_FOLD;"),
    RSP("leading CRLF not skipped", "\r\nHTTP/1.1 200 OK\r\n\r\n", 0, "ERR BAD_START;"),
};

/* ---- direct API tests ------------------------------------------------- */

static ssize_t preq(const char *s, struct sk_h1_msg *m)
{
    return sk_h1_parse_request(s, strlen(s), m, NULL);
}

static int hdr_is(const struct sk_h1_header *h, const char *n, const char *v)
{
    return h->name_len == strlen(n) && memcmp(h->name, n, h->name_len) == 0 &&
           h->value_len == strlen(v) && memcmp(h->value, v, h->value_len) == 0;
}

static void test_fields(void)
{
    struct sk_h1_header hdrs[8];
    struct sk_h1_msg m = {.hdrs = hdrs, .hdrs_cap = 8};
    const char *s = "GET /p?q HTTP/1.1\r\nHost:  example.com \r\nX-A:\t a  b \t\r\nX-E:\r\n"
                    "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\nBODY";
    ssize_t r = preq(s, &m);
    CHECK(r == (ssize_t)(strlen(s) - 4));
    CHECK(m.nhdrs == 5);
    CHECK(hdr_is(&hdrs[0], "Host", "example.com"));
    CHECK(hdr_is(&hdrs[1], "X-A", "a  b"));
    CHECK(hdr_is(&hdrs[2], "X-E", ""));
    CHECK(hdrs[2].value >= s && hdrs[2].value <= s + r);
    CHECK(m.host == hdrs[0].value && m.host_len == 11);
    CHECK(m.upgrade_len == 3 && memcmp(m.upgrade, "h2c", 3) == 0);
    CHECK(m.flags == (SK_H1_F_KEEPALIVE | SK_H1_F_UPGRADE | SK_H1_F_HAS_HOST));
    CHECK(m.method == s && m.method_len == 3);
    CHECK(m.target == s + 4 && m.target_len == 4);
    CHECK(m.minor_version == 1 && m.body_kind == SK_H1_BODY_NONE);
    CHECK(m.upgrade != NULL);

    /* stale state is cleared between calls */
    r = preq("GET / HTTP/1.0\r\n\r\n", &m);
    CHECK(r == 18 && m.nhdrs == 0 && m.host == NULL && m.upgrade == NULL && m.flags == 0);

    /* hdrs_cap clamps max_headers; lim == NULL uses the cap */
    struct sk_h1_msg m2 = {.hdrs = hdrs, .hdrs_cap = 1};
    CHECK(preq("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &m2) > 0);
    CHECK(preq("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n", &m2) == SK_ERR_H1_TOO_MANY_HDRS);
    struct sk_h1_limits lim = {.max_head_bytes = 0, .max_headers = 100};
    const char *two = "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n";
    CHECK(sk_h1_parse_request(two, strlen(two), &m2, &lim) == SK_ERR_H1_TOO_MANY_HDRS);
    /* TOO_MANY_HDRS is reported as soon as the extra field starts */
    CHECK(sk_h1_parse_request(two, 25, &m2, &lim) == SK_ERR_AGAIN);
    CHECK(sk_h1_parse_request(two, 26, &m2, &lim) == SK_ERR_H1_TOO_MANY_HDRS);

    /* AGAIN for every proper prefix of a valid head, then the head length */
    const char *g = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for (size_t i = 0; i < strlen(g); i++)
        CHECK(sk_h1_parse_request(g, i, &m, NULL) == SK_ERR_AGAIN);
    CHECK(sk_h1_parse_request(g, strlen(g), &m, NULL) == (ssize_t)strlen(g));

    /* default head limit: 60 KiB */
    static char big[70 * 1024];
    memset(big, 'a', sizeof(big));
    memcpy(big, "GET / HTTP/1.1\r\nHost: a\r\nX: ", 28);
    CHECK(sk_h1_parse_request(big, 60 * 1024, &m, NULL) == SK_ERR_AGAIN);
    CHECK(sk_h1_parse_request(big, 60 * 1024 + 1, &m, NULL) == SK_ERR_H1_HDR_TOO_LARGE);
    memcpy(big + 60 * 1024 - 4, "\r\n\r\n", 4);
    CHECK(sk_h1_parse_request(big, sizeof(big), &m, NULL) == 60 * 1024);
    memcpy(big + 60 * 1024 - 4, "aa\r\n\r\n", 6);
    CHECK(sk_h1_parse_request(big, sizeof(big), &m, NULL) == SK_ERR_H1_HDR_TOO_LARGE);

    /* response with a big status code and reason pointers */
    const char *rs = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    CHECK(sk_h1_parse_response(rs, strlen(rs), &m, NULL, 0) == (ssize_t)strlen(rs));
    CHECK(m.status == 404 && m.reason == rs + 13 && m.reason_len == 9);
    CHECK(m.method == NULL && m.target == NULL);
    /* the field section span: from the first field line through the empty line */
    CHECK(m.fields == rs + 24 && m.fields_len == strlen(rs) - 24);
    CHECK(preq(s, &m) > 0 && m.fields == s + 19 && m.fields + m.fields_len == s + strlen(s) - 4);
}

static void test_helpers(void)
{
    CHECK(sk_h1_name_eq("Content-Length", 14, "content-length"));
    CHECK(!sk_h1_name_eq("Content-Length", 13, "content-length"));
    CHECK(!sk_h1_name_eq("Content-Lengthx", 15, "content-length"));
    CHECK(sk_h1_name_eq("", 0, ""));
    CHECK(!sk_h1_name_eq("a", 1, "b"));
    CHECK(sk_h1_has_token("keep-alive, Upgrade", 19, "upgrade"));
    CHECK(sk_h1_has_token("  close  ", 9, "close"));
    CHECK(sk_h1_has_token(",,close,", 8, "close"));
    CHECK(!sk_h1_has_token("closed", 6, "close"));
    CHECK(!sk_h1_has_token("xclose", 6, "close"));
    CHECK(!sk_h1_has_token("", 0, "close"));
    CHECK(!sk_h1_has_token("clo se", 6, "close"));
    CHECK(sk_h1_has_token("a,\tb\t", 5, "b"));
    /* not NUL-terminated: must respect len */
    CHECK(!sk_h1_has_token("closeX", 4, "close"));
    CHECK(strcmp(sk_strerror(SK_ERR_H1_BAD_TE), "unsupported transfer coding") == 0);
    CHECK(strcmp(sk_strerror(SK_ERR_H1_SMUGGLE), "ambiguous message framing") == 0);
}

/* Every byte value at every position of a long value / target, so the 8-byte
 * scanning paths are checked against the per-byte definition. */
static void test_byte_classes(void)
{
    struct sk_h1_header hdrs[8];
    struct sk_h1_msg m = {.hdrs = hdrs, .hdrs_cap = 8};
    char buf[128];
    int bad = 0;
    for (int b = 0; b < 256; b++) {
        int val_ok = b == '\t' || (b >= 0x20 && b != 0x7f);
        int tgt_ok = b > 0x20 && b < 0x7f;
        for (int k = 0; k < 24; k++) {
            char v[25];
            memset(v, 'v', 24);
            v[k] = (char)b;
            int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX: v");
            memcpy(buf + n, v, 24);
            memcpy(buf + n + 24, "v\r\n\r\n", 5);
            ssize_t r = sk_h1_parse_request(buf, (size_t)n + 29, &m, NULL);
            if (val_ok ? r != n + 29 || hdrs[1].value_len != 26 : r != SK_ERR_H1_BAD_HEADER)
                bad++;
            n = snprintf(buf, sizeof(buf), "GET /");
            memcpy(buf + n, v, 24);
            memcpy(buf + n + 24, " HTTP/1.1\r\nHost: h\r\n\r\n", 22);
            r = sk_h1_parse_request(buf, (size_t)n + 46, &m, NULL);
            if (tgt_ok ? r != n + 46 || m.target_len != 25 : r != SK_ERR_H1_BAD_START)
                bad++;
        }
    }
    CHECK(bad == 0);
    /* every byte at every position of a field name (the name scan takes
     * four bytes a step, then one at a time near the end of the input) */
    bad = 0;
    for (int b = 0; b < 256; b++) {
        int tok_ok = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') ||
                     (b && strchr("!#$%&'*+-.^_`|~", b));
        for (int k = 0; k < 11; k++) {
            if (k == 0 && (b == ' ' || b == '\t' || b == '\r'))
                continue; /* a continuation line or the end of the head, not a name */
            char nm[11];
            memset(nm, 'n', 11);
            nm[k] = (char)b;
            int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\n");
            memcpy(buf + n, nm, 11);
            memcpy(buf + n + 11, ": v\r\n\r\n", 7);
            for (int cut = 0; cut < 2; cut++) {
                /* cut: the input ends inside the name (AGAIN or an error) */
                size_t len = cut ? (size_t)n + (size_t)k + 1 : (size_t)n + 18;
                ssize_t r = sk_h1_parse_request(buf, len, &m, NULL);
                if (cut ? (tok_ok ? r != SK_ERR_AGAIN
                                  : r != (b == ':' && k ? SK_ERR_AGAIN : SK_ERR_H1_BAD_HEADER))
                        : (tok_ok ? r != n + 18 || hdrs[1].name_len != 11
                                  : (b == ':' && k ? r != n + 18 || hdrs[1].name_len != (size_t)k
                                                   : r >= 0)))
                    bad++;
            }
        }
    }
    CHECK(bad == 0);
    /* HTABs inside and around the 8-byte words of a value */
    for (int k = 0; k < 20; k++) {
        char v[21];
        memset(v, 'v', 20);
        v[k] = '\t';
        if (k + 9 < 20)
            v[k + 9] = '\t';
        v[20] = 0;
        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX: a%s\r\n\r\n", v);
        ssize_t r = sk_h1_parse_request(buf, (size_t)n, &m, NULL);
        /* a trailing HTAB is OWS, not part of the value */
        CHECK(r == n && hdrs[1].value_len == (v[19] == '\t' ? 20u : 21u));
    }
}

static void test_trailers(void)
{
    struct sk_h1_header h[4];
    const char *t = "X-A: 1\r\nX-B:  two \r\n";
    CHECK(sk_h1_parse_trailers(t, strlen(t), h, 4) == 2);
    CHECK(hdr_is(&h[0], "X-A", "1") && hdr_is(&h[1], "X-B", "two"));
    CHECK(sk_h1_parse_trailers(t, strlen(t), h, 1) == SK_ERR_H1_TOO_MANY_HDRS);
    CHECK(sk_h1_parse_trailers("", 0, h, 4) == 0);
    CHECK(sk_h1_parse_trailers("X: 1", 4, h, 4) == SK_ERR_H1_BAD_HEADER);
    CHECK(sk_h1_parse_trailers("X: 1\r\n\r\n", 8, h, 4) == SK_ERR_H1_BAD_HEADER);
    CHECK(sk_h1_parse_trailers("X: 1\r\n y\r\n", 10, h, 4) == SK_ERR_H1_OBS_FOLD);
    CHECK(sk_h1_parse_trailers("Host: a\r\n", 9, h, 4) == SK_ERR_H1_BAD_HEADER);
    CHECK(sk_h1_parse_trailers("Content-Length: 1\r\n", 19, h, 4) == SK_ERR_H1_BAD_HEADER);
    CHECK(sk_h1_parse_trailers("X : 1\r\n", 7, h, 4) == SK_ERR_H1_BAD_HEADER);
    CHECK(sk_h1_parse_trailers("X: \x00\r\n", 6, h, 4) == SK_ERR_H1_BAD_HEADER);
}

static void test_body_direct(void)
{
    struct sk_h1_body b;
    int ev;
    const char *d;
    size_t dl;

    sk_h1_body_init(&b, SK_H1_BODY_NONE, 0, 0);
    CHECK(sk_h1_body_step(&b, "xyz", 3, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_DONE);
    sk_h1_body_init(&b, SK_H1_BODY_LENGTH, 0, 0);
    CHECK(sk_h1_body_step(&b, "xyz", 3, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_DONE);

    sk_h1_body_init(&b, SK_H1_BODY_LENGTH, 5, 0);
    CHECK(sk_h1_body_step(&b, "", 0, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_NEED_MORE);
    const char *in = "abcdefgh";
    CHECK(sk_h1_body_step(&b, in, 3, &ev, &d, &dl) == 3 && ev == SK_H1_BEV_DATA && d == in &&
          dl == 3);
    CHECK(b.remaining == 2);
    CHECK(sk_h1_body_step(&b, in + 3, 5, &ev, &d, &dl) == 2 && ev == SK_H1_BEV_DATA &&
          d == in + 3 && dl == 2);
    CHECK(sk_h1_body_done(&b)); /* finished without another call */
    CHECK(sk_h1_body_step(&b, in + 5, 0, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_DONE);
    CHECK(sk_h1_body_step(&b, in + 5, 3, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_DONE);

    sk_h1_body_init(&b, SK_H1_BODY_EOF, 0, 0);
    CHECK(!sk_h1_body_done(&b));
    CHECK(sk_h1_body_step(&b, in, 8, &ev, &d, &dl) == 8 && ev == SK_H1_BEV_DATA && dl == 8);
    CHECK(sk_h1_body_step(&b, in, 0, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_NEED_MORE);

    /* chunked: framing and data come back in one call; the trailer section is
     * consumed only when complete and is presented from in[0] */
    const char *c = "3\r\nabc\r\n0\r\nX: 1\r\n\r\nNEXT";
    sk_h1_body_init(&b, SK_H1_BODY_CHUNKED, 0, 0);
    CHECK(sk_h1_body_step(&b, c, strlen(c), &ev, &d, &dl) == 6 && ev == SK_H1_BEV_DATA &&
          d == c + 3 && dl == 3);
    CHECK(sk_h1_body_step(&b, c + 6, 9, &ev, &d, &dl) == 5 && ev == SK_H1_BEV_NEED_MORE);
    CHECK(sk_h1_body_step(&b, c + 11, 4, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_NEED_MORE);
    CHECK(sk_h1_body_step(&b, c + 11, 8, &ev, &d, &dl) == 8 && ev == SK_H1_BEV_TRAILERS &&
          d == c + 11 && dl == 6);
    CHECK(sk_h1_body_done(&b));
    CHECK(sk_h1_body_step(&b, c + 19, 0, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_DONE);
    CHECK(sk_h1_body_step(&b, c + 19, 4, &ev, &d, &dl) == 0 && ev == SK_H1_BEV_DONE);

    const char *c0 = "3\r\nabc\r\n0\r\n\r\n";
    sk_h1_body_init(&b, SK_H1_BODY_CHUNKED, 0, 0);
    CHECK(sk_h1_body_step(&b, c0, 13, &ev, &d, &dl) == 6 && ev == SK_H1_BEV_DATA);
    CHECK(!sk_h1_body_done(&b));
    CHECK(sk_h1_body_step(&b, c0 + 6, 7, &ev, &d, &dl) == 7 && ev == SK_H1_BEV_DONE);
    CHECK(sk_h1_body_done(&b));

    /* max chunk size accepted; size line length bound */
    sk_h1_body_init(&b, SK_H1_BODY_CHUNKED, 0, 0);
    CHECK(sk_h1_body_step(&b, "7fffffffffffffff\r\nab", 20, &ev, &d, &dl) == 20 &&
          ev == SK_H1_BEV_DATA && dl == 2 && b.remaining == 0x7fffffffffffffffull - 2);
    static char line[SK_H1_MAX_CHUNK_LINE + 8];
    memset(line, '0', sizeof(line));
    sk_h1_body_init(&b, SK_H1_BODY_CHUNKED, 0, 0);
    CHECK(sk_h1_body_step(&b, line, SK_H1_MAX_CHUNK_LINE, &ev, &d, &dl) == SK_H1_MAX_CHUNK_LINE &&
          ev == SK_H1_BEV_NEED_MORE);
    CHECK(sk_h1_body_step(&b, line, 1, &ev, &d, &dl) == SK_ERR_H1_BAD_CHUNK);
    sk_h1_body_init(&b, SK_H1_BODY_CHUNKED, 0, 0);
    memcpy(line + SK_H1_MAX_CHUNK_LINE, "\r\n\r\n", 4); /* longest legal line */
    CHECK(sk_h1_body_step(&b, line, SK_H1_MAX_CHUNK_LINE + 2, &ev, &d, &dl) ==
              SK_H1_MAX_CHUNK_LINE + 2 &&
          ev == SK_H1_BEV_NEED_MORE);
    CHECK(!sk_h1_body_done(&b));
    CHECK(sk_h1_body_step(&b, line + SK_H1_MAX_CHUNK_LINE + 2, 2, &ev, &d, &dl) == 2 &&
          ev == SK_H1_BEV_DONE && sk_h1_body_done(&b));
    sk_h1_body_init(&b, SK_H1_BODY_CHUNKED, 0, 0);
    memcpy(line + SK_H1_MAX_CHUNK_LINE - 3, ";a=\"", 4); /* quoted ext running past the bound */
    memset(line + SK_H1_MAX_CHUNK_LINE + 1, 'x', 3);
    CHECK(sk_h1_body_step(&b, line, SK_H1_MAX_CHUNK_LINE + 4, &ev, &d, &dl) == SK_ERR_H1_BAD_CHUNK);
}

int main(void)
{
    test_helpers();
    test_fields();
    test_trailers();
    test_byte_classes();
    test_body_direct();
    run_cases(req_ok, sizeof(req_ok) / sizeof(req_ok[0]));
    run_cases(req_bad, sizeof(req_bad) / sizeof(req_bad[0]));
    run_cases(rsp_cases, sizeof(rsp_cases) / sizeof(rsp_cases[0]));
    printf("http1: %d session cases, %d checks, %d failures\n", ncases, checks, failures);
    return failures ? 1 : 0;
}
