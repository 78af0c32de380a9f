/* Envoy access-log format strings -> pieces (config time, so a bad format is
 * a config error with its position, never a runtime surprise). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
