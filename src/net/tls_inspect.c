/* TLS ClientHello inspector (Envoy's tls_inspector): SNI and ALPN out of the
 * first flight, before any TLS state exists, for filter-chain selection.
 *
 * The ClientHello may span several handshake records; their payloads are
 * reassembled into a bounded local buffer. Every length read from the wire is
 * checked against what is actually there before it is used: the parser only
 * ever looks at buf[0..len) and hs[0..hl). */
#include "skiff/tls.h"

#include <ctype.h>
#include <string.h>

#define REC_MAX (16384 + 2048) /* TLSCiphertext limit; a plaintext record is <= 2^14 */

struct rd {
    const uint8_t *p;
    size_t n, off;
};

static bool get8(struct rd *r, unsigned *v)
{
    if (r->n - r->off < 1)
        return false;
    *v = r->p[r->off++];
    return true;
}

static bool get16(struct rd *r, unsigned *v)
{
    if (r->n - r->off < 2)
        return false;
    *v = (unsigned)r->p[r->off] << 8 | r->p[r->off + 1];
    r->off += 2;
    return true;
}

static bool skip(struct rd *r, size_t k)
{
    if (r->n - r->off < k)
        return false;
    r->off += k;
    return true;
}

/* A sub-reader over the next k bytes. */
static bool sub(struct rd *r, size_t k, struct rd *s)
{
    if (r->n - r->off < k)
        return false;
    s->p = r->p + r->off;
    s->n = k;
    s->off = 0;
    r->off += k;
    return true;
}

static int parse_sni(struct rd *e, struct sk_client_hello *out)
{
    unsigned ll;
    struct rd l;
    if (!get16(e, &ll) || !sub(e, ll, &l) || e->off != e->n || ll == 0)
        return -1;
    while (l.off < l.n) {
        unsigned type, nl;
        struct rd name;
        if (!get8(&l, &type) || !get16(&l, &nl) || !sub(&l, nl, &name))
            return -1;
        if (type != 0 || out->sni_len || nl == 0)
            continue; /* first host_name only */
        if (nl > sizeof(out->sni) - 1)
            continue; /* not a DNS name: ignore it */
        bool ok = true;
        for (size_t i = 0; i < nl; i++)
            if (name.p[i] == 0)
                ok = false;
        if (!ok)
            return -1;
        for (size_t i = 0; i < nl; i++)
            out->sni[i] = (char)tolower(name.p[i]);
        out->sni[nl] = 0;
        out->sni_len = nl;
    }
    return 0;
}

static int parse_alpn(struct rd *e, struct sk_client_hello *out)
{
    unsigned ll;
    struct rd l;
    if (!get16(e, &ll) || !sub(e, ll, &l) || e->off != e->n || ll < 2)
        return -1;
    while (l.off < l.n) {
        unsigned pl;
        struct rd proto;
        if (!get8(&l, &pl) || pl == 0 || !sub(&l, pl, &proto))
            return -1;
        if (out->nalpn < SK_CH_MAX_ALPN) {
            memcpy(out->alpn[out->nalpn], proto.p, pl);
            out->alpn[out->nalpn][pl] = 0;
            out->alpn_len[out->nalpn] = pl;
            out->nalpn++;
        }
    }
    return 0;
}

/* hs[0..n) is exactly one ClientHello handshake message (with its header). */
static int parse_hello(const uint8_t *hs, size_t n, struct sk_client_hello *out)
{
    struct rd r = {hs, n, 4};
    unsigned v, l;
    if (!get16(&r, &v) || (v >> 8) != 3)
        return -1;
    if (!skip(&r, 32)) /* random */
        return -1;
    if (!get8(&r, &l) || l > 32 || !skip(&r, l)) /* session id */
        return -1;
    if (!get16(&r, &l) || l < 2 || (l & 1) || !skip(&r, l)) /* cipher suites */
        return -1;
    if (!get8(&r, &l) || l < 1 || !skip(&r, l)) /* compression methods */
        return -1;
    if (r.off == r.n)
        return 1; /* no extensions */
    struct rd exts;
    if (!get16(&r, &l) || !sub(&r, l, &exts) || r.off != r.n)
        return -1;
    bool seen_sni = false, seen_alpn = false;
    while (exts.off < exts.n) {
        unsigned type, el;
        struct rd e;
        if (!get16(&exts, &type) || !get16(&exts, &el) || !sub(&exts, el, &e))
            return -1;
        if (type == 0) {
            if (seen_sni || parse_sni(&e, out) < 0)
                return -1;
            seen_sni = true;
        } else if (type == 16) {
            if (seen_alpn || parse_alpn(&e, out) < 0)
                return -1;
            seen_alpn = true;
        }
    }
    return 1;
}

static int give_up(struct sk_client_hello *out)
{
    memset(out, 0, sizeof(*out));
    out->is_tls = true;
    return 1;
}

int sk_tls_inspect(const uint8_t *buf, size_t len, struct sk_client_hello *out)
{
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return 0;
    if (buf[0] != 0x16)
        return -1;
    if (len >= 2 && buf[1] != 0x03)
        return -1;
    if (len >= 3 && buf[2] > 0x04)
        return -1;
    uint8_t hs[SK_CH_INSPECT_MAX];
    size_t hl = 0, off = 0;
    for (;;) {
        /* the next record header */
        size_t left = len - off;
        if (left < 5) {
            const uint8_t *h = buf + off;
            if ((left >= 1 && h[0] != 0x16) || (left >= 2 && h[1] != 0x03) ||
                (left >= 3 && h[2] > 0x04))
                return -1;
            return len >= SK_CH_INSPECT_MAX ? give_up(out) : 0;
        }
        const uint8_t *h = buf + off;
        size_t rl = (size_t)h[3] << 8 | h[4];
        if (h[0] != 0x16 || h[1] != 0x03 || h[2] > 0x04 || rl == 0 || rl > REC_MAX)
            return -1;
        /* append what we have of its payload (bounded by our buffer) */
        size_t avail = left - 5 < rl ? left - 5 : rl;
        size_t k = avail < sizeof(hs) - hl ? avail : sizeof(hs) - hl;
        memcpy(hs + hl, h + 5, k);
        size_t tot = hl + k;
        if (tot >= 4) {
            if (hs[0] != 1) /* not a ClientHello */
                return -1;
            size_t need = 4 + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
            if (need > sizeof(hs))
                return give_up(out);
            if (tot >= need) {
                int r = parse_hello(hs, need, out);
                if (r < 0) {
                    memset(out, 0, sizeof(*out));
                    return -1;
                }
                out->is_tls = true;
                return 1;
            }
        }
        if (avail < rl) /* the record is not complete yet */
            return len >= SK_CH_INSPECT_MAX ? give_up(out) : 0;
        hl = tot;
        off += 5 + rl;
    }
}
