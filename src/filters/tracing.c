/* Trace context propagation (W3C + B3); see include/skiff/tracing.h. */
#include "skiff/tracing.h"

#include <string.h>

#include "skiff/log.h"
#include "skiff/stream.h"
#include "skiff/worker.h"


/* hex digit value, 0x100 = not a hex digit (W3C: lower-case only) */
#define HV(c) ((c) >= '0' && (c) <= '9' ? (c) - '0' : (c) >= 'a' && (c) <= 'f' ? (c) - 'a' + 10 : 0x100)
#define HV4(b) HV(b), HV((b) + 1), HV((b) + 2), HV((b) + 3)
#define HV16(b) HV4(b), HV4((b) + 4), HV4((b) + 8), HV4((b) + 12)
#define HV64(b) HV16(b), HV16((b) + 16), HV16((b) + 32), HV16((b) + 48)
static const uint16_t hexv[256] = {HV64(0), HV64(64), HV64(128), HV64(192)};
#undef HV64
#undef HV16
#undef HV4
#undef HV

/* n hex chars -> n/2 bytes; false on a non-hex char */
static bool unhex(const char *p, size_t n, uint8_t *out)
{
    unsigned bad = 0;
    for (size_t i = 0; i < n; i += 2) {
        /* a bad digit sets bit 12 (high) or bit 8 (low): above the byte */
        unsigned t = (unsigned)hexv[(unsigned char)p[i]] << 4 | hexv[(unsigned char)p[i + 1]];
        bad |= t;
        out[i / 2] = (uint8_t)t;
    }
    return bad < 0x100;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        acc |= x;
    }
    for (; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

void sk_trace_hex(char *out, const uint8_t *p, size_t n)
{
    /* one table lookup per byte (ids are formatted on every request) */
#define H2(x) "0123456789abcdef"[(x) >> 4], "0123456789abcdef"[(x)&15]
#define H8(x)                                                                                      \
    H2(x), H2((x) + 1), H2((x) + 2), H2((x) + 3), H2((x) + 4), H2((x) + 5), H2((x) + 6), H2((x) + 7)
#define H32(x) H8(x), H8((x) + 8), H8((x) + 16), H8((x) + 24)
    static const char hx2[512] = {H32(0),   H32(32),  H32(64),  H32(96),
                                  H32(128), H32(160), H32(192), H32(224)};
#undef H32
#undef H8
#undef H2
    for (size_t i = 0; i < n; i++)
        memcpy(out + 2 * i, hx2 + 2 * p[i], 2);
}

bool sk_trace_parse_traceparent(const char *v, size_t n, struct sk_trace_ctx *out)
{
    /* trim optional whitespace (OWS) around the header value */
    while (n && (v[0] == ' ' || v[0] == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return false;
    uint8_t ver;
    if (!unhex(v, 2, &ver) || ver == 0xff)
        return false;
    if (ver == 0 && n != 55)
        return false;
    if (n > 55 && v[55] != '-') /* future versions: more fields after a dash */
        return false;
    struct sk_trace_ctx c;
    memset(&c, 0, sizeof(c));
    if (!unhex(v + 3, 32, c.trace_id) || !unhex(v + 36, 16, c.span_id) ||
        !unhex(v + 53, 2, &c.flags))
        return false;
    if (all_zero(c.trace_id, 16) || all_zero(c.span_id, 8))
        return false;
    c.sampled = c.flags & 1;
    *out = c;
    return true;
}

void sk_trace_format_traceparent(char out[56], const uint8_t trace_id[16], const uint8_t span_id[8],
                                 uint8_t flags)
{
    memcpy(out, "00-", 3);
    sk_trace_hex(out + 3, trace_id, 16);
    out[35] = '-';
    sk_trace_hex(out + 36, span_id, 8);
    out[52] = '-';
    sk_trace_hex(out + 53, &flags, 1);
    out[55] = 0;
}

/* B3 trace id: 16 or 32 hex, left-padded into 16 bytes */
static bool b3_trace_id(const char *p, size_t n, struct sk_trace_ctx *c)
{
    memset(c->trace_id, 0, 16);
    if (n == 32) {
        c->trace_id_64 = false;
        return unhex(p, 32, c->trace_id) && !all_zero(c->trace_id, 16);
    }
    if (n == 16) {
        c->trace_id_64 = true;
        return unhex(p, 16, c->trace_id + 8) && !all_zero(c->trace_id, 16);
    }
    return false;
}

static bool b3_span_id(const char *p, size_t n, uint8_t out[8])
{
    return n == 16 && unhex(p, 16, out) && !all_zero(out, 8);
}

static int b3_sampling(const char *p, size_t n)
{
    if (n == 1 && p[0] == '1')
        return 1;
    if (n == 1 && p[0] == '0')
        return 0;
    if (n == 1 && p[0] == 'd')
        return 2;
    if (n == 4 && memcmp(p, "true", 4) == 0)
        return 1;
    if (n == 5 && memcmp(p, "false", 5) == 0)
        return 0;
    return -2; /* invalid */
}

bool sk_trace_parse_b3_multi(const char *trace, size_t tl, const char *span, size_t sl,
                             const char *parent, size_t pl, const char *sampled, size_t sml,
                             const char *flags, size_t fl, struct sk_trace_ctx *out)
{
    struct sk_trace_ctx c;
    memset(&c, 0, sizeof(c));
    c.sampled = -1;
    if (!trace || !span || !b3_trace_id(trace, tl, &c) || !b3_span_id(span, sl, c.span_id))
        return false;
    if (parent) {
        if (!b3_span_id(parent, pl, c.parent_id))
            return false;
        c.has_parent = true;
    }
    if (sampled) {
        int s = b3_sampling(sampled, sml);
        if (s < 0 || s == 2)
            return false;
        c.sampled = s;
    }
    if (flags && fl == 1 && flags[0] == '1')
        c.sampled = 2;
    c.flags = c.sampled > 0 ? 1 : 0;
    *out = c;
    return true;
}

bool sk_trace_parse_b3_single(const char *v, size_t n, struct sk_trace_ctx *out)
{
    struct sk_trace_ctx c;
    memset(&c, 0, sizeof(c));
    c.sampled = -1;
    const char *f[4];
    size_t fl[4];
    size_t nf = 0;
    const char *s = v, *end = v + n;
    for (;;) {
        const char *d = memchr(s, '-', (size_t)(end - s));
        if (nf == 4)
            return false; /* more than four fields */
        f[nf] = s;
        fl[nf] = d ? (size_t)(d - s) : (size_t)(end - s);
        nf++;
        if (!d)
            break;
        s = d + 1;
    }
    if (nf == 1) { /* sampling state only */
        int sm = b3_sampling(f[0], fl[0]);
        out->sampled = sm == -2 || fl[0] != 1 ? -1 : sm;
        return false;
    }
    if (!b3_trace_id(f[0], fl[0], &c) || !b3_span_id(f[1], fl[1], c.span_id))
        return false;
    if (nf >= 3) {
        int sm = b3_sampling(f[2], fl[2]);
        if (sm < 0 || fl[2] != 1)
            return false;
        c.sampled = sm;
    }
    if (nf == 4) {
        if (!b3_span_id(f[3], fl[3], c.parent_id))
            return false;
        c.has_parent = true;
    }
    c.flags = c.sampled > 0 ? 1 : 0;
    *out = c;
    return true;
}

size_t sk_trace_format_b3_single(char *out, const struct sk_trace_ctx *c, const uint8_t span[8],
                                 bool with_parent)
{
    size_t o = 0;
    if (c->trace_id_64) {
        sk_trace_hex(out, c->trace_id + 8, 8);
        o = 16;
    } else {
        sk_trace_hex(out, c->trace_id, 16);
        o = 32;
    }
    out[o++] = '-';
    sk_trace_hex(out + o, span, 8);
    o += 16;
    if (c->sampled >= 0) {
        out[o++] = '-';
        out[o++] = c->sampled == 2 ? 'd' : c->sampled ? '1' : '0';
        if (with_parent) {
            out[o++] = '-';
            sk_trace_hex(out + o, c->span_id, 8);
            o += 16;
        }
    }
    out[o] = 0;
    return o;
}

/* ---- the request hook ---------------------------------------------------------- */

/* Replace (or add) a request header with an arena copy of value. */
static void set_hdr(struct sk_stream *st, const char *name, size_t nl, const char *v, size_t vl)
{
    struct sk_hdr *h = sk_hdrs_get(&st->req, name, nl);
    if (!h) {
        sk_hdrs_add(&st->req, &st->arena, name, nl, v, vl);
        return;
    }
    char *copy = sk_arena_alloc(&st->arena, vl + 1);
    if (!copy)
        return;
    memcpy(copy, v, vl);
    copy[vl] = 0;
    h->value = copy;
    h->vlen = (uint32_t)vl;
}

/* n: a multiple of 4 (ids are 8 or 16 bytes) */
static void rand_bytes(struct sk_worker *w, uint8_t *p, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 4) {
            uint32_t r = sk_worker_rand(w);
            p[i] = (uint8_t)r;
            p[i + 1] = (uint8_t)(r >> 8);
            p[i + 2] = (uint8_t)(r >> 16);
            p[i + 3] = (uint8_t)(r >> 24);
        }
    } while (all_zero(p, n));
}

#define HDR(st, name, lenvar) hdr_val(st, name, sizeof(name) - 1, &(lenvar))
static const char *hdr_val(struct sk_stream *st, const char *name, size_t nl, size_t *len)
{
    struct sk_hdr *h = sk_hdrs_get(&st->req, name, nl);
    if (!h) {
        *len = 0;
        return NULL;
    }
    *len = h->vlen;
    return h->value;
}

/* Which tracing headers the request carries, found in one pass (most
 * requests carry none: then no per-name lookups at all); also where the first
 * traceparent is and how many there are. */
enum { TH_B3M = 1, TH_B3S = 2, TH_TP = 4, TH_CLIENT = 8 };
static unsigned trace_hdrs_present(const struct sk_hdrs *h, uint32_t *tp_i, unsigned *ntp)
{
    unsigned m = 0;
    *ntp = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        const char *n = h->v[i].name;
        uint32_t l = h->v[i].nlen;
        if (l >= 5 && memcmp(n, "x-b3-", 5) == 0)
            m |= TH_B3M;
        else if (l == 2 && memcmp(n, "b3", 2) == 0)
            m |= TH_B3S;
        else if (l == 11 && memcmp(n, "traceparent", 11) == 0) {
            if (!(*ntp)++)
                *tp_i = i;
            m |= TH_TP;
        } else if (l == 17 && memcmp(n, "x-client-trace-id", 17) == 0)
            m |= TH_CLIENT;
    }
    return m;
}

static bool chance(struct sk_stream *st, uint32_t ppm)
{
    return ppm >= 1000000u || (ppm > 0 && sk_worker_rand(st->w) % 1000000u < ppm);
}

/* No incoming decision: the HCM's tracing sampling decides (Envoy's order:
 * client-requested via x-client-trace-id, else random; overall caps both). */
static int sample_decision(struct sk_stream *st, unsigned present)
{
    const struct sk_hcm *h = st->hcm;
    bool s = ((present & TH_CLIENT) && chance(st, h->trace_client_ppm)) ||
             chance(st, h->trace_random_ppm);
    return s && chance(st, h->trace_overall_ppm);
}

void sk_tracing_request(struct sk_stream *st)
{
    uint8_t span[8];
    rand_bytes(st->w, span, 8);
    char hex[64];
    uint32_t tp_i = 0;
    unsigned ntp;
    unsigned present = trace_hdrs_present(&st->req, &tp_i, &ntp);

    /* B3 multi */
    size_t tl = 0, sl = 0, pl = 0, sml = 0, fl = 0;
    const char *bt = NULL, *bs = NULL, *bp = NULL, *bsm = NULL, *bf = NULL;
    if (present & TH_B3M) {
        bt = HDR(st, "x-b3-traceid", tl);
        bs = HDR(st, "x-b3-spanid", sl);
        bp = HDR(st, "x-b3-parentspanid", pl);
        bsm = HDR(st, "x-b3-sampled", sml);
        bf = HDR(st, "x-b3-flags", fl);
    }
    struct sk_trace_ctx b3m, b3s;
    bool has_b3m = bt && sk_trace_parse_b3_multi(bt, tl, bs, sl, bp, pl, bsm, sml, bf, fl, &b3m);
    if (has_b3m) {
        sk_trace_hex(hex, span, 8);
        set_hdr(st, "x-b3-spanid", 11, hex, 16);
        sk_trace_hex(hex, b3m.span_id, 8);
        set_hdr(st, "x-b3-parentspanid", 17, hex, 16);
    }
    /* B3 single */
    size_t b1l = 0;
    const char *b1 = (present & TH_B3S) ? HDR(st, "b3", b1l) : NULL;
    memset(&b3s, 0, sizeof(b3s));
    b3s.sampled = -1;
    bool has_b3s = b1 && sk_trace_parse_b3_single(b1, b1l, &b3s);
    if (has_b3s) {
        size_t n = sk_trace_format_b3_single(hex, &b3s, span, true);
        set_hdr(st, "b3", 2, hex, n);
    }

    /* W3C */
    /* (headers were only appended since the scan: tp_i still indexes the
     * first traceparent) */
    size_t tpl = (present & TH_TP) ? st->req.v[tp_i].vlen : 0;
    const char *tp = (present & TH_TP) ? st->req.v[tp_i].value : NULL;
    struct sk_trace_ctx w3;
    if (tp && ntp == 1 && sk_trace_parse_traceparent(tp, tpl, &w3)) {
        /* version 00 out: we only speak 00 (a future version's extra fields go) */
        char *tpv = sk_arena_alloc_nz(&st->arena, 56);
        if (!tpv)
            return;
        sk_trace_format_traceparent(tpv, w3.trace_id, span, w3.flags);
        st->req.v[tp_i].value = tpv;
        st->req.v[tp_i].vlen = 55;
        sk_debug("conn %llu stream %u: trace %.32s: new span %.16s (propagated)",
                 (unsigned long long)st->conn_id, st->stream_id, tpv + 3, tpv + 36);
        return;
    }
    if (tp) { /* invalid: drop it and the state that depends on it */
        sk_hdrs_del(&st->req, "traceparent", 11);
        sk_hdrs_del(&st->req, "tracestate", 10);
    }
    /* start one: join the B3 trace when there is one, honour its decision */
    const struct sk_trace_ctx *b3 = has_b3m ? &b3m : has_b3s ? &b3s : NULL;
    int sampled = b3 ? b3->sampled : b3s.sampled; /* b3s: a bare "b3: 0" */
    if (sampled < 0)
        sampled = sample_decision(st, present);
    if (!sampled && !b3)
        return;
    uint8_t tid[16];
    if (b3)
        memcpy(tid, b3->trace_id, 16);
    else
        rand_bytes(st->w, tid, 16);
    char *tpv = sk_arena_alloc_nz(&st->arena, 56);
    if (!tpv)
        return;
    sk_trace_format_traceparent(tpv, tid, span, sampled ? 1 : 0);
    sk_hdrs_push(&st->req, &st->arena, &(struct sk_hdr){"traceparent", 11, tpv, 55});
    sk_debug("conn %llu stream %u: trace %.32s: new span %.16s (%s)",
             (unsigned long long)st->conn_id, st->stream_id, tpv + 3, tpv + 36,
             b3 ? "joined the B3 trace" : tp ? "started; the incoming traceparent was invalid"
                                             : "started");
}
