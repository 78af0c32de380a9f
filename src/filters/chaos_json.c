/* The runtime chaos rule parser: a small strict JSON reader (RFC 8259: no
 * comments, no trailing commas, no duplicate keys, depth and node caps) into
 * a tree of nodes, then a schema check into struct sk_chaos_spec with an
 * error naming the field. Kept apart from chaos.c so the fuzz target links
 * only this file (tests/fuzz/fuzz_chaos.c). */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff/chaos.h"

/* ---- JSON tree ----------------------------------------------------------------- */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

#define J_MAX_NODES 512
#define J_MAX_DEPTH 8

struct jnode {
    int t;
    bool b;
    double num;
    const char *s; /* J_STR: decoded, NUL-terminated (may hold NUL via \u0000: see slen) */
    size_t slen;
    const char *key; /* member of an object: its key (decoded) */
    size_t klen;
    int child, next; /* first child / next sibling, -1 = none */
};

struct jparser {
    const char *p, *end, *start;
    struct jnode *n;
    int nn;
    char *sb; /* decoded strings */
    size_t sbl, sbcap;
    char *err;
    size_t errlen;
    bool failed;
};

static void jfail(struct jparser *j, const char *what)
{
    if (j->failed)
        return;
    j->failed = true;
    snprintf(j->err, j->errlen, "invalid JSON at byte %zu: %s", (size_t)(j->p - j->start), what);
}

static void ws(struct jparser *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int new_node(struct jparser *j, int t)
{
    if (j->nn >= J_MAX_NODES) {
        jfail(j, "too many values");
        return -1;
    }
    struct jnode *x = &j->n[j->nn];
    memset(x, 0, sizeof(*x));
    x->t = t;
    x->child = x->next = -1;
    return j->nn++;
}

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool put_byte(struct jparser *j, char c)
{
    if (j->sbl >= j->sbcap) {
        jfail(j, "string storage exhausted");
        return false;
    }
    j->sb[j->sbl++] = c;
    return true;
}

static bool read_u4(struct jparser *j, unsigned *out)
{
    if (j->end - j->p < 4) {
        jfail(j, "truncated \\u escape");
        return false;
    }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv(j->p[i]);
        if (h < 0) {
            jfail(j, "bad \\u escape");
            return false;
        }
        v = v * 16 + (unsigned)h;
    }
    j->p += 4;
    *out = v;
    return true;
}

/* At the opening quote. Decodes into the string store. */
static bool jstring(struct jparser *j, const char **s, size_t *len)
{
    j->p++; /* " */
    size_t begin = j->sbl;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            j->p++;
            *s = j->sb + begin;
            *len = j->sbl - begin;
            return put_byte(j, 0);
        }
        if (c < 0x20) {
            jfail(j, "control character in string");
            return false;
        }
        if (c != '\\') {
            if (!put_byte(j, (char)c))
                return false;
            j->p++;
            continue;
        }
        j->p++;
        if (j->p >= j->end)
            break;
        char e = *j->p++;
        char o;
        switch (e) {
        case '"':
            o = '"';
            break;
        case '\\':
            o = '\\';
            break;
        case '/':
            o = '/';
            break;
        case 'b':
            o = '\b';
            break;
        case 'f':
            o = '\f';
            break;
        case 'n':
            o = '\n';
            break;
        case 'r':
            o = '\r';
            break;
        case 't':
            o = '\t';
            break;
        case 'u': {
            unsigned cp;
            if (!read_u4(j, &cp))
                return false;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') {
                    jfail(j, "lone surrogate in \\u escape");
                    return false;
                }
                j->p += 2;
                if (!read_u4(j, &lo))
                    return false;
                if (lo < 0xdc00 || lo > 0xdfff) {
                    jfail(j, "bad surrogate pair in \\u escape");
                    return false;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                jfail(j, "lone surrogate in \\u escape");
                return false;
            }
            char u[4];
            int n;
            if (cp < 0x80) {
                u[0] = (char)cp;
                n = 1;
            } else if (cp < 0x800) {
                u[0] = (char)(0xc0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3f));
                n = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xe0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
                u[2] = (char)(0x80 | (cp & 0x3f));
                n = 3;
            } else {
                u[0] = (char)(0xf0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
                u[3] = (char)(0x80 | (cp & 0x3f));
                n = 4;
            }
            for (int i = 0; i < n; i++)
                if (!put_byte(j, u[i]))
                    return false;
            continue;
        }
        default:
            jfail(j, "bad escape in string");
            return false;
        }
        if (!put_byte(j, o))
            return false;
    }
    jfail(j, "unterminated string");
    return false;
}

static bool jnumber(struct jparser *j, double *out)
{
    const char *b = j->p;
    if (j->p < j->end && *j->p == '-')
        j->p++;
    if (j->p >= j->end || !isdigit((unsigned char)*j->p)) {
        jfail(j, "bad number");
        return false;
    }
    if (*j->p == '0')
        j->p++;
    else
        while (j->p < j->end && isdigit((unsigned char)*j->p))
            j->p++;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (j->p >= j->end || !isdigit((unsigned char)*j->p)) {
            jfail(j, "bad number");
            return false;
        }
        while (j->p < j->end && isdigit((unsigned char)*j->p))
            j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (j->p >= j->end || !isdigit((unsigned char)*j->p)) {
            jfail(j, "bad number");
            return false;
        }
        while (j->p < j->end && isdigit((unsigned char)*j->p))
            j->p++;
    }
    char tmp[64];
    size_t n = (size_t)(j->p - b);
    if (n >= sizeof(tmp)) {
        jfail(j, "number too long");
        return false;
    }
    memcpy(tmp, b, n);
    tmp[n] = 0;
    *out = strtod(tmp, NULL);
    if (!isfinite(*out)) {
        jfail(j, "number out of range");
        return false;
    }
    return true;
}

static bool lit(struct jparser *j, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n) != 0) {
        jfail(j, "unexpected character");
        return false;
    }
    j->p += n;
    return true;
}

static int jvalue(struct jparser *j, int depth)
{
    ws(j);
    if (j->p >= j->end) {
        jfail(j, "unexpected end of input");
        return -1;
    }
    if (depth > J_MAX_DEPTH) {
        jfail(j, "nested too deeply");
        return -1;
    }
    char c = *j->p;
    int id;
    if (c == '{' || c == '[') {
        bool obj = c == '{';
        id = new_node(j, obj ? J_OBJ : J_ARR);
        if (id < 0)
            return -1;
        j->p++;
        ws(j);
        int last = -1;
        if (j->p < j->end && *j->p == (obj ? '}' : ']')) {
            j->p++;
            return id;
        }
        for (;;) {
            const char *key = NULL;
            size_t klen = 0;
            if (obj) {
                ws(j);
                if (j->p >= j->end || *j->p != '"') {
                    jfail(j, "expected a member name in quotes");
                    return -1;
                }
                if (!jstring(j, &key, &klen))
                    return -1;
                for (int k = j->n[id].child; k >= 0; k = j->n[k].next)
                    if (j->n[k].klen == klen && memcmp(j->n[k].key, key, klen) == 0) {
                        jfail(j, "duplicate member name");
                        return -1;
                    }
                ws(j);
                if (j->p >= j->end || *j->p != ':') {
                    jfail(j, "expected ':'");
                    return -1;
                }
                j->p++;
            }
            int v = jvalue(j, depth + 1);
            if (v < 0)
                return -1;
            j->n[v].key = key;
            j->n[v].klen = klen;
            if (last < 0)
                j->n[id].child = v;
            else
                j->n[last].next = v;
            last = v;
            ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == (obj ? '}' : ']')) {
                j->p++;
                return id;
            }
            jfail(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            return -1;
        }
    }
    if (c == '"') {
        id = new_node(j, J_STR);
        if (id < 0)
            return -1;
        const char *s;
        size_t l;
        if (!jstring(j, &s, &l))
            return -1;
        j->n[id].s = s;
        j->n[id].slen = l;
        return id;
    }
    if (c == 't' || c == 'f') {
        id = new_node(j, J_BOOL);
        if (id < 0 || !lit(j, c == 't' ? "true" : "false"))
            return -1;
        j->n[id].b = c == 't';
        return id;
    }
    if (c == 'n') {
        id = new_node(j, J_NULL);
        if (id < 0 || !lit(j, "null"))
            return -1;
        return id;
    }
    id = new_node(j, J_NUM);
    if (id < 0)
        return -1;
    double d;
    if (!jnumber(j, &d))
        return -1;
    j->n[id].num = d;
    return id;
}

/* ---- schema -------------------------------------------------------------------- */

struct ctx {
    struct jparser *j;
    char *err;
    size_t errlen;
};

static int bad(struct ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *const type_names[] = {"null",     "a boolean", "a number",
                                         "a string", "an array",  "an object"};

static bool key_is(const struct jnode *n, const char *k)
{
    return n->klen == strlen(k) && memcmp(n->key, k, n->klen) == 0;
}

/* Every member of object `o` must be one of `allowed` (NULL-terminated). */
static int only(struct ctx *c, int o, const char *where, const char *const *allowed)
{
    struct jparser *j = c->j;
    for (int k = j->n[o].child; k >= 0; k = j->n[k].next) {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = key_is(&j->n[k], allowed[i]);
        if (!ok) {
            char list[256] = "";
            size_t l = 0;
            for (size_t i = 0; allowed[i] && l < sizeof(list); i++) {
                int w = snprintf(list + l, sizeof(list) - l, "%s%s", i ? ", " : "", allowed[i]);
                l += w > 0 ? (size_t)w : 0;
            }
            int kl = (int)(j->n[k].klen > 64 ? 64 : j->n[k].klen);
            return bad(c, "%s: unknown field '%.*s' (known: %s)", where, kl, j->n[k].key, list);
        }
    }
    return 0;
}

static int member(struct ctx *c, int o, const char *k)
{
    for (int i = c->j->n[o].child; i >= 0; i = c->j->n[i].next)
        if (key_is(&c->j->n[i], k))
            return i;
    return -1;
}

static int want(struct ctx *c, int v, int t, const char *where)
{
    if (c->j->n[v].t != t)
        return bad(c, "%s: must be %s, not %s", where, type_names[t], type_names[c->j->n[v].t]);
    return 0;
}

/* A string member into a fixed buffer: non-empty, printable, shorter than cap. */
static int str_into(struct ctx *c, int v, const char *where, char *out, size_t cap, bool empty_ok)
{
    if (want(c, v, J_STR, where) < 0)
        return -1;
    const struct jnode *n = &c->j->n[v];
    if (!empty_ok && n->slen == 0)
        return bad(c, "%s: must not be empty", where);
    if (n->slen >= cap)
        return bad(c, "%s: longer than %zu bytes", where, cap - 1);
    for (size_t i = 0; i < n->slen; i++)
        if ((unsigned char)n->s[i] < 0x20 || n->s[i] == 0x7f)
            return bad(c, "%s: control characters are not allowed", where);
    memcpy(out, n->s, n->slen);
    out[n->slen] = 0;
    return 0;
}

/* An integer in [lo, hi]. */
static int int_in(struct ctx *c, int v, const char *where, double lo, double hi, uint64_t *out)
{
    if (want(c, v, J_NUM, where) < 0)
        return -1;
    double d = c->j->n[v].num;
    if (d != floor(d) || d < lo || d > hi)
        return bad(c, "%s: must be an integer from %.0f to %.0f", where, lo, hi);
    *out = (uint64_t)d;
    return 0;
}

/* "percent": (0, 100], default 100; into parts per million. */
static int percent(struct ctx *c, int o, const char *where, uint32_t *ppm)
{
    int v = member(c, o, "percent");
    *ppm = 1000000;
    if (v < 0)
        return 0;
    char w[64];
    snprintf(w, sizeof(w), "%s.percent", where);
    if (want(c, v, J_NUM, w) < 0)
        return -1;
    double d = c->j->n[v].num;
    if (!(d > 0) || d > 100)
        return bad(c, "%s: must be a number greater than 0 and at most 100", w);
    double p = floor(d * 10000.0 + 0.5);
    if (p < 1)
        return bad(c, "%s: too small (the resolution is 0.0001)", w);
    *ppm = (uint32_t)p;
    return 0;
}

static bool token_char(char ch)
{
    return isalnum((unsigned char)ch) || strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int parse_headers(struct ctx *c, int v, struct sk_chaos_spec *s)
{
    struct jparser *j = c->j;
    if (want(c, v, J_ARR, "headers") < 0)
        return -1;
    static const char *const hk[] = {"name", "exact", "prefix", "present", NULL};
    for (int e = j->n[v].child; e >= 0; e = j->n[e].next) {
        char where[32];
        snprintf(where, sizeof(where), "headers[%zu]", s->nhdrs);
        if (s->nhdrs >= SK_CHAOS_MAX_HEADERS)
            return bad(c, "headers: at most %d matchers", SK_CHAOS_MAX_HEADERS);
        if (want(c, e, J_OBJ, where) < 0 || only(c, e, where, hk) < 0)
            return -1;
        struct sk_chaos_hdr *h = &s->hdrs[s->nhdrs];
        int nm = member(c, e, "name");
        char w2[48];
        snprintf(w2, sizeof(w2), "%s.name", where);
        if (nm < 0)
            return bad(c, "%s: required", w2);
        if (str_into(c, nm, w2, h->name, sizeof(h->name), false) < 0)
            return -1;
        for (char *p = h->name; *p; p++) {
            if (!token_char(*p) && !(p == h->name && *p == ':'))
                return bad(c, "%s: not a valid header name", w2);
            *p = (char)tolower((unsigned char)*p);
        }
        int ex = member(c, e, "exact"), pf = member(c, e, "prefix"), pr = member(c, e, "present");
        if ((ex >= 0) + (pf >= 0) + (pr >= 0) != 1)
            return bad(c, "%s: needs exactly one of exact, prefix, present", where);
        if (pr >= 0) {
            snprintf(w2, sizeof(w2), "%s.present", where);
            if (want(c, pr, J_BOOL, w2) < 0)
                return -1;
            if (!j->n[pr].b)
                return bad(c, "%s: only true is supported", w2);
            h->kind = SK_CHAOS_H_PRESENT;
        } else {
            snprintf(w2, sizeof(w2), "%s.%s", where, ex >= 0 ? "exact" : "prefix");
            if (str_into(c, ex >= 0 ? ex : pf, w2, h->value, sizeof(h->value), true) < 0)
                return -1;
            h->kind = ex >= 0 ? SK_CHAOS_H_EXACT : SK_CHAOS_H_PREFIX;
        }
        s->nhdrs++;
    }
    return 0;
}

static int parse_fault(struct ctx *c, int f, struct sk_chaos_spec *s)
{
    struct jparser *j = c->j;
    static const char *const fk[] = {"delay", "abort", "rate_limit", "midstream", NULL};
    if (want(c, f, J_OBJ, "fault") < 0 || only(c, f, "fault", fk) < 0)
        return -1;
    int d = member(c, f, "delay"), a = member(c, f, "abort"), r = member(c, f, "rate_limit"),
        ms = member(c, f, "midstream");
    if (d < 0 && a < 0 && r < 0 && ms < 0)
        return bad(c, "fault: needs at least one of delay, abort, rate_limit, midstream");
    if (ms >= 0) {
        static const char *const mk[] = {"action",  "after_bytes", "grpc_status",
                                         "rst_code", "percent",     NULL};
        if (want(c, ms, J_OBJ, "fault.midstream") < 0 || only(c, ms, "fault.midstream", mk) < 0)
            return -1;
        int ac = member(c, ms, "action"), ab = member(c, ms, "after_bytes"),
            gs = member(c, ms, "grpc_status"), rc = member(c, ms, "rst_code");
        if (ac < 0)
            return bad(c, "fault.midstream.action: required (reset, truncate, grpc_error)");
        if (want(c, ac, J_STR, "fault.midstream.action") < 0)
            return -1;
        const struct jnode *an = &j->n[ac];
        if (an->slen == 5 && memcmp(an->s, "reset", 5) == 0)
            s->mid_kind = SK_CHAOS_MID_RESET;
        else if (an->slen == 8 && memcmp(an->s, "truncate", 8) == 0)
            s->mid_kind = SK_CHAOS_MID_TRUNCATE;
        else if (an->slen == 10 && memcmp(an->s, "grpc_error", 10) == 0)
            s->mid_kind = SK_CHAOS_MID_GRPC;
        else
            return bad(c, "fault.midstream.action: must be reset, truncate or grpc_error");
        if (ab < 0)
            return bad(c, "fault.midstream.after_bytes: required");
        if (int_in(c, ab, "fault.midstream.after_bytes", 0, (double)SK_CHAOS_MID_MAX_BYTES,
                   &s->mid_after_bytes) < 0)
            return -1;
        s->mid_grpc_status = 14; /* UNAVAILABLE */
        if (gs >= 0) {
            if (s->mid_kind != SK_CHAOS_MID_GRPC)
                return bad(c, "fault.midstream.grpc_status: only with action grpc_error");
            uint64_t g;
            if (int_in(c, gs, "fault.midstream.grpc_status", 1, 16, &g) < 0)
                return -1;
            s->mid_grpc_status = (uint32_t)g;
        }
        s->mid_rst_code = -1;
        if (rc >= 0) {
            /* HTTP/2 error code of the RST_STREAM (RFC 9113 section 7): 0-13 */
            if (s->mid_kind != SK_CHAOS_MID_RESET)
                return bad(c, "fault.midstream.rst_code: only with action reset");
            uint64_t code;
            if (int_in(c, rc, "fault.midstream.rst_code", 0, 13, &code) < 0)
                return -1;
            s->mid_rst_code = (int32_t)code;
        }
        if (percent(c, ms, "fault.midstream", &s->mid_ppm) < 0)
            return -1;
    }
    if (d >= 0) {
        static const char *const dk[] = {"fixed_ms", "percent", NULL};
        if (want(c, d, J_OBJ, "fault.delay") < 0 || only(c, d, "fault.delay", dk) < 0)
            return -1;
        int fm = member(c, d, "fixed_ms");
        if (fm < 0)
            return bad(c, "fault.delay.fixed_ms: required");
        if (int_in(c, fm, "fault.delay.fixed_ms", 1, SK_CHAOS_DELAY_MAX_MS, &s->delay_ms) < 0 ||
            percent(c, d, "fault.delay", &s->delay_ppm) < 0)
            return -1;
        s->has_delay = true;
    }
    if (a >= 0) {
        static const char *const ak[] = {"http_status", "grpc_status", "reset", "percent", NULL};
        if (want(c, a, J_OBJ, "fault.abort") < 0 || only(c, a, "fault.abort", ak) < 0)
            return -1;
        int hs = member(c, a, "http_status"), gs = member(c, a, "grpc_status"),
            rs = member(c, a, "reset");
        if ((hs >= 0) + (gs >= 0) + (rs >= 0) != 1)
            return bad(c, "fault.abort: needs exactly one of http_status, grpc_status, reset");
        uint64_t v = 0;
        if (hs >= 0) {
            if (int_in(c, hs, "fault.abort.http_status", 200, 599, &v) < 0)
                return -1;
            s->abort_kind = SK_CHAOS_ABORT_HTTP;
        } else if (gs >= 0) {
            if (int_in(c, gs, "fault.abort.grpc_status", 0, 16, &v) < 0)
                return -1;
            s->abort_kind = SK_CHAOS_ABORT_GRPC;
        } else {
            if (want(c, rs, J_BOOL, "fault.abort.reset") < 0)
                return -1;
            if (!j->n[rs].b)
                return bad(c, "fault.abort.reset: only true is supported");
            s->abort_kind = SK_CHAOS_ABORT_RESET;
        }
        s->abort_code = (uint32_t)v;
        if (percent(c, a, "fault.abort", &s->abort_ppm) < 0)
            return -1;
    }
    if (r >= 0) {
        static const char *const rk[] = {"kbps", "percent", NULL};
        if (want(c, r, J_OBJ, "fault.rate_limit") < 0 || only(c, r, "fault.rate_limit", rk) < 0)
            return -1;
        int k = member(c, r, "kbps");
        if (k < 0)
            return bad(c, "fault.rate_limit.kbps: required");
        if (int_in(c, k, "fault.rate_limit.kbps", 1, SK_CHAOS_RL_MAX_KBPS, &s->rl_kbps) < 0 ||
            percent(c, r, "fault.rate_limit", &s->rl_ppm) < 0)
            return -1;
        s->has_rl = true;
    }
    return 0;
}

static int schema(struct ctx *c, int root, struct sk_chaos_spec *s)
{
    struct jparser *j = c->j;
    static const char *const rootk[] = {"target", "leg",         "headers", "fault",
                                        "ttl_s",  "description", NULL};
    if (want(c, root, J_OBJ, "rule") < 0 || only(c, root, "rule", rootk) < 0)
        return -1;
    int t = member(c, root, "target");
    if (t < 0)
        return bad(c, "target: required (one of listener, route, vhost, cluster)");
    static const char *const tk[] = {"listener", "route", "vhost", "cluster", NULL};
    if (want(c, t, J_OBJ, "target") < 0 || only(c, t, "target", tk) < 0)
        return -1;
    int nt = 0;
    for (int k = j->n[t].child; k >= 0; k = j->n[k].next)
        nt++;
    if (nt != 1)
        return bad(c, "target: needs exactly one of listener, route, vhost, cluster");
    int tv = j->n[t].child;
    static const int kinds[] = {SK_CHAOS_T_LISTENER, SK_CHAOS_T_ROUTE, SK_CHAOS_T_VHOST,
                                SK_CHAOS_T_CLUSTER};
    for (size_t i = 0; i < 4; i++)
        if (key_is(&j->n[tv], tk[i]))
            s->target_kind = kinds[i];
    char w[32];
    snprintf(w, sizeof(w), "target.%s", tk[s->target_kind - 1]);
    if (str_into(c, tv, w, s->target, sizeof(s->target), false) < 0)
        return -1;

    int leg = member(c, root, "leg");
    s->leg = SK_CHAOS_LEG_DOWNSTREAM;
    if (leg >= 0) {
        if (want(c, leg, J_STR, "leg") < 0)
            return -1;
        const struct jnode *n = &j->n[leg];
        if (n->slen == 10 && memcmp(n->s, "downstream", 10) == 0)
            s->leg = SK_CHAOS_LEG_DOWNSTREAM;
        else if (n->slen == 8 && memcmp(n->s, "upstream", 8) == 0)
            s->leg = SK_CHAOS_LEG_UPSTREAM;
        else
            return bad(c, "leg: must be \"downstream\" or \"upstream\"");
    }
    int h = member(c, root, "headers");
    if (h >= 0 && parse_headers(c, h, s) < 0)
        return -1;
    int f = member(c, root, "fault");
    if (f < 0)
        return bad(c, "fault: required (delay, abort and/or rate_limit)");
    if (parse_fault(c, f, s) < 0)
        return -1;
    if (s->leg == SK_CHAOS_LEG_UPSTREAM) {
        if (s->has_delay || s->has_rl || s->mid_kind || s->abort_kind == SK_CHAOS_ABORT_NONE ||
            s->abort_kind == SK_CHAOS_ABORT_GRPC)
            return bad(c, "fault: the upstream leg supports abort with http_status or reset "
                          "only");
        if (s->abort_kind == SK_CHAOS_ABORT_HTTP && s->abort_code < 500)
            return bad(c, "fault.abort.http_status: the upstream leg fails attempts with 500-599");
    } else if (s->abort_kind == SK_CHAOS_ABORT_RESET) {
        return bad(c, "fault.abort.reset: only on the upstream leg (\"leg\": \"upstream\")");
    }
    int ttl = member(c, root, "ttl_s");
    if (ttl < 0)
        return bad(c, "ttl_s: required (seconds, at most %.0f)", SK_CHAOS_TTL_MAX_S);
    if (want(c, ttl, J_NUM, "ttl_s") < 0)
        return -1;
    s->ttl_s = j->n[ttl].num;
    if (!(s->ttl_s >= 0.1) || s->ttl_s > SK_CHAOS_TTL_MAX_S)
        return bad(c, "ttl_s: must be from 0.1 to %.0f seconds", SK_CHAOS_TTL_MAX_S);
    int ds = member(c, root, "description");
    if (ds >= 0 && str_into(c, ds, "description", s->description, sizeof(s->description), true) < 0)
        return -1;
    return 0;
}

int sk_chaos_parse(const char *body, size_t len, struct sk_chaos_spec *out, char *err,
                   size_t errlen)
{
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = 0;
    memset(out, 0, sizeof(*out));
    if (len > SK_CHAOS_BODY_MAX) {
        snprintf(err, errlen, "body larger than %d bytes", SK_CHAOS_BODY_MAX);
        return -1;
    }
    struct jparser j = {.p = body, .end = body + len, .start = body, .err = err, .errlen = errlen};
    j.n = malloc(sizeof(*j.n) * J_MAX_NODES);
    j.sbcap = len + 1;
    j.sb = malloc(j.sbcap);
    int rc = -1;
    if (!j.n || !j.sb) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    int root = jvalue(&j, 0);
    if (root < 0)
        goto out;
    ws(&j);
    if (j.p != j.end) {
        jfail(&j, "trailing data after the JSON value");
        goto out;
    }
    struct ctx c = {&j, err, errlen};
    rc = schema(&c, root, out);
out:
    free(j.n);
    free(j.sb);
    if (rc < 0 && !err[0])
        snprintf(err, errlen, "invalid rule");
    return rc;
}
