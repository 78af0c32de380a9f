/* Strict HTTP/1.1 parser (RFC 9110 / RFC 9112). See include/skiff/http1.h for
 * the contract.
 *
 * Why it looks like this:
 *  - One pass over the head with a 256-entry class table; no strlen, no copies,
 *    no allocation. Heads are re-parsed from scratch on each call (like
 *    picohttpparser): heads are small and a stateless parser cannot get out of
 *    sync with the caller's buffer.
 *  - Every error is decided by the bytes seen so far, in order, so feeding a
 *    message in any split yields the same result as feeding it whole. The head
 *    is parsed within min(len, max_head_bytes): running out of input inside
 *    that window is SK_ERR_AGAIN, outside it SK_ERR_H1_HDR_TOO_LARGE.
 *  - Framing fields (Content-Length, Transfer-Encoding, Host, Connection,
 *    Expect, Upgrade) are interpreted while the field is hot in cache; the
 *    combination checks (CL+TE, missing Host, ...) run once at the end.
 *  - The body decoder is a byte-at-a-time state machine only for framing bytes
 *    (chunk-size lines, CRLFs); payload is handed out as slices of the input.
 */
#include "skiff/ascii.h"
#include "skiff/http1.h"
#include "skiff/err.h"

#include <string.h>

/* ---- character classes ----------------------------------------------- */

enum {
    C_TOK = 0x01,  /* tchar (RFC 9110 5.6.2) */
    C_VAL = 0x02,  /* field-vchar / SP / HTAB (field-value content) */
    C_TGT = 0x04,  /* allowed in request-target: VCHAR (0x21-0x7e) */
    C_HOST = 0x08, /* uri-host / port chars: unreserved sub-delims % : [ ] */
    C_HEX = 0x10,  /* HEXDIG */
    C_QD = 0x20,   /* qdtext (RFC 9110 5.6.4) */
    C_SCH = 0x40,  /* scheme chars after the first: ALPHA DIGIT + - . */
};

#define IS_ALPHA(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_TOKSYM(c)                                                                               \
    ((c) == '!' || (c) == '#' || (c) == '$' || (c) == '%' || (c) == '&' || (c) == '\'' ||          \
     (c) == '*' || (c) == '+' || (c) == '-' || (c) == '.' || (c) == '^' || (c) == '_' ||           \
     (c) == '`' || (c) == '|' || (c) == '~')
#define IS_SUBDELIM(c)                                                                             \
    ((c) == '!' || (c) == '$' || (c) == '&' || (c) == '\'' || (c) == '(' || (c) == ')' ||          \
     (c) == '*' || (c) == '+' || (c) == ',' || (c) == ';' || (c) == '=')
#define CLS(c)                                                                                     \
    ((IS_ALPHA(c) || IS_DIGIT(c) || IS_TOKSYM(c) ? C_TOK : 0) |                                    \
     ((c) == '\t' || ((c) >= 0x20 && (c) != 0x7f) ? C_VAL : 0) |                                   \
     ((c) > 0x20 && (c) < 0x7f ? C_TGT : 0) |                                                      \
     (IS_ALPHA(c) || IS_DIGIT(c) || (c) == '-' || (c) == '.' || (c) == '_' || (c) == '~' ||        \
              IS_SUBDELIM(c) || (c) == '%' || (c) == ':' || (c) == '[' || (c) == ']'               \
          ? C_HOST                                                                                 \
          : 0) |                                                                                   \
     (IS_DIGIT(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F') ? C_HEX : 0) |       \
     ((c) == '\t' || (c) == ' ' || (c) == 0x21 || ((c) >= 0x23 && (c) <= 0x5b) ||                  \
              ((c) >= 0x5d && (c) <= 0x7e) || (c) >= 0x80                                          \
          ? C_QD                                                                                   \
          : 0) |                                                                                   \
     (IS_ALPHA(c) || IS_DIGIT(c) || (c) == '+' || (c) == '-' || (c) == '.' ? C_SCH : 0))
#define R4(b) CLS(b), CLS((b) + 1), CLS((b) + 2), CLS((b) + 3)
#define R16(b) R4(b), R4((b) + 4), R4((b) + 8), R4((b) + 12)
#define R64(b) R16(b), R16((b) + 16), R16((b) + 32), R16((b) + 48)

static const unsigned char cls[256] = {R64(0), R64(64), R64(128), R64(192)};

#define LC(c) ((unsigned char)((c) >= 'A' && (c) <= 'Z' ? (c) | 0x20 : (c)))
#define U(p) ((unsigned char)*(p))

#define DEFAULT_MAX_HEAD SK_H1_DEFAULT_MAX_HEAD
#define CL_MAX ((uint64_t)INT64_MAX) /* lengths must fit off_t */

int sk_h1_name_eq(const char *a, size_t alen, const char *lit)
{
    size_t i;
    for (i = 0; i < alen; i++) {
        if (lit[i] == '\0' || LC(a[i]) != LC(lit[i]))
            return 0;
    }
    return lit[i] == '\0';
}

/* a[0..n) equals the lower-case literal lit (same length n), ASCII case-
 * insensitively. 8 bytes at a time: lower-case the word (a byte gets 0x20 iff
 * it is 'A'..'Z'), then compare. Exact for any bytes. */
static inline uint64_t lc_word(uint64_t x)
{
    return sk_ascii_lower8(x);
}

static inline int lc_eq(const char *a, const char *lit, size_t n)
{
    /* n is a constant at every call: whole words, the last one overlapping
     * the one before; 4..7 bytes as two overlapping 4-byte halves */
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 < n; i += 8) {
            uint64_t x, y;
            memcpy(&x, a + i, 8);
            memcpy(&y, lit + i, 8);
            if (lc_word(x) != y)
                return 0;
        }
        uint64_t x, y;
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, lit + n - 8, 8);
        return lc_word(x) == y;
    }
    if (n >= 4) {
        uint32_t x1, y1, x2, y2;
        memcpy(&x1, a, 4);
        memcpy(&y1, lit, 4);
        memcpy(&x2, a + n - 4, 4);
        memcpy(&y2, lit + n - 4, 4);
        return lc_word(x1) == y1 && lc_word(x2) == y2;
    }
    for (size_t i = 0; i < n; i++)
        if (LC(a[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}
#define LIT_EQ(a, alen, lit) ((alen) == sizeof(lit) - 1 && lc_eq((a), (lit), sizeof(lit) - 1))

/* Iterate over the elements of a comma-separated list value (RFC 9110 5.6.1).
 * Returns 1 and sets *e, *elen (OWS trimmed, may be empty) while elements
 * remain. *pos is the cursor, start at 0. */
static int list_next(const char *v, size_t len, size_t *pos, const char **e, size_t *elen)
{
    size_t i = *pos;
    if (i > len)
        return 0;
    while (i < len && (v[i] == ' ' || v[i] == '\t'))
        i++;
    size_t s = i;
    const char *c = memchr(v + i, ',', len - i);
    size_t stop = c ? (size_t)(c - v) : len;
    size_t t = stop;
    while (t > s && (v[t - 1] == ' ' || v[t - 1] == '\t'))
        t--;
    *e = v + s;
    *elen = t - s;
    *pos = stop + 1; /* past the comma, or len + 1 = done */
    return 1;
}

int sk_h1_has_token(const char *val, size_t len, const char *tok)
{
    size_t pos = 0, elen;
    const char *e;
    if (len == 0)
        return 0;
    while (list_next(val, len, &pos, &e, &elen)) {
        if (sk_h1_name_eq(e, elen, tok))
            return 1;
    }
    return 0;
}

/* ---- field lines ------------------------------------------------------ */

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Bit 7 of each byte of x that is < 0x20 or == 0x7f, exact up to and
 * including the lowest flagged byte (a borrow only follows a flagged byte);
 * bytes >= 0x80 (obs-text) are never flagged. */
static inline uint64_t word_ctl_mask(uint64_t x)
{
    uint64_t lt = (x - ONES * 0x20) & ~x & HIGHS;
    uint64_t y = x ^ (ONES * 0x7f);
    uint64_t eq = (y - ONES) & ~y & HIGHS;
    return lt | eq;
}

/* Any byte outside 0x21..0x7e (request-target bytes) in x? */
static inline int word_has_nontgt(uint64_t x)
{
    uint64_t lt = (x - ONES * 0x21) & ~x & HIGHS;
    uint64_t y = x ^ (ONES * 0x7f);
    uint64_t eq = (y - ONES) & ~y & HIGHS;
    return ((lt | eq) | (x & HIGHS)) != 0;
}

/* Scan the field line at p (which is not CR/LF/SP/HTAB, caller checked).
 * On success fills *h and returns the pointer past the line's CRLF. On
 * failure returns NULL and sets *err (SK_ERR_AGAIN if `end` was hit). */
static const char *field_line(const char *p, const char *end, struct sk_h1_header *h, int *err)
{
    const char *name = p;
    /* field-name: tchar bytes, four per step without bounds checks while
     * there is room (names are short; this loop runs for every field) */
    while (end - p >= 4) {
        if (!(cls[U(p)] & C_TOK))
            goto name_done;
        if (!(cls[U(p + 1)] & C_TOK)) {
            p += 1;
            goto name_done;
        }
        if (!(cls[U(p + 2)] & C_TOK)) {
            p += 2;
            goto name_done;
        }
        if (!(cls[U(p + 3)] & C_TOK)) {
            p += 3;
            goto name_done;
        }
        p += 4;
    }
    while (p < end && (cls[U(p)] & C_TOK))
        p++;
    if (p == end)
        goto again;
name_done:
    if (p == name || *p != ':') {
        *err = SK_ERR_H1_BAD_HEADER; /* empty name, bad char, or WS before colon */
        return NULL;
    }
    h->name = name;
    h->name_len = (size_t)(p - name);
    p++;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    const char *val = p;
    /* hot loop: 8 bytes at a time while none is a CTL (< 0x20 or 0x7f); the
     * first CTL of a word is located directly. CR ends the value; HTAB is
     * content (rare), so scanning goes on after it. */
    for (;;) {
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            uint64_t cm = word_ctl_mask(x);
            if (cm) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                p += (unsigned)__builtin_ctzll(cm) >> 3; /* the first CTL byte */
#else
                while (cls[U(p)] & C_VAL)
                    p++;
#endif
                goto ctl;
            }
            p += 8;
        }
        while (p < end && (cls[U(p)] & C_VAL))
            p++;
        break;
    ctl:
        if (*p != '\t')
            break;
        p++;
    }
    if (p == end)
        goto again;
    if (*p != '\r') {
        *err = SK_ERR_H1_BAD_HEADER; /* NUL, bare LF, other CTL */
        return NULL;
    }
    if (p + 1 == end)
        goto again;
    if (p[1] != '\n') {
        *err = SK_ERR_H1_BAD_HEADER; /* bare CR */
        return NULL;
    }
    const char *vend = p;
    while (vend > val && (vend[-1] == ' ' || vend[-1] == '\t'))
        vend--;
    h->value = val;
    h->value_len = (size_t)(vend - val);
    return p + 2;
again:
    *err = SK_ERR_AGAIN;
    return NULL;
}

/* ---- framing state collected while scanning fields -------------------- */

struct framing {
    uint64_t cl;
    int ncl;        /* Content-Length fields seen */
    int nte;        /* Transfer-Encoding fields seen */
    int te_chunked; /* last coding seen is chunked */
    int te_other;   /* a coding other than chunked seen */
    int nhost;
    int conn_upgrade; /* Connection: upgrade */
    int nupgrade;
    int expect_continue;
    int conn_close;
    int conn_keepalive;
    int ignore_framing; /* 2xx response to CONNECT: CL/TE are ignored */
};

/* Content-Length = 1*DIGIT, possibly repeated as a list of equal values. */
static int field_cl(struct framing *f, const char *v, size_t len)
{
    size_t pos = 0, elen;
    const char *e;
    if (len == 0)
        return SK_ERR_H1_BAD_CL;
    if (len <= 18) {
        /* the usual value, 1..18 digits and nothing else: no list walk
         * (18 digits cannot overflow INT64_MAX) */
        uint64_t n = 0;
        size_t i = 0;
        for (; i < len; i++) {
            unsigned d = (unsigned)(unsigned char)v[i] - '0';
            if (d > 9)
                break;
            n = n * 10 + d;
        }
        if (i == len) {
            if (f->ncl > 0 && n != f->cl)
                return SK_ERR_H1_SMUGGLE;
            f->cl = n;
            f->ncl++;
            return 0;
        }
    }
    while (list_next(v, len, &pos, &e, &elen)) {
        if (elen == 0)
            return SK_ERR_H1_BAD_CL;
        uint64_t n = 0;
        for (size_t i = 0; i < elen; i++) {
            unsigned d = (unsigned)(unsigned char)e[i] - '0';
            if (d > 9)
                return SK_ERR_H1_BAD_CL; /* sign, hex, space, ... */
            if (n > (CL_MAX - d) / 10)
                return SK_ERR_H1_BAD_CL; /* overflow */
            n = n * 10 + d;
        }
        if (f->ncl > 0 && n != f->cl)
            return SK_ERR_H1_SMUGGLE;
        f->cl = n;
        f->ncl++;
    }
    return 0;
}

/* Transfer-Encoding: list of codings; only a single final "chunked" is
 * something we can frame. Anything after chunked, empty elements, parameters
 * and non-token junk are framing errors; a well-formed list whose final coding
 * is chunked but which also names another coding is SK_ERR_H1_BAD_TE
 * (decided at the end of the head). */
static int field_te(struct framing *f, const char *v, size_t len)
{
    size_t pos = 0, elen;
    const char *e;
    f->nte++;
    if (len == 0)
        return SK_ERR_H1_SMUGGLE;
    while (list_next(v, len, &pos, &e, &elen)) {
        if (elen == 0 || f->te_chunked)
            return SK_ERR_H1_SMUGGLE; /* empty element, or a coding after chunked */
        for (size_t i = 0; i < elen; i++) {
            if (!(cls[U(e + i)] & C_TOK))
                return SK_ERR_H1_SMUGGLE; /* parameters, spaces, junk */
        }
        if (LIT_EQ(e, elen, "chunked"))
            f->te_chunked = 1;
        else
            f->te_other = 1;
    }
    return 0;
}

static void field_connection(struct framing *f, const char *v, size_t len)
{
    size_t pos = 0, elen;
    const char *e;
    while (list_next(v, len, &pos, &e, &elen)) {
        switch (elen) {
        case 5:
            if (lc_eq(e, "close", 5))
                f->conn_close = 1;
            break;
        case 7:
            if (lc_eq(e, "upgrade", 7))
                f->conn_upgrade = 1;
            break;
        case 10:
            if (lc_eq(e, "keep-alive", 10))
                f->conn_keepalive = 1;
            break;
        }
    }
}

/* Interpret the fields that matter for framing/connection handling. */
static int field_semantics(struct framing *f, struct sk_h1_msg *m, const struct sk_h1_header *h,
                           int is_req)
{
    const char *n = h->name;
    switch (h->name_len) {
    case 4:
        if (is_req && lc_eq(n, "host", 4)) {
            if (++f->nhost > 1)
                return SK_ERR_H1_BAD_HEADER;
            const char *hv = h->value;
            size_t i = 0, hl = h->value_len;
            for (; i + 4 <= hl; i += 4) {
                if (!(cls[U(hv + i)] & cls[U(hv + i + 1)] & cls[U(hv + i + 2)] &
                      cls[U(hv + i + 3)] & C_HOST))
                    return SK_ERR_H1_BAD_HEADER;
            }
            for (; i < hl; i++) {
                if (!(cls[U(hv + i)] & C_HOST))
                    return SK_ERR_H1_BAD_HEADER;
            }
            m->host = h->value;
            m->host_len = h->value_len;
        }
        break;
    case 6:
        if (is_req && lc_eq(n, "expect", 6) && LIT_EQ(h->value, h->value_len, "100-continue"))
            f->expect_continue = 1;
        break;
    case 7:
        if (lc_eq(n, "upgrade", 7)) {
            if (++f->nupgrade > 1)
                return SK_ERR_H1_BAD_HEADER;
            m->upgrade = h->value;
            m->upgrade_len = h->value_len;
        }
        break;
    case 10:
        if (lc_eq(n, "connection", 10))
            field_connection(f, h->value, h->value_len);
        break;
    case 14:
        if (!f->ignore_framing && lc_eq(n, "content-length", 14)) {
            int rc = field_cl(f, h->value, h->value_len);
            if (rc)
                return rc;
            if (f->nte)
                return SK_ERR_H1_SMUGGLE;
        }
        break;
    case 17:
        if (!f->ignore_framing && lc_eq(n, "transfer-encoding", 17)) {
            if (m->minor_version == 0 || f->ncl)
                return SK_ERR_H1_SMUGGLE; /* TE in HTTP/1.0, or CL+TE */
            return field_te(f, h->value, h->value_len);
        }
        break;
    }
    return 0;
}

/* Field section up to and including the empty line. Returns pointer past it
 * or NULL with *err. */
static const char *fields(const char *p, const char *end, struct sk_h1_msg *m, size_t maxh,
                          struct framing *f, int is_req, int *err)
{
    for (;;) {
        if (p == end)
            goto again;
        unsigned char c = U(p);
        if (c == '\r') {
            if (p + 1 == end)
                goto again;
            if (p[1] != '\n') {
                *err = SK_ERR_H1_BAD_HEADER;
                return NULL;
            }
            return p + 2;
        }
        if (c == ' ' || c == '\t') {
            /* a continuation line; before the first field it is the RFC 9112
             * 2.2 "whitespace after start-line" case, which we also reject */
            *err = m->nhdrs ? SK_ERR_H1_OBS_FOLD : SK_ERR_H1_BAD_START;
            return NULL;
        }
        if (m->nhdrs == maxh) {
            *err = SK_ERR_H1_TOO_MANY_HDRS;
            return NULL;
        }
        struct sk_h1_header *h = &m->hdrs[m->nhdrs];
        p = field_line(p, end, h, err);
        if (!p)
            return NULL;
        m->nhdrs++;
        int rc = field_semantics(f, m, h, is_req);
        if (rc) {
            *err = rc;
            return NULL;
        }
    }
again:
    *err = SK_ERR_AGAIN;
    return NULL;
}

/* "HTTP/" DIGIT "." DIGIT; only 1.0 and 1.1 are accepted. Checked byte by
 * byte so junk is rejected as soon as it arrives. */
static const char *version(const char *p, const char *end, int *minor, int *err)
{
    static const char pat[] = "HTTP/1.1"; /* template; digits checked below */
    for (int i = 0; i < 8; i++) {
        if (p + i == end) {
            *err = SK_ERR_AGAIN;
            return NULL;
        }
        unsigned char c = U(p + i);
        if (i == 5 || i == 7) {
            if (!IS_DIGIT(c))
                goto bad;
        } else if (c != (unsigned char)pat[i]) {
            goto bad;
        }
    }
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1')) {
        *err = SK_ERR_H1_BAD_VERSION;
        return NULL;
    }
    *minor = p[7] - '0';
    return p + 8;
bad:
    *err = SK_ERR_H1_BAD_START;
    return NULL;
}

static const char *crlf(const char *p, const char *end, int bad, int *err)
{
    if (p == end)
        goto again;
    if (*p != '\r')
        goto fail;
    if (p + 1 == end)
        goto again;
    if (p[1] != '\n')
        goto fail;
    return p + 2;
again:
    *err = SK_ERR_AGAIN;
    return NULL;
fail:
    *err = bad;
    return NULL;
}

static void msg_reset(struct sk_h1_msg *m)
{
    struct sk_h1_header *hdrs = m->hdrs;
    size_t cap = m->hdrs_cap;
    memset(m, 0, sizeof(*m));
    m->hdrs = hdrs;
    m->hdrs_cap = cap;
}

static void limits(const struct sk_h1_msg *m, const struct sk_h1_limits *lim, size_t len,
                   size_t *win, size_t *maxh)
{
    size_t mb = lim && lim->max_head_bytes ? lim->max_head_bytes : DEFAULT_MAX_HEAD;
    size_t mh = lim ? lim->max_headers : m->hdrs_cap;
    if (mh > m->hdrs_cap)
        mh = m->hdrs_cap;
    *win = len < mb ? len : mb;
    *maxh = mh;
}

/* Validate the request-target form against the method (RFC 9112 3.2). */
static int target_form(const struct sk_h1_msg *m, int is_connect)
{
    const char *t = m->target;
    size_t n = m->target_len;
    if (is_connect) {
        /* authority-form = uri-host ":" port, nothing else */
        size_t colon = n;
        while (colon > 0 && IS_DIGIT(t[colon - 1]))
            colon--;
        if (colon < 2 || colon == n || t[colon - 1] != ':')
            return SK_ERR_H1_BAD_START;
        for (size_t i = 0; i < colon - 1; i++) {
            if (!(cls[U(t + i)] & C_HOST) || t[i] == '@')
                return SK_ERR_H1_BAD_START;
        }
        return 0;
    }
    if (t[0] == '/')
        return 0; /* origin-form */
    if (n == 1 && t[0] == '*')
        return m->method_len == 7 && memcmp(m->method, "OPTIONS", 7) == 0 ? 0 : SK_ERR_H1_BAD_START;
    /* absolute-form: scheme ":" ... */
    if (!IS_ALPHA(t[0]))
        return SK_ERR_H1_BAD_START;
    for (size_t i = 1; i < n; i++) {
        if (t[i] == ':')
            return 0;
        if (!(cls[U(t + i)] & C_SCH))
            break;
    }
    return SK_ERR_H1_BAD_START;
}

static ssize_t finish_again(int err, size_t len, size_t win)
{
    if (err == SK_ERR_AGAIN && len > win)
        return SK_ERR_H1_HDR_TOO_LARGE;
    return err;
}

ssize_t sk_h1_parse_request(const char *buf, size_t len, struct sk_h1_msg *m,
                            const struct sk_h1_limits *lim)
{
    size_t win, maxh;
    int err = SK_ERR_AGAIN;
    struct framing f;

    msg_reset(m);
    limits(m, lim, len, &win, &maxh);
    const char *p = buf, *end = buf + win;

    /* RFC 9112 2.2: ignore empty lines (CRLF) before the request-line */
    for (;;) {
        if (p == end)
            goto fail;
        if (*p != '\r')
            break;
        if (p + 1 == end)
            goto fail;
        if (p[1] != '\n') {
            err = SK_ERR_H1_BAD_START;
            goto fail;
        }
        p += 2;
    }

    /* method = token, then exactly one SP */
    const char *s = p;
    while (p < end && (cls[U(p)] & C_TOK))
        p++;
    if (p == end)
        goto fail;
    if (p == s || *p != ' ') {
        err = SK_ERR_H1_BAD_START;
        goto fail;
    }
    m->method = s;
    m->method_len = (size_t)(p - s);
    p++;

    /* request-target: visible ASCII only, then exactly one SP */
    s = p;
    while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        if (word_has_nontgt(x))
            break;
        p += 8;
    }
    while (p < end && (cls[U(p)] & C_TGT))
        p++;
    if (p == end)
        goto fail;
    if (p == s || *p != ' ') {
        err = SK_ERR_H1_BAD_START;
        goto fail;
    }
    m->target = s;
    m->target_len = (size_t)(p - s);
    p++;

    p = version(p, end, &m->minor_version, &err);
    if (!p)
        goto fail;
    p = crlf(p, end, SK_ERR_H1_BAD_START, &err);
    if (!p)
        goto fail;

    int is_connect = m->method_len == 7 && memcmp(m->method, "CONNECT", 7) == 0;
    if ((err = target_form(m, is_connect)) != 0)
        goto fail;
    if (is_connect)
        m->flags |= SK_H1_F_CONNECT;
    else if (m->method_len == 4 && memcmp(m->method, "HEAD", 4) == 0)
        m->flags |= SK_H1_F_HEAD;

    memset(&f, 0, sizeof(f));
    const char *fs = p;
    p = fields(p, end, m, maxh, &f, 1, &err);
    if (!p)
        goto fail;
    m->fields = fs;
    m->fields_len = (size_t)(p - fs);

    /* whole-head checks */
    if (f.nhost)
        m->flags |= SK_H1_F_HAS_HOST;
    else if (m->minor_version == 1)
        return SK_ERR_H1_BAD_HEADER;
    if (f.nte) {
        if (!f.te_chunked)
            return SK_ERR_H1_SMUGGLE; /* final coding not chunked: length unknowable */
        if (f.te_other)
            return SK_ERR_H1_BAD_TE;
        if (is_connect)
            return SK_ERR_H1_SMUGGLE;
        m->flags |= SK_H1_F_HAS_TE;
        m->body_kind = SK_H1_BODY_CHUNKED;
    } else if (f.ncl) {
        if (is_connect && f.cl)
            return SK_ERR_H1_SMUGGLE; /* CONNECT has no content; bytes would be tunnel data */
        m->flags |= SK_H1_F_HAS_CL;
        m->content_length = f.cl;
        m->body_kind = f.cl ? SK_H1_BODY_LENGTH : SK_H1_BODY_NONE;
    }
    if (f.conn_close)
        m->flags |= SK_H1_F_CONN_CLOSE;
    if (!f.conn_close && (m->minor_version == 1 || f.conn_keepalive))
        m->flags |= SK_H1_F_KEEPALIVE;
    if (m->minor_version == 1) {
        /* RFC 9110 10.1.1 / 7.8: ignored in HTTP/1.0 requests */
        if (f.expect_continue)
            m->flags |= SK_H1_F_EXPECT_CONTINUE;
        if (f.conn_upgrade && f.nupgrade)
            m->flags |= SK_H1_F_UPGRADE;
    }
    return p - buf;

fail:
    return finish_again(err, len, win);
}

ssize_t sk_h1_parse_response(const char *buf, size_t len, struct sk_h1_msg *m,
                             const struct sk_h1_limits *lim, unsigned req_flags)
{
    size_t win, maxh;
    int err = SK_ERR_AGAIN;
    struct framing f;

    msg_reset(m);
    limits(m, lim, len, &win, &maxh);
    const char *p = buf, *end = buf + win;

    p = version(p, end, &m->minor_version, &err);
    if (!p)
        goto fail;
    if (p == end)
        goto fail;
    if (*p != ' ') {
        err = SK_ERR_H1_BAD_START;
        goto fail;
    }
    p++;
    int st = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == end)
            goto fail;
        if (!IS_DIGIT(*p)) {
            err = SK_ERR_H1_BAD_START;
            goto fail;
        }
        st = st * 10 + (*p - '0');
    }
    if (st < 100) {
        err = SK_ERR_H1_BAD_START;
        goto fail;
    }
    m->status = st;
    if (p == end)
        goto fail;
    if (*p == ' ') {
        p++;
        const char *s = p;
        while (p < end && (cls[U(p)] & C_VAL))
            p++;
        m->reason = s;
        m->reason_len = (size_t)(p - s);
    } else {
        /* "HTTP/1.1 200\r\n": the SP before an empty reason is missing. Not
         * ambiguous (the status is exactly 3 digits and CRLF follows), widely
         * sent, so tolerated. */
        m->reason = p;
        m->reason_len = 0;
    }
    p = crlf(p, end, SK_ERR_H1_BAD_START, &err);
    if (!p)
        goto fail;

    int nobody = st < 200 || st == 204 || st == 304 || (req_flags & SK_H1_F_HEAD);
    memset(&f, 0, sizeof(f));
    if ((req_flags & SK_H1_F_CONNECT) && st >= 200 && st < 300) {
        nobody = 1;
        f.ignore_framing = 1; /* RFC 9110 9.3.6 */
    }
    const char *fs = p;
    p = fields(p, end, m, maxh, &f, 0, &err);
    if (!p)
        goto fail;
    m->fields = fs;
    m->fields_len = (size_t)(p - fs);

    if (f.nte) {
        /* any coding but chunked would have to be decoded or relayed as-is;
         * neither is supported */
        if (!f.te_chunked || f.te_other)
            return SK_ERR_H1_BAD_TE;
        m->flags |= SK_H1_F_HAS_TE;
        m->body_kind = SK_H1_BODY_CHUNKED;
    } else if (f.ncl) {
        m->flags |= SK_H1_F_HAS_CL;
        m->content_length = f.cl;
        m->body_kind = f.cl ? SK_H1_BODY_LENGTH : SK_H1_BODY_NONE;
    } else {
        m->body_kind = SK_H1_BODY_EOF;
    }
    if (nobody)
        m->body_kind = SK_H1_BODY_NONE;
    if (f.conn_close)
        m->flags |= SK_H1_F_CONN_CLOSE;
    if (!f.conn_close && (m->minor_version == 1 || f.conn_keepalive) &&
        m->body_kind != SK_H1_BODY_EOF)
        m->flags |= SK_H1_F_KEEPALIVE;
    if (f.conn_upgrade && f.nupgrade)
        m->flags |= SK_H1_F_UPGRADE;
    return p - buf;

fail:
    return finish_again(err, len, win);
}

/* ---- trailers --------------------------------------------------------- */

/* Validate one trailer field: same syntax as head fields; framing and routing
 * fields are not allowed in trailers (RFC 9110 6.5.1). */
static int trailer_field_ok(const struct sk_h1_header *h)
{
    switch (h->name_len) {
    case 4:
        return !sk_h1_name_eq(h->name, 4, "host");
    case 14:
        return !sk_h1_name_eq(h->name, 14, "content-length");
    case 17:
        return !sk_h1_name_eq(h->name, 17, "transfer-encoding");
    }
    return 1;
}

ssize_t sk_h1_parse_trailers(const char *buf, size_t len, struct sk_h1_header *hdrs, size_t cap)
{
    const char *p = buf, *end = buf + len;
    size_t n = 0;
    int err;
    while (p < end) {
        unsigned char c = U(p);
        if (c == ' ' || c == '\t')
            return n ? SK_ERR_H1_OBS_FOLD : SK_ERR_H1_BAD_HEADER;
        if (c == '\r' || c == '\n')
            return SK_ERR_H1_BAD_HEADER; /* the empty line is not part of the input */
        if (n == cap)
            return SK_ERR_H1_TOO_MANY_HDRS;
        p = field_line(p, end, &hdrs[n], &err);
        if (!p)
            return err == SK_ERR_AGAIN ? SK_ERR_H1_BAD_HEADER : err; /* unterminated */
        if (!trailer_field_ok(&hdrs[n]))
            return SK_ERR_H1_BAD_HEADER;
        n++;
    }
    return (ssize_t)n;
}

/* ---- body ------------------------------------------------------------- */

enum {
    /* order matters: BS_SIZE..BS_EXT_QEND are the size-line states */
    BS_DATA = 0,  /* LENGTH/EOF: payload; CHUNKED: chunk payload */
    BS_SIZE,      /* chunk-size hex digits (line_len counts them) */
    BS_EXT_BWS,   /* after size/ext: BWS, then ';' or CR */
    BS_EXT_NAME0, /* after ';': BWS then first name char */
    BS_EXT_NAME,  /* in ext name */
    BS_EXT_AFTER, /* after ext name: BWS, '=', ';' or CR */
    BS_EXT_VAL0,  /* after '=': BWS then token or '"' */
    BS_EXT_VTOK,  /* in token value */
    BS_EXT_QS,    /* in quoted string */
    BS_EXT_QP,    /* after backslash in quoted string */
    BS_EXT_QEND,  /* after closing quote: BWS, ';' or CR */
    BS_SIZE_LF,   /* got CR ending the size line */
    BS_DATA_CR,   /* chunk payload done, want CR */
    BS_DATA_LF,   /* want LF */
    BS_TRAILER,   /* after last-chunk line: trailer section */
    BS_DONE,
};

#define MAX_CHUNK_LINE SK_H1_MAX_CHUNK_LINE
#define CHUNK_MAX ((uint64_t)INT64_MAX)

int sk_h1_body_done(const struct sk_h1_body *b)
{
    return b->state == BS_DONE;
}

void sk_h1_body_init(struct sk_h1_body *b, int kind, uint64_t content_length,
                     size_t max_trailer_bytes)
{
    memset(b, 0, sizeof(*b));
    b->kind = (uint8_t)kind;
    if (!max_trailer_bytes)
        max_trailer_bytes = DEFAULT_MAX_HEAD;
    b->max_trailer_bytes = max_trailer_bytes > UINT32_MAX / 2 ? UINT32_MAX / 2
                                                               : (uint32_t)max_trailer_bytes;
    switch (kind) {
    case SK_H1_BODY_LENGTH:
        b->remaining = content_length;
        b->state = content_length ? BS_DATA : BS_DONE;
        break;
    case SK_H1_BODY_CHUNKED:
        b->state = BS_SIZE;
        break;
    case SK_H1_BODY_EOF:
        b->state = BS_DATA;
        break;
    default:
        b->state = BS_DONE;
        break;
    }
}

/* Trailer section: returned in one piece once the terminating empty line is
 * in `in`. b->trailer_bytes remembers how much of it was already verified
 * (whole field lines), so re-presenting the same bytes costs O(new bytes). */
static ssize_t trailer_step(struct sk_h1_body *b, const char *in, size_t len, int *ev,
                            const char **data, size_t *data_len)
{
    size_t lim = b->max_trailer_bytes;
    size_t win = len < lim + 2 ? len : lim + 2; /* + the final CRLF */
    const char *p = in + b->trailer_bytes, *end = in + win;
    struct sk_h1_header h;
    int err;

    if (b->trailer_bytes > len)
        return SK_ERR_INVAL; /* caller did not re-present the trailer bytes */
    for (;;) {
        if (p == end)
            goto more;
        unsigned char c = U(p);
        if (c == '\r') {
            if (p + 1 == end)
                goto more;
            if (p[1] != '\n')
                return SK_ERR_H1_BAD_CHUNK;
            /* no trailer fields (the usual case): finish in this call, so a
             * body ending at the end of the buffer needs no extra call */
            *ev = p == in ? SK_H1_BEV_DONE : SK_H1_BEV_TRAILERS;
            *data = p == in ? NULL : in;
            *data_len = (size_t)(p - in);
            b->state = BS_DONE;
            return (p + 2) - in;
        }
        if (c == ' ' || c == '\t')
            return p == in ? SK_ERR_H1_BAD_HEADER : SK_ERR_H1_OBS_FOLD;
        const char *q = field_line(p, end, &h, &err);
        if (!q) {
            if (err != SK_ERR_AGAIN)
                return err;
            goto more;
        }
        if (!trailer_field_ok(&h))
            return SK_ERR_H1_BAD_HEADER;
        if ((size_t)(q - in) > lim)
            return SK_ERR_H1_HDR_TOO_LARGE;
        p = q;
        b->trailer_bytes = (uint32_t)(p - in);
    }
more:
    if (len >= lim + 2)
        return SK_ERR_H1_HDR_TOO_LARGE;
    *ev = SK_H1_BEV_NEED_MORE;
    return 0;
}

ssize_t sk_h1_body_step(struct sk_h1_body *b, const char *in, size_t len, int *ev,
                        const char **data, size_t *data_len)
{
    const char *p = in, *end = in + len;

    *data = NULL;
    *data_len = 0;
    if (b->kind == SK_H1_BODY_EOF) {
        *ev = len ? SK_H1_BEV_DATA : SK_H1_BEV_NEED_MORE;
        *data = len ? in : NULL;
        *data_len = len;
        return (ssize_t)len;
    }
    for (;;) {
        switch (b->state) {
        case BS_DONE:
            *ev = SK_H1_BEV_DONE;
            return p - in;
        case BS_DATA: {
            if (p == end)
                goto more;
            size_t avail = (size_t)(end - p);
            size_t n = b->remaining < avail ? (size_t)b->remaining : avail;
            b->remaining -= n;
            if (b->remaining == 0)
                b->state = b->kind == SK_H1_BODY_CHUNKED ? BS_DATA_CR : BS_DONE;
            *ev = SK_H1_BEV_DATA;
            *data = p;
            *data_len = n;
            return (p + n) - in;
        }
        case BS_TRAILER: {
            /* trailer_bytes is relative to the trailer start, which is p here
             * and in[0] on later calls (we consume exactly up to it) */
            ssize_t r = trailer_step(b, p, (size_t)(end - p), ev, data, data_len);
            if (r < 0)
                return r;
            return (p - in) + r;
        }
        default:
            break;
        }
        /* framing bytes, one at a time */
        if (p == end)
            goto more;
        unsigned char c = U(p);
        p++;
        /* bound the size line (digits + extensions, CRLF not counted) */
        if (b->state <= BS_EXT_QEND && ++b->line_len > MAX_CHUNK_LINE && c != '\r')
            return SK_ERR_H1_BAD_CHUNK;
        switch (b->state) {
        case BS_SIZE:
            if (cls[c] & C_HEX) {
                unsigned d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
                if (b->remaining > (CHUNK_MAX - d) >> 4)
                    return SK_ERR_H1_BAD_CHUNK; /* overflow */
                b->remaining = (b->remaining << 4) | d;
                break;
            }
            if (b->line_len == 1)
                return SK_ERR_H1_BAD_CHUNK; /* no digits: sign, space, empty */
            if (c == '\r')
                b->state = BS_SIZE_LF;
            else if (c == ';')
                b->state = BS_EXT_NAME0;
            else if (c == ' ' || c == '\t')
                b->state = BS_EXT_BWS;
            else
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_BWS:
            /* BWS must lead to ';' (chunk-ext), not to the end of line */
            if (c == ';')
                b->state = BS_EXT_NAME0;
            else if (c != ' ' && c != '\t')
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_NAME0:
            if (cls[c] & C_TOK)
                b->state = BS_EXT_NAME;
            else if (c != ' ' && c != '\t')
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_NAME:
            if (cls[c] & C_TOK)
                break;
            /* fallthrough */
        case BS_EXT_AFTER:
            if (c == '\r')
                b->state = BS_SIZE_LF;
            else if (c == ';')
                b->state = BS_EXT_NAME0;
            else if (c == '=')
                b->state = BS_EXT_VAL0;
            else if (c == ' ' || c == '\t')
                b->state = BS_EXT_AFTER;
            else
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_VAL0:
            if (cls[c] & C_TOK)
                b->state = BS_EXT_VTOK;
            else if (c == '"')
                b->state = BS_EXT_QS;
            else if (c != ' ' && c != '\t')
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_VTOK:
            if (cls[c] & C_TOK)
                break;
            if (c == '\r')
                b->state = BS_SIZE_LF;
            else if (c == ';')
                b->state = BS_EXT_NAME0;
            else if (c == ' ' || c == '\t')
                b->state = BS_EXT_BWS;
            else
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_QS:
            if (c == '"')
                b->state = BS_EXT_QEND;
            else if (c == '\\')
                b->state = BS_EXT_QP;
            else if (!(cls[c] & C_QD))
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_QP:
            if (c == '\t' || (c >= 0x20 && c != 0x7f))
                b->state = BS_EXT_QS;
            else
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_EXT_QEND:
            if (c == '\r')
                b->state = BS_SIZE_LF;
            else if (c == ';')
                b->state = BS_EXT_NAME0;
            else if (c == ' ' || c == '\t')
                b->state = BS_EXT_BWS;
            else
                return SK_ERR_H1_BAD_CHUNK;
            break;
        case BS_SIZE_LF:
            if (c != '\n')
                return SK_ERR_H1_BAD_CHUNK;
            b->line_len = 0;
            if (b->remaining == 0) {
                b->state = BS_TRAILER;
                b->trailer_bytes = 0;
            } else {
                b->state = BS_DATA;
            }
            break;
        case BS_DATA_CR:
            if (c != '\r')
                return SK_ERR_H1_BAD_CHUNK;
            b->state = BS_DATA_LF;
            break;
        case BS_DATA_LF:
            if (c != '\n')
                return SK_ERR_H1_BAD_CHUNK;
            b->state = BS_SIZE;
            b->line_len = 0;
            b->remaining = 0;
            break;
        default:
            return SK_ERR_INVAL;
        }
    }
more:
    *ev = SK_H1_BEV_NEED_MORE;
    return p - in;
}
