/* Envoy access-log format strings -> pieces (config time, so a bad format is
 * a config error with its position, never a runtime surprise), and pieces ->
 * the flat instruction list the workers render (sk_al_compile). */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "skiff/accesslog.h"
#include "skiff/model.h"

static const struct {
    const char *name;
    int op;
    int arg; /* 0 none, 1 optional, 2 required */
} ops[] = {
    {"START_TIME", SK_AL_START_TIME, 1},
    {"REQ", SK_AL_REQ, 2},
    {"RESP", SK_AL_RESP, 2},
    {"TRAILER", SK_AL_TRAILER, 2},
    {"PROTOCOL", SK_AL_PROTOCOL, 0},
    {"RESPONSE_CODE", SK_AL_RESPONSE_CODE, 0},
    {"RESPONSE_FLAGS", SK_AL_RESPONSE_FLAGS, 0},
    {"RESPONSE_CODE_DETAILS", SK_AL_RESPONSE_CODE_DETAILS, 0},
    {"BYTES_RECEIVED", SK_AL_BYTES_RECEIVED, 0},
    {"BYTES_SENT", SK_AL_BYTES_SENT, 0},
    {"DURATION", SK_AL_DURATION, 0},
    {"RESPONSE_DURATION", SK_AL_RESPONSE_DURATION, 0},
    {"UPSTREAM_HOST", SK_AL_UPSTREAM_HOST, 0},
    {"UPSTREAM_CLUSTER", SK_AL_UPSTREAM_CLUSTER, 0},
    {"UPSTREAM_REQUEST_ATTEMPT_COUNT", SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT, 0},
    {"DOWNSTREAM_REMOTE_ADDRESS", SK_AL_DOWNSTREAM_REMOTE_ADDRESS, 0},
    {"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, 0},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS", SK_AL_DOWNSTREAM_REMOTE_ADDRESS, 0},
    {"DOWNSTREAM_LOCAL_ADDRESS", SK_AL_DOWNSTREAM_LOCAL_ADDRESS, 0},
    {"DOWNSTREAM_PEER_URI_SAN", SK_AL_DOWNSTREAM_PEER_URI_SAN, 0},
    {"DOWNSTREAM_TLS_VERSION", SK_AL_DOWNSTREAM_TLS_VERSION, 0},
    {"REQUESTED_SERVER_NAME", SK_AL_REQUESTED_SERVER_NAME, 0},
    {"ROUTE_NAME", SK_AL_ROUTE_NAME, 0},
    {"CONNECTION_ID", SK_AL_CONNECTION_ID, 0},
    {"STREAM_ID", SK_AL_STREAM_ID, 0},
    {"GRPC_STATUS", SK_AL_GRPC_STATUS, 1},
    {"HOSTNAME", SK_AL_HOSTNAME, 0},
    {"TRACE_ID", SK_AL_TRACE_ID, 0},
};

struct plist {
    struct sk_al_piece *v;
    size_t n, cap;
    struct sk_arena *a;
};

static struct sk_al_piece *push(struct plist *p)
{
    if (p->n == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 8;
        struct sk_al_piece *v = sk_arena_alloc(p->a, nc * sizeof(*v));
        if (!v)
            return NULL;
        if (p->n)
            memcpy(v, p->v, p->n * sizeof(*v));
        p->v = v;
        p->cap = nc;
    }
    return &p->v[p->n++];
}

static int literal(struct plist *p, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    struct sk_al_piece *x = push(p);
    if (!x)
        return -1;
    x->op = SK_AL_LITERAL;
    x->text = sk_arena_strndup(p->a, s, n);
    x->text_len = n;
    return x->text ? 0 : -1;
}

int sk_al_parse_format(struct sk_arena *a, const char *fmt, size_t len, struct sk_al_format *out,
                       char *err, size_t errlen)
{
    struct plist p = {0};
    p.a = a;
    size_t i = 0, lit = 0;
    while (i < len) {
        if (fmt[i] != '%') {
            i++;
            continue;
        }
        /* "%%" is a literal percent sign */
        if (i + 1 < len && fmt[i + 1] == '%') {
            if (literal(&p, fmt + lit, i + 1 - lit) < 0)
                goto oom;
            i += 2;
            lit = i;
            continue;
        }
        const char *end = memchr(fmt + i + 1, '%', len - i - 1);
        if (!end) {
            snprintf(err, errlen, "unterminated %% operator at offset %zu", i);
            return -1;
        }
        if (literal(&p, fmt + lit, i - lit) < 0)
            goto oom;
        const char *cmd = fmt + i + 1;
        size_t clen = (size_t)(end - cmd);
        /* COMMAND[(arg)][:len] */
        size_t nlen = 0;
        while (nlen < clen && (isupper((unsigned char)cmd[nlen]) || cmd[nlen] == '_' ||
                               isdigit((unsigned char)cmd[nlen])))
            nlen++;
        const char *arg = NULL;
        size_t alen = 0;
        size_t k = nlen;
        if (k < clen && cmd[k] == '(') {
            const char *rp = memchr(cmd + k, ')', clen - k);
            if (!rp) {
                snprintf(err, errlen, "missing ')' in %%%.*s%%", (int)clen, cmd);
                return -1;
            }
            arg = cmd + k + 1;
            alen = (size_t)(rp - arg);
            k = (size_t)(rp - cmd) + 1;
        }
        size_t maxl = 0;
        if (k < clen && cmd[k] == ':') {
            k++;
            if (k >= clen) {
                snprintf(err, errlen, "missing length after ':' in %%%.*s%%", (int)clen, cmd);
                return -1;
            }
            while (k < clen && isdigit((unsigned char)cmd[k]))
                maxl = maxl * 10 + (size_t)(cmd[k++] - '0');
        }
        if (k != clen) {
            snprintf(err, errlen, "malformed operator %%%.*s%%", (int)clen, cmd);
            return -1;
        }
        int found = -1;
        for (size_t o = 0; o < sizeof(ops) / sizeof(ops[0]); o++)
            if (strlen(ops[o].name) == nlen && memcmp(ops[o].name, cmd, nlen) == 0) {
                found = (int)o;
                break;
            }
        if (found < 0) {
            snprintf(err, errlen, "unknown access log operator %%%.*s%%", (int)nlen, cmd);
            return -1;
        }
        if (ops[found].arg == 2 && !arg) {
            snprintf(err, errlen, "%%%s%% needs an argument, e.g. %%%s(x-request-id)%%",
                     ops[found].name, ops[found].name);
            return -1;
        }
        if (ops[found].arg == 0 && arg) {
            snprintf(err, errlen, "%%%s%% takes no argument", ops[found].name);
            return -1;
        }
        struct sk_al_piece *x = push(&p);
        if (!x)
            goto oom;
        x->op = ops[found].op;
        x->max_len = maxl;
        if (arg) {
            /* REQ(a?b): header a, else b; header names are case-insensitive */
            const char *q = (x->op == SK_AL_REQ || x->op == SK_AL_RESP || x->op == SK_AL_TRAILER)
                                ? memchr(arg, '?', alen)
                                : NULL;
            size_t l1 = q ? (size_t)(q - arg) : alen;
            x->text = sk_arena_strndup(a, arg, l1);
            x->text_len = l1;
            if (q) {
                x->alt = sk_arena_strndup(a, q + 1, alen - l1 - 1);
                if (!x->alt)
                    goto oom;
            }
            if (!x->text)
                goto oom;
            if (x->op != SK_AL_START_TIME) {
                for (size_t c = 0; c < x->text_len; c++)
                    x->text[c] = (char)tolower((unsigned char)x->text[c]);
                for (char *c = x->alt; c && *c; c++)
                    *c = (char)tolower((unsigned char)*c);
            }
        }
        i = (size_t)(end - fmt) + 1;
        lit = i;
    }
    if (literal(&p, fmt + lit, len - lit) < 0)
        goto oom;
    out->pieces = p.v;
    out->npieces = p.n;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* ---- JSON escaping (shared with the runtime renderer) ------------------------------ */

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    if (c < 0xc2 || c > 0xf4 || n < len)
        return 0;
    for (size_t k = 1; k < len; k++)
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] > 0x8f))
        return 0;
    return len;
}

size_t sk_al_json_escape(char *out, const char *p, size_t n)
{
    if (sk_al_json_clean(p, n)) {
        memcpy(out, p, n);
        return n;
    }
    static const char hx[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)p;
    char *o = out;
    size_t i = 0;
    while (i < n) {
        /* 8 plain ASCII bytes at a time (SWAR: no byte < 0x20, '"', '\\', 0x7f
         * or with the high bit set): copied as they are */
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            if (!sk_al_clean8(v))
                break;
            memcpy(o, &v, 8);
            o += 8;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t l = utf8_len(u + i, n - i);
            if (l) {
                memcpy(o, p + i, l);
                o += l;
                i += l;
                continue;
            }
        }
        if (c == '"' || c == '\\') {
            o[0] = '\\';
            o[1] = (char)c;
            o += 2;
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hx[c >> 4];
            o[5] = hx[c & 15];
            o += 6;
        }
        i++;
    }
    return (size_t)(o - out);
}

/* ---- compiling a format into one flat instruction list ----------------------------- */

struct cprog {
    struct sk_arena *a;
    struct sk_al_insn *v;
    size_t n, cap;
    char *lit; /* pending constant text, merged into one LIT */
    size_t llen, lcap;
    bool oom;
};

static void lit_add(struct cprog *c, const char *s, size_t n)
{
    if (c->oom || n == 0)
        return;
    if (c->llen + n > c->lcap) {
        size_t nc = c->lcap ? c->lcap : 64;
        while (nc < c->llen + n)
            nc *= 2;
        char *x = realloc(c->lit, nc);
        if (!x) {
            c->oom = true;
            return;
        }
        c->lit = x;
        c->lcap = nc;
    }
    memcpy(c->lit + c->llen, s, n);
    c->llen += n;
}

/* constant text, JSON-escaped */
static void lit_add_esc(struct cprog *c, const char *s, size_t n)
{
    char *t = malloc(6 * n + 1);
    if (!t) {
        c->oom = true;
        return;
    }
    lit_add(c, t, sk_al_json_escape(t, s, n));
    free(t);
}

static struct sk_al_insn *emit_raw(struct cprog *c)
{
    if (c->oom)
        return NULL;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 16;
        struct sk_al_insn *v = sk_arena_alloc(c->a, nc * sizeof(*v));
        if (!v) {
            c->oom = true;
            return NULL;
        }
        if (c->n)
            memcpy(v, c->v, c->n * sizeof(*v));
        c->v = v;
        c->cap = nc;
    }
    struct sk_al_insn *x = &c->v[c->n++];
    memset(x, 0, sizeof(*x));
    return x;
}

/* The pending constant text from `from` on, as a padded arena string (the
 * renderer copies whole 16-byte blocks); the pending text is then empty. */
static const char *take_lit(struct cprog *c, size_t from, uint32_t *len)
{
    *len = 0;
    if (c->oom || c->llen <= from) {
        c->llen = from;
        return NULL;
    }
    size_t n = c->llen - from;
    char *t = sk_arena_alloc(c->a, n + SK_AL_SLACK);
    if (!t) {
        c->oom = true;
        return NULL;
    }
    memcpy(t, c->lit + from, n);
    memset(t + n, 0, SK_AL_SLACK);
    c->llen = from;
    *len = (uint32_t)n;
    return t;
}

/* An instruction; the pending constant text is written before it (its prefix). */
static struct sk_al_insn *emit(struct cprog *c, int kind)
{
    struct sk_al_insn *x = emit_raw(c);
    if (!x)
        return NULL;
    x->kind = (unsigned char)kind;
    x->pre = take_lit(c, 0, &x->plen);
    return x;
}

/* KEY / VBEGIN with omit_empty: the pending text from kstart on is the key
 * (written after a runtime comma), the text before it the prefix. */
static struct sk_al_insn *emit_key(struct cprog *c, int kind, size_t kstart)
{
    struct sk_al_insn *x = emit_raw(c);
    if (!x)
        return NULL;
    x->kind = (unsigned char)kind;
    x->text = take_lit(c, kstart, &x->len);
    x->pre = take_lit(c, 0, &x->plen);
    return x;
}

static void src_of(struct sk_al_src *s, int op, const char *name)
{
    s->set = 1;
    s->name = name;
    s->nlen = (uint32_t)strlen(name);
    if (op == SK_AL_RESP) {
        s->kind = SK_ALS_RESP_HDR;
    } else if (name[0] == ':') {
        s->kind = strcmp(name, ":method") == 0      ? SK_ALS_METHOD
                  : strcmp(name, ":path") == 0      ? SK_ALS_PATH
                  : strcmp(name, ":authority") == 0 ? SK_ALS_AUTHORITY
                  : strcmp(name, ":scheme") == 0    ? SK_ALS_SCHEME
                                                    : SK_ALS_NONE;
    } else if (strcmp(name, "host") == 0) {
        s->kind = SK_ALS_HOST;
    } else {
        s->kind = SK_ALS_REQ_HDR;
    }
}

/* Operators whose output never needs a JSON escape (digits, addresses, fixed
 * words, flags, the request method: a token, checked by both codecs). */
static bool json_safe(const struct sk_al_piece *p)
{
    switch (p->op) {
    case SK_AL_START_TIME:
    case SK_AL_PROTOCOL:
    case SK_AL_RESPONSE_CODE:
    case SK_AL_RESPONSE_FLAGS:
    case SK_AL_BYTES_RECEIVED:
    case SK_AL_BYTES_SENT:
    case SK_AL_DURATION:
    case SK_AL_RESPONSE_DURATION:
    case SK_AL_UPSTREAM_HOST:
    case SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT:
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS:
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
    case SK_AL_DOWNSTREAM_LOCAL_ADDRESS:
    case SK_AL_DOWNSTREAM_TLS_VERSION:
    case SK_AL_CONNECTION_ID:
    case SK_AL_STREAM_ID:
        return true;
    case SK_AL_REQ:
        return !p->alt && p->text && strcmp(p->text, ":method") == 0;
    }
    return false; /* TRACE_ID too: the bytes of a traceparent header nobody validated */
}

/* Operators that always write something (never "-"). */
static bool never_empty(int op)
{
    switch (op) {
    case SK_AL_START_TIME:
    case SK_AL_RESPONSE_CODE:
    case SK_AL_RESPONSE_FLAGS:
    case SK_AL_RESPONSE_CODE_DETAILS:
    case SK_AL_BYTES_RECEIVED:
    case SK_AL_BYTES_SENT:
    case SK_AL_DURATION:
    case SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT:
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS:
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
    case SK_AL_CONNECTION_ID:
    case SK_AL_STREAM_ID:
        return true;
    }
    return false;
}

static bool is_number(int op)
{
    return op == SK_AL_RESPONSE_CODE || op == SK_AL_BYTES_RECEIVED || op == SK_AL_BYTES_SENT ||
           op == SK_AL_DURATION || op == SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT;
}

static bool has_high_byte(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return true;
    return false;
}

static void field(struct cprog *c, const struct sk_al_piece *p, bool esc)
{
    struct sk_al_insn *x = emit(c, SK_ALI_FIELD);
    if (!x)
        return;
    x->op = (unsigned char)p->op;
    x->esc = esc;
    x->max_len = p->max_len;
    switch (p->op) {
    case SK_AL_REQ:
    case SK_AL_RESP:
        if (p->text)
            src_of(&x->src[0], p->op, p->text);
        if (p->alt)
            src_of(&x->src[1], p->op, p->alt);
        break;
    case SK_AL_TRACE_ID:
        src_of(&x->src[0], SK_AL_REQ, "traceparent");
        break;
    case SK_AL_GRPC_STATUS:
        src_of(&x->src[0], SK_AL_RESP, "grpc-status");
        break;
    case SK_AL_HOSTNAME: {
        /* the host name is looked up once (Envoy does the same), not per line */
        char h[128];
        if (gethostname(h, sizeof(h)) == 0) {
            h[sizeof(h) - 1] = 0;
            x->text = sk_arena_strdup(c->a, h);
            if (!x->text)
                c->oom = true;
            x->len = (uint32_t)strlen(h);
        }
        break;
    }
    }
}

/* Pieces concatenated; adjacent literals merged (as text, before escaping). */
static void pieces(struct cprog *c, const struct sk_al_format *vf, bool json, bool raw)
{
    for (size_t i = 0; i < vf->npieces; i++) {
        const struct sk_al_piece *p = &vf->pieces[i];
        if (p->op == SK_AL_LITERAL) {
            if (json && !raw)
                lit_add_esc(c, p->text, p->text_len);
            else
                lit_add(c, p->text, p->text_len);
        } else {
            field(c, p, json && !raw && !json_safe(p));
        }
    }
}

/* A JSON value escaped piece by piece is the same as the value escaped as a
 * whole unless a valid UTF-8 sequence could span two pieces: two neighbours
 * that may both carry bytes >= 0x80 (operators the escaper sees, literals with
 * such bytes). Those values are rendered raw and escaped as a whole. */
static bool needs_whole_escape(const struct sk_al_format *vf)
{
    bool prev_high = false;
    for (size_t i = 0; i < vf->npieces; i++) {
        const struct sk_al_piece *p = &vf->pieces[i];
        bool high;
        if (p->op == SK_AL_LITERAL) {
            /* adjacent literals are one text */
            size_t j = i;
            high = false;
            while (j < vf->npieces && vf->pieces[j].op == SK_AL_LITERAL) {
                high = high || has_high_byte(vf->pieces[j].text, vf->pieces[j].text_len);
                j++;
            }
            i = j - 1;
        } else {
            high = !json_safe(p);
        }
        if (high && prev_high)
            return true;
        prev_high = high;
    }
    return false;
}

static void json_value(struct cprog *c, const char *key, const struct sk_al_format *vf,
                       bool omit, bool first)
{
    size_t np = vf->npieces;
    bool single_num = np == 1 && is_number(vf->pieces[0].op);
    bool nullable = np > 0;
    for (size_t i = 0; i < np && nullable; i++)
        nullable = vf->pieces[i].op != SK_AL_LITERAL && !never_empty(vf->pieces[i].op);
    bool whole = !single_num && needs_whole_escape(vf);
    size_t kstart = c->llen;
    /* "key": (escaped at translate time) */
    if (!omit && !first)
        lit_add(c, ",", 1);
    lit_add(c, "\"", 1);
    lit_add(c, key, strlen(key));
    lit_add(c, "\":", 2);
    if (!single_num)
        lit_add(c, "\"", 1);
    struct sk_al_insn *b = NULL;
    if (nullable && !omit && !whole && np == 1) {
        /* the common case: one operator that may be empty, no VBEGIN/VEND */
        field(c, &vf->pieces[0], !json_safe(&vf->pieces[0]));
        if (!c->oom)
            c->v[c->n - 1].nullq = 1;
        return;
    }
    if (nullable) {
        b = omit ? emit_key(c, SK_ALI_VBEGIN, kstart) : emit(c, SK_ALI_VBEGIN);
        if (b)
            b->omit = omit;
    } else if (omit) {
        emit_key(c, SK_ALI_KEY, kstart);
    }
    if (whole)
        emit(c, SK_ALI_SBEGIN);
    pieces(c, vf, true, whole);
    if (whole)
        emit(c, SK_ALI_SEND);
    if (nullable) {
        struct sk_al_insn *e = emit(c, SK_ALI_VEND);
        if (e)
            e->omit = omit;
    } else if (!single_num) {
        lit_add(c, "\"", 1);
    }
}

static size_t bound_own(const struct sk_al_insn *in);
/* Bytes an instruction may write without checking for room itself. */
static size_t bound(const struct sk_al_insn *in)
{
    return in->plen + bound_own(in);
}

static size_t bound_own(const struct sk_al_insn *in)
{
    switch (in->kind) {
    case SK_ALI_LIT:
        return 0;
    case SK_ALI_KEY:
        return in->len + 1;
    case SK_ALI_VBEGIN:
        return in->omit ? in->len + 1 : 0;
    case SK_ALI_VEND:
        return 4;
    case SK_ALI_FIELD:
        if (in->op == SK_AL_START_TIME)
            return 48 + 4; /* up to 36 for years past 9999; + null / quote */
        switch (in->op) { /* the operators the renderer writes as numbers */
        case SK_AL_RESPONSE_CODE:
        case SK_AL_BYTES_RECEIVED:
        case SK_AL_BYTES_SENT:
        case SK_AL_DURATION:
        case SK_AL_RESPONSE_DURATION:
        case SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT:
        case SK_AL_CONNECTION_ID:
        case SK_AL_STREAM_ID:
            return 20 + 4;
        }
        return 0; /* strings check for their own room */
    }
    return 0;
}

static struct sk_al_prog *finish(struct cprog *c, size_t extra)
{
    if (c->llen)
        emit(c, SK_ALI_LIT); /* the constant text at the end */
    struct sk_al_prog *pg = c->oom ? NULL : sk_arena_alloc(c->a, sizeof(*pg));
    free(c->lit);
    c->lit = NULL;
    if (!pg)
        return NULL;
    size_t tail = SK_AL_SLACK + extra;
    for (size_t i = c->n; i-- > 0;) {
        c->v[i].tail = tail;
        tail += bound(&c->v[i]);
    }
    pg->v = c->v;
    pg->n = c->n;
    pg->reserve = tail;
    return pg;
}

int sk_al_compile(struct sk_arena *a, struct sk_al_format *f)
{
    struct cprog c = {0};
    c.a = a;
    if (!f->json) {
        pieces(&c, f, false, false);
        size_t n = f->npieces;
        const struct sk_al_piece *last = n ? &f->pieces[n - 1] : NULL;
        bool ends_nl = last && last->op == SK_AL_LITERAL && last->text_len > 0 &&
                       last->text[last->text_len - 1] == '\n';
        struct sk_al_prog *pg = finish(&c, 1);
        if (!pg)
            return -1;
        pg->nl_check = !ends_nl;
        f->prog = pg;
        return 0;
    }
    if (f->njson && (!f->json_keys || !f->json_vals)) {
        free(c.lit);
        return -1;
    }
    lit_add(&c, "{", 1);
    for (size_t k = 0; k < f->njson; k++)
        json_value(&c, f->json_keys[k] ? f->json_keys[k] : "", &f->json_vals[k], f->omit_empty,
                   k == 0);
    lit_add(&c, "}\n", 2);
    struct sk_al_prog *pg = finish(&c, 0);
    if (!pg)
        return -1;
    pg->nl_check = false;
    f->prog = pg;
    return 0;
}
