/* The router: the terminal HTTP filter. Matches a virtual host and route,
 * applies header mutations, picks a cluster and host, and relays the request
 * to an upstream connection and the response back to the downstream codec. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "skiff/chaos.h"
#include "skiff/err.h"
#include "skiff/hoststate.h"
#include "skiff/http1.h"
#include "skiff/lb_hash.h"
#include "skiff/log.h"
#include "skiff/stream.h"
#include "skiff/tls.h"
#include "skiff/tracing.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

/* ---- matching ---------------------------------------------------------- */

static bool ieq(const char *a, size_t al, const char *b, size_t bl)
{
    return al == bl && strncasecmp(a, b, al) == 0;
}

const struct sk_vhost *sk_route_vhost(const struct sk_route_config *rc, const char *host,
                                      size_t len)
{
    if (!rc)
        return NULL;
    /* one virtual host for every domain (the common sidecar config) */
    if (rc->nvhosts == 1 && rc->vhosts[0].ndomains == 1 && rc->vhosts[0].domains[0][0] == '*' &&
        rc->vhosts[0].domains[0][1] == 0)
        return &rc->vhosts[0];
    const struct sk_vhost *star = NULL, *best_suffix = NULL, *best_prefix = NULL;
    size_t best_suffix_len = 0, best_prefix_len = 0;
    /* host without :port, for a second exact try (IPv6 literals keep []) */
    size_t hl = len;
    const char *colon = memchr(host, ':', len);
    if (len && host[0] == '[') {
        const char *rb = memchr(host, ']', len);
        colon = rb && rb + 1 < host + len && rb[1] == ':' ? rb + 1 : NULL;
    }
    if (colon)
        hl = (size_t)(colon - host);
    for (int pass = 0; pass < 2; pass++) {
        size_t L = pass == 0 ? len : hl;
        if (pass == 1 && hl == len)
            break;
        for (size_t i = 0; i < rc->nvhosts; i++) {
            const struct sk_vhost *vh = &rc->vhosts[i];
            for (size_t d = 0; d < vh->ndomains; d++) {
                const char *dom = vh->domains[d];
                size_t dl = strlen(dom);
                if (dl == 1 && dom[0] == '*') {
                    if (!star)
                        star = vh;
                    continue;
                }
                if (dom[0] == '*') { /* "*.suffix" or "*suffix" */
                    size_t sl = dl - 1;
                    if (L > sl && strncasecmp(host + L - sl, dom + 1, sl) == 0 &&
                        sl > best_suffix_len) {
                        best_suffix = vh;
                        best_suffix_len = sl;
                    }
                    continue;
                }
                if (dom[dl - 1] == '*') { /* "prefix.*" */
                    size_t pl = dl - 1;
                    if (L > pl && strncasecmp(host, dom, pl) == 0 && pl > best_prefix_len) {
                        best_prefix = vh;
                        best_prefix_len = pl;
                    }
                    continue;
                }
                if (ieq(host, L, dom, dl))
                    return vh;
            }
        }
    }
    if (best_suffix)
        return best_suffix;
    if (best_prefix)
        return best_prefix;
    return star;
}

static bool str_match(int kind, bool icase, const char *v, size_t vl, const char *p, size_t pl)
{
    switch (kind) {
    case SK_STR_EXACT:
        return vl == pl && (icase ? strncasecmp(v, p, vl) == 0 : memcmp(v, p, vl) == 0);
    case SK_STR_PREFIX:
        return vl >= pl && (icase ? strncasecmp(v, p, pl) == 0 : memcmp(v, p, pl) == 0);
    case SK_STR_SUFFIX:
        return vl >= pl &&
               (icase ? strncasecmp(v + vl - pl, p, pl) == 0 : memcmp(v + vl - pl, p, pl) == 0);
    case SK_STR_CONTAINS:
        if (pl == 0)
            return true;
        for (size_t i = 0; i + pl <= vl; i++)
            if (icase ? strncasecmp(v + i, p, pl) == 0 : memcmp(v + i, p, pl) == 0)
                return true;
        return false;
    }
    return false;
}

static bool header_lookup(const struct sk_stream *st, const char *name, size_t nl,
                          const char **v, size_t *vl)
{
    if (nl > 0 && name[0] == ':') {
        if (nl == 7 && memcmp(name, ":method", 7) == 0) {
            *v = st->method, *vl = st->method_len;
            return true;
        }
        if (nl == 5 && memcmp(name, ":path", 5) == 0) {
            *v = st->path, *vl = st->path_len;
            return true;
        }
        if (nl == 10 && memcmp(name, ":authority", 10) == 0) {
            *v = st->authority, *vl = st->authority_len;
            return st->authority != NULL;
        }
        if (nl == 7 && memcmp(name, ":scheme", 7) == 0) {
            *v = st->scheme, *vl = strlen(st->scheme);
            return true;
        }
        return false;
    }
    struct sk_hdr *h = sk_hdrs_get(&st->req, name, nl);
    if (!h)
        return false;
    *v = h->value;
    *vl = h->vlen;
    return true;
}

static bool headers_match(const struct sk_route_match *m, const struct sk_stream *st)
{
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct sk_header_match *hm = &m->headers[i];
        const char *v = NULL;
        size_t vl = 0;
        bool present = header_lookup(st, hm->name, hm->name_len, &v, &vl);
        bool ok;
        if (hm->kind == SK_STR_PRESENT)
            ok = present == hm->present;
        else
            ok = present && str_match(hm->kind, hm->ignore_case, v, vl, hm->value, hm->value_len);
        if (hm->invert)
            ok = !ok;
        if (!ok)
            return false;
    }
    return true;
}

bool sk_stream_headers_match(const struct sk_stream *st, const struct sk_header_match *hm,
                             size_t n)
{
    struct sk_route_match m = {.headers = (struct sk_header_match *)hm, .nheaders = n};
    return headers_match(&m, st);
}

const struct sk_route *sk_route_match(const struct sk_vhost *vh, const struct sk_stream *st)
{
    size_t plen = st->path_len;
    const char *q = memchr(st->path, '?', st->path_len);
    size_t path_only = q ? (size_t)(q - st->path) : plen;
    for (size_t i = 0; i < vh->nroutes; i++) {
        const struct sk_route *r = &vh->routes[i];
        const struct sk_route_match *m = &r->match;
        bool icase = !m->case_sensitive;
        if (m->path_kind == SK_PATH_PREFIX) {
            if (!str_match(SK_STR_PREFIX, icase, st->path, plen, m->path, m->path_len))
                continue;
        } else {
            if (!str_match(SK_STR_EXACT, icase, st->path, path_only, m->path, m->path_len))
                continue;
        }
        if (!headers_match(m, st))
            continue;
        return r;
    }
    return NULL;
}

/* ---- header mutation --------------------------------------------------- */

static void apply_hdr_ops(struct sk_hdrs *h, struct sk_arena *a, const struct sk_hdr_ops *ops)
{
    if (!ops || (!ops->nremove && !ops->nadd))
        return;
    for (size_t i = 0; i < ops->nremove; i++)
        sk_hdrs_del(h, ops->remove[i], strlen(ops->remove[i]));
    for (size_t i = 0; i < ops->nadd; i++) {
        const struct sk_hdr_op *op = &ops->add[i];
        if (op->value_len == 0 && !op->keep_empty_value)
            continue;
        struct sk_hdr *cur = sk_hdrs_get(h, op->key, op->key_len);
        switch (op->action) {
        case SK_HDR_ADD_IF_ABSENT:
            if (cur)
                continue;
            break;
        case SK_HDR_OVERWRITE_IF_EXISTS:
            if (!cur)
                continue;
            sk_hdrs_del(h, op->key, op->key_len);
            break;
        case SK_HDR_OVERWRITE_IF_EXISTS_OR_ADD:
            sk_hdrs_del(h, op->key, op->key_len);
            break;
        default:
            break;
        }
        sk_hdrs_add(h, a, op->key, op->key_len, op->value, op->value_len);
    }
}

/* route config, vhost, route, weighted cluster: least specific first so the
 * most specific level wins overwrites */
static void apply_all_ops(struct sk_stream *st, struct sk_hdrs *h, bool request)
{
    const struct sk_route_config *rc = st->hcm->routes;
    const struct sk_vhost *vh = st->vhost;
    const struct sk_route *r = st->route;
    if (request) {
        apply_hdr_ops(h, &st->arena, rc ? &rc->hdrs_req : NULL);
        apply_hdr_ops(h, &st->arena, vh ? &vh->hdrs_req : NULL);
        apply_hdr_ops(h, &st->arena, r ? &r->hdrs_req : NULL);
        apply_hdr_ops(h, &st->arena, st->cw_req);
    } else {
        apply_hdr_ops(h, &st->arena, rc ? &rc->hdrs_resp : NULL);
        apply_hdr_ops(h, &st->arena, vh ? &vh->hdrs_resp : NULL);
        apply_hdr_ops(h, &st->arena, r ? &r->hdrs_resp : NULL);
        apply_hdr_ops(h, &st->arena, st->cw_resp);
    }
}

/* hop-by-hop and framing headers never forwarded as-is */
static inline bool hop_by_hop(const char *n, uint32_t l)
{
    /* most names have none of the lengths below: one test */
    if (l > 17 || !((1u << l) & (1u << 2 | 1u << 7 | 1u << 10 | 1u << 14 | 1u << 16 | 1u << 17)))
        return false;
    switch (l) {
    case 2:
        return memcmp(n, "te", 2) == 0;
    case 7:
        return memcmp(n, "upgrade", 7) == 0 || memcmp(n, "trailer", 7) == 0;
    case 10:
        return memcmp(n, "connection", 10) == 0 || memcmp(n, "keep-alive", 10) == 0;
    case 14:
        return memcmp(n, "content-length", 14) == 0;
    case 16:
        return memcmp(n, "proxy-connection", 16) == 0;
    case 17:
        return memcmp(n, "transfer-encoding", 17) == 0;
    }
    return false;
}

/* Names listed in Connection: are hop-by-hop too (RFC 9110 7.6.1). */
static bool named_in_connection(const struct sk_hdr *c, const char *n, uint32_t l)
{
    if (!c)
        return false;
    char tok[64];
    if (l >= sizeof(tok))
        return false;
    memcpy(tok, n, l);
    tok[l] = 0;
    if (strcmp(tok, "close") == 0 || strcmp(tok, "keep-alive") == 0 || strcmp(tok, "upgrade") == 0)
        return false;
    return sk_h1_has_token(c->value, c->vlen, tok);
}

/* ---- upstream callbacks -------------------------------------------------- */

static void up_connected(void *ctx);
static void up_response(void *ctx, const struct sk_h1_msg *m);
static void up_data(void *ctx, const char *p, size_t n);
static void up_trailers(void *ctx, const struct sk_h1_header *h, size_t n);
static void up_complete(void *ctx);
static void up_error(void *ctx, int cause, const char *detail);
static void up_drained(void *ctx);
static void pace_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

static const struct sk_upconn_cbs up_cbs = {
    up_connected, up_response, up_data, up_trailers, up_complete, up_error, up_drained,
};

static int up_write(struct sk_stream *st, const void *p, size_t n)
{
    if (!st->up)
        return SK_ERR_CLOSED;
    return st->up->vt->send_raw(st->up, p, n);
}

static int encode_request_head(struct sk_stream *st)
{
    const struct sk_route *r = st->route;
    struct sk_hdrs h = {0};
    struct sk_req_head rh;
    memset(&rh, 0, sizeof(rh));
    rh.method = st->method;
    rh.method_len = st->method_len;
    rh.scheme = st->scheme;
    /* path with prefix_rewrite */
    const char *path = st->path;
    size_t pl = st->path_len;
    const char *rw = r->prefix_rewrite;
    if (rw) {
        size_t rl = strlen(rw);
        const char *tail;
        size_t tl;
        if (r->match.path_kind == SK_PATH_PREFIX) {
            tail = path + r->match.path_len;
            tl = pl - r->match.path_len;
        } else {
            const char *q = memchr(path, '?', pl);
            tail = q ? q : path + pl;
            tl = q ? pl - (size_t)(q - path) : 0;
        }
        char *np = sk_arena_alloc(&st->arena, rl + tl + 1);
        if (!np)
            return SK_ERR_NOMEM;
        memcpy(np, rw, rl);
        memcpy(np + rl, tail, tl);
        rh.path = np;
        rh.path_len = (uint32_t)(rl + tl);
    } else {
        rh.path = path;
        rh.path_len = (uint32_t)pl;
    }
    if (r->host_rewrite_literal) {
        rh.authority = r->host_rewrite_literal;
        rh.authority_len = (uint32_t)strlen(r->host_rewrite_literal);
    } else {
        rh.authority = st->authority;
        rh.authority_len = st->authority_len;
    }
    /* copy end-to-end headers into a mutable list: one pass that also finds
     * Connection, TE, X-Forwarded-For and X-Forwarded-Proto */
    const struct sk_hdr *conn_hdr = NULL, *te = NULL;
    int xff_i = -1;
    bool has_xfp = false;
    h.cap = st->req.n + 4;
    h.v = sk_arena_alloc_nz(&st->arena, sizeof(*h.v) * h.cap);
    if (!h.v)
        return SK_ERR_NOMEM;
    for (uint32_t i = 0; i < st->req.n; i++) {
        const struct sk_hdr *x = &st->req.v[i];
        switch (x->nlen) {
        case 2:
            if (memcmp(x->name, "te", 2) == 0) {
                if (!te)
                    te = x;
                continue;
            }
            break;
        case 4:
            if (memcmp(x->name, "host", 4) == 0)
                continue;
            break;
        case 10:
            if (memcmp(x->name, "connection", 10) == 0) {
                if (!conn_hdr)
                    conn_hdr = x;
                continue;
            }
            break;
        case 15:
            if (xff_i < 0 && memcmp(x->name, "x-forwarded-for", 15) == 0)
                xff_i = (int)h.n;
            break;
        case 17:
            if (memcmp(x->name, "x-forwarded-proto", 17) == 0)
                has_xfp = true;
            break;
        }
        if (hop_by_hop(x->name, x->nlen) || x->name[0] == ':')
            continue;
        h.v[h.n++] = *x;
    }
    if (conn_hdr) {
        /* names listed in Connection: are hop-by-hop too; rare, so a second pass */
        uint32_t o = 0;
        xff_i = -1;
        has_xfp = false;
        for (uint32_t i = 0; i < h.n; i++) {
            const struct sk_hdr *x = &h.v[i];
            if (named_in_connection(conn_hdr, x->name, x->nlen))
                continue;
            if (xff_i < 0 && x->nlen == 15 && memcmp(x->name, "x-forwarded-for", 15) == 0)
                xff_i = (int)o;
            if (x->nlen == 17 && memcmp(x->name, "x-forwarded-proto", 17) == 0)
                has_xfp = true;
            h.v[o++] = *x;
        }
        h.n = o;
    }
    /* te: trailers is end-to-end for gRPC over h2 upstreams */
    if (te && te->vlen == 8 && strncasecmp(te->value, "trailers", 8) == 0)
        sk_hdrs_push(&h, &st->arena, &(struct sk_hdr){"te", 2, "trailers", 8});
    /* x-forwarded-for: append the peer (st->peer_ip lives as long as the stream) */
    size_t pil = strlen(st->peer_ip);
    if (xff_i >= 0) {
        struct sk_hdr *xff = &h.v[xff_i];
        char *nv = sk_arena_alloc_nz(&st->arena, xff->vlen + pil + 3);
        if (nv) {
            memcpy(nv, xff->value, xff->vlen);
            memcpy(nv + xff->vlen, ", ", 2);
            memcpy(nv + xff->vlen + 2, st->peer_ip, pil + 1);
            xff->value = nv;
            xff->vlen = (uint32_t)(xff->vlen + 2 + pil);
        }
    } else {
        sk_hdrs_push(&h, &st->arena,
                     &(struct sk_hdr){"x-forwarded-for", 15, st->peer_ip, (uint32_t)pil});
    }
    if (!has_xfp)
        sk_hdrs_push(&h, &st->arena,
                     &(struct sk_hdr){"x-forwarded-proto", 17, st->scheme,
                                      (uint32_t)strlen(st->scheme)});
    apply_all_ops(st, &h, true);
    if (r->include_attempt_count) {
        char ac[12];
        size_t al = sk_fmt_u64(ac, st->attempt ? st->attempt : 1);
        sk_hdrs_del(&h, "x-envoy-attempt-count", 21);
        sk_hdrs_add(&h, &st->arena, "x-envoy-attempt-count", 21, ac, al);
    }
    rh.hdrs = &h;
    if (st->upgrade) {
        struct sk_hdr *u = sk_hdrs_get(&st->req, "upgrade", 7);
        rh.upgrade = u ? u->value : "websocket";
        rh.upgrade_len = u ? u->vlen : 9;
    }
    if (st->req_body_kind == SK_H1_BODY_CHUNKED) {
        rh.body_kind = SK_H1_BODY_CHUNKED;
    } else if (st->req_body_kind == SK_H1_BODY_LENGTH) {
        rh.body_kind = SK_H1_BODY_LENGTH;
        rh.content_length = st->req_content_length;
    } else {
        rh.body_kind = SK_H1_BODY_NONE;
        rh.send_zero_cl = (st->req_flags & SK_H1_F_HAS_CL) != 0;
    }
    st->up_body_kind = rh.body_kind;
    st->up_sent_head = true;
    return st->up->vt->send_head(st->up, &rh);
}

/* ---- attempts, retries, circuit breakers ---------------------------------- */

static bool dispatch(struct sk_stream *st);
static void write_request_end(struct sk_stream *st);

static void stream_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_stream *st = t->data;
    sk_stat_add(&st->w->stats, SK_ST_upstream_rq_timeout, 1);
    if (st->crt && st->crt->cs)
        atomic_fetch_add_explicit(&st->crt->cs->upstream_rq_timeout, 1, memory_order_relaxed);
    if (st->up) {
        sk_up_abort(st->up);
        st->up = NULL;
    }
    ev_timer_stop(loop, &st->retry_timer);
    ev_timer_stop(loop, &st->try_timer);
    st->retry_wait = false;
    char detail[64];
    snprintf(detail, sizeof(detail), "no complete response within %llu ms",
             (unsigned long long)st->eff_timeout_ms);
    sk_stream_local_reply(st, SK_TERM_UPSTREAM_TIMEOUT, 0, detail);
}

/* Give back what the current attempt holds on its host. */
static void release_host(struct sk_stream *st)
{
    struct sk_host *h = st->host;
    if (!h)
        return;
    if (h->active_rq)
        h->active_rq--;
    if (h->hs)
        atomic_fetch_sub_explicit(&h->hs->active_rq, 1, memory_order_relaxed);
    sk_host_unref(h);
    st->host = NULL;
}

static void release_pending(struct sk_stream *st)
{
    if (st->holds_pending_slot && st->crt && st->crt->cs)
        atomic_fetch_sub(&st->crt->cs->rq_pending, 1);
    st->holds_pending_slot = false;
}

/* Outlier detection + EWMA + per-host counters for one attempt's outcome. */
static void record_outcome(struct sk_stream *st, int outcome)
{
    struct sk_host *h = st->host;
    if (!h || !h->hs)
        return;
    atomic_fetch_add_explicit(&h->hs->rq_total, 1, memory_order_relaxed);
    if (outcome != SK_OUT_SUCCESS)
        atomic_fetch_add_explicit(&h->hs->rq_errors, 1, memory_order_relaxed);
    const struct sk_cluster *cfg = st->crt ? st->crt->cfg : NULL;
    if (!cfg || !(cfg->outlier || cfg->lb_policy == SK_LB_PEAK_EWMA || cfg->health_checks))
        return; /* nothing below needs the time */
    int64_t now = sk_now_ms();
    sk_outlier_record(h->hs, cfg->outlier, outcome, st->crt->nhosts, now);
    if (cfg->lb_policy == SK_LB_PEAK_EWMA && st->try_start_ms) {
        int64_t dt = now - st->try_start_ms;
        sk_host_ewma_sample(h, (uint64_t)(dt > 0 ? dt : 0) * 1000, now);
    }
}

static int grpc_status_of(const struct sk_h1_msg *m)
{
    for (size_t i = 0; m && i < m->nhdrs; i++)
        if (sk_h1_name_eq(m->hdrs[i].name, m->hdrs[i].name_len, "grpc-status")) {
            int v = 0;
            for (size_t k = 0; k < m->hdrs[i].value_len && k < 4; k++) {
                char c = m->hdrs[i].value[k];
                if (c < '0' || c > '9')
                    return -1;
                v = v * 10 + (c - '0');
            }
            return v;
        }
    return -1;
}

/* Is this failure retriable under the route's policy? `status` > 0 for an
 * upstream response, else `cause` says what went wrong locally. */
static bool policy_allows(const struct sk_retry_policy *rp, int cause, int status, int grpc)
{
    uint32_t on = rp->retry_on;
    if (status > 0) {
        if ((on & SK_RETRY_ON_5XX) && status >= 500 && status <= 599)
            return true;
        if ((on & SK_RETRY_ON_GATEWAY_ERROR) && status >= 502 && status <= 504)
            return true;
        if ((on & SK_RETRY_ON_RETRIABLE_4XX) && status == 409)
            return true;
        if ((on & SK_RETRY_ON_ENVOY_RATELIMITED) && status == 429)
            return false; /* only with x-envoy-ratelimited, which we never add */
        if (on & SK_RETRY_ON_RETRIABLE_STATUS_CODES)
            for (size_t i = 0; i < rp->nretriable_status_codes; i++)
                if ((int)rp->retriable_status_codes[i] == status)
                    return true;
        if (grpc >= 0) {
            if ((grpc == 1 && (on & SK_RETRY_ON_GRPC_CANCELLED)) ||
                (grpc == 4 && (on & SK_RETRY_ON_GRPC_DEADLINE_EXCEEDED)) ||
                (grpc == 8 && (on & SK_RETRY_ON_GRPC_RESOURCE_EXHAUSTED)) ||
                (grpc == 13 && (on & SK_RETRY_ON_GRPC_INTERNAL)) ||
                (grpc == 14 && (on & SK_RETRY_ON_GRPC_UNAVAILABLE)))
                return true;
        }
        return false;
    }
    switch (cause) {
    case SK_TERM_CONNECT_FAIL:
        return on & (SK_RETRY_ON_CONNECT_FAILURE | SK_RETRY_ON_5XX | SK_RETRY_ON_GATEWAY_ERROR |
                     SK_RETRY_ON_RESET_BEFORE_REQUEST);
    case SK_TERM_UPSTREAM_RESET:
    case SK_TERM_UPSTREAM_PROTO:
        return on & (SK_RETRY_ON_RESET | SK_RETRY_ON_5XX | SK_RETRY_ON_GATEWAY_ERROR);
    case SK_TERM_UPSTREAM_TIMEOUT: /* per-try timeout */
        return on & (SK_RETRY_ON_5XX | SK_RETRY_ON_GATEWAY_ERROR | SK_RETRY_ON_RESET);
    }
    return false;
}

/* Retry budget / max_retries circuit breaker. Takes a slot on success. */
static bool take_retry_slot(struct sk_stream *st)
{
    if (st->holds_retry_slot)
        return true;
    struct sk_cluster_state *cs = st->crt ? st->crt->cs : NULL;
    const struct sk_cluster *cfg = st->crt ? st->crt->cfg : NULL;
    if (!cs || !cfg)
        return true;
    int64_t limit = cfg->cb.max_retries;
    if (cfg->cb.retry_budget_percent > 0) {
        int64_t act = atomic_load(&cs->rq_active);
        int64_t b = (int64_t)(cfg->cb.retry_budget_percent * (double)act / 100.0);
        int64_t minc = cfg->cb.retry_budget_min_concurrency ? cfg->cb.retry_budget_min_concurrency
                                                             : 3;
        limit = b > minc ? b : minc;
    }
    if (atomic_fetch_add(&cs->retries_active, 1) >= limit) {
        atomic_fetch_sub(&cs->retries_active, 1);
        atomic_fetch_add(&cs->upstream_rq_retry_overflow, 1);
        return false;
    }
    st->holds_retry_slot = true;
    return true;
}

static void retry_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_stream *st = t->data;
    st->retry_wait = false;
    dispatch(st);
}

/* The current attempt failed (no response bytes went downstream). Retry
 * after a jittered backoff if the policy, the budget and the buffered body
 * allow; otherwise answer with the failure. `status` > 0: the upstream
 * answered `status` and the caller forwards that response itself when we
 * return false. */
static bool maybe_retry(struct sk_stream *st, int cause, int status, int grpc)
{
    const struct sk_retry_policy *rp = st->route ? st->route->retry : NULL;
    if (!rp || st->retries_left == 0 || st->resp_started || st->upgrade)
        return false;
    if (!policy_allows(rp, cause, status, grpc))
        return false;
    /* the body must still be whole in our buffer to send it again */
    if (st->req_body_kind != SK_H1_BODY_NONE && !st->body_copy_ok)
        return false;
    if (!take_retry_slot(st))
        return false;
    st->retries_left--;
    if (st->crt && st->crt->cs)
        atomic_fetch_add(&st->crt->cs->upstream_rq_retry, 1);
    /* fully jittered exponential backoff (Envoy) */
    uint64_t base = rp->base_interval_ms ? rp->base_interval_ms : 25;
    uint64_t cap = rp->max_interval_ms ? rp->max_interval_ms : base * 10;
    uint64_t span = base << (st->attempt > 10 ? 10 : st->attempt - 1);
    if (span > cap)
        span = cap;
    uint64_t wait = span ? sk_worker_rand(st->w) % (span + 1) : 0;
    sk_debug("conn %llu stream %u: attempt %u failed (%s%s%d); retrying in %llu ms",
             (unsigned long long)st->conn_id, st->stream_id, st->attempt,
             status > 0 ? "status " : sk_term_flag(cause), status > 0 ? "" : " ",
             status > 0 ? status : 0, (unsigned long long)wait);
    st->retry_wait = true;
    ev_timer_set(&st->retry_timer, (double)wait / 1000.0, 0.);
    ev_timer_start(st->w->loop, &st->retry_timer);
    return true;
}

/* A failed attempt without any upstream response: record, then retry or
 * answer locally. */
static void attempt_failed(struct sk_stream *st, int cause, const char *detail)
{
    ev_timer_stop(st->w->loop, &st->try_timer);
    release_pending(st);
    record_outcome(st, SK_OUT_LOCAL);
    release_host(st);
    if (maybe_retry(st, cause, 0, -1))
        return;
    if (st->attempt > 1 && st->cause == SK_TERM_NONE) {
        char d[160];
        snprintf(d, sizeof(d), "%s (after %u attempts)", detail ? detail : sk_term_reason(cause),
                 st->attempt);
        sk_stream_local_reply(st, cause, 0, d);
        return;
    }
    sk_stream_local_reply(st, cause, 0, detail);
}

static void try_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_stream *st = t->data;
    if (st->up) {
        sk_up_abort(st->up);
        st->up = NULL;
    }
    if (st->crt && st->crt->cs)
        atomic_fetch_add(&st->crt->cs->upstream_rq_per_try_timeout, 1);
    attempt_failed(st, SK_TERM_UPSTREAM_TIMEOUT, "per-try timeout");
}

static void write_body_copy(struct sk_stream *st)
{
    size_t n = sk_buf_used(&st->body_copy);
    if (!n || !st->up)
        return;
    sk_up_send_data(st->up, sk_buf_rptr(&st->body_copy), n);
}

static int upstream_proto(const struct sk_stream *st)
{
    const struct sk_cluster *cfg = st->crt ? st->crt->cfg : st->cluster;
    if (!cfg)
        return SK_UP_HTTP1;
    if (cfg->upstream_proto == SK_UP_USE_DOWNSTREAM)
        /* an upgrade (WebSocket, also from h2 extended CONNECT) is an h1 Upgrade upstream */
        return st->downstream_h2 && !st->upgrade ? SK_UP_HTTP2 : SK_UP_HTTP1;
    return cfg->upstream_proto;
}

/* Pick a host and a connection for the next attempt and send what we have
 * of the request. Returns false when a local reply was sent instead. */
static bool dispatch(struct sk_stream *st)
{
    struct sk_worker *w = st->w;
    struct sk_cluster_rt *crt = st->crt;
    const struct sk_cluster *cfg = crt->cfg;
    struct sk_cluster_state *cs = crt->cs;
    st->attempt++;
    const struct sk_retry_policy *rp = st->route->retry;
    bool other = rp && rp->retry_other_host && st->ntried;
    struct sk_host *h = sk_lb_choose_ex(crt, st->hash, other ? st->tried : NULL,
                                        other ? st->ntried : 0);
    if (!h) {
        sk_stat_add(&w->stats, SK_ST_rq_no_healthy_upstream, 1);
        sk_stream_local_reply(st, SK_TERM_NO_HEALTHY, 0, st->cluster->name);
        return false;
    }
    if (st->ntried < sizeof(st->tried) / sizeof(st->tried[0]))
        st->tried[st->ntried++] = h;
    size_t hl = strnlen(h->addr_str, sizeof(st->upstream_host) - 1); /* addr_str: sized to fit */
    memcpy(st->upstream_host, h->addr_str, hl);
    st->upstream_host[hl] = 0;
    sk_host_ref(h);
    h->active_rq++;
    if (h->hs)
        atomic_fetch_add_explicit(&h->hs->active_rq, 1, memory_order_relaxed);
    st->host = h;
    st->try_start_ms = (cfg && cfg->lb_policy == SK_LB_PEAK_EWMA) ? sk_now_ms() : 0;
    /* runtime chaos, upstream leg: this attempt fails as if the host answered 5xx or reset */
    int chaos = sk_chaos_upstream_attempt(st);
    if (chaos) {
        record_outcome(st, chaos < 0 ? SK_OUT_LOCAL : chaos >= 502 && chaos <= 504 ? SK_OUT_GATEWAY
                                                                                  : SK_OUT_5XX);
        release_host(st);
        if (!maybe_retry(st, SK_TERM_UPSTREAM_RESET, chaos > 0 ? chaos : 0, -1))
            sk_stream_local_reply(st, chaos > 0 ? SK_TERM_FAULT_ABORT : SK_TERM_UPSTREAM_RESET,
                                  chaos > 0 ? chaos : 0, "chaos: upstream-leg fault injected");
        return false;
    }
    /* a new connection is needed: connection and pending-request breakers */
    bool cx_reserved = false;
    /* h2 multiplexes onto open connections: the h2 client applies the
     * max_connections breaker itself, only when it opens a connection */
    bool h2 = upstream_proto(st) == SK_UP_HTTP2;
    if (!h->idle && cs && cfg) {
        /* reserve before checking: two workers must not both take the last slot */
        cx_reserved = !h2;
        if (!h2 && atomic_fetch_add(&cs->cx_active, 1) >= (int64_t)cfg->cb.max_connections) {
            atomic_fetch_sub(&cs->cx_active, 1);
            cx_reserved = false;
            atomic_fetch_add(&cs->upstream_cx_overflow, 1);
            release_host(st);
            sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "max_connections reached");
            return false;
        }
        if (atomic_fetch_add(&cs->rq_pending, 1) >= (int64_t)cfg->cb.max_pending_requests) {
            atomic_fetch_sub(&cs->rq_pending, 1);
            if (cx_reserved)
                atomic_fetch_sub(&cs->cx_active, 1);
            cx_reserved = false;
            atomic_fetch_add(&cs->upstream_rq_pending_overflow, 1);
            release_host(st);
            sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "max_pending_requests reached");
            return false;
        }
        st->holds_pending_slot = true;
    }
    int err = 0;
    st->up = sk_up_acquire(h, &up_cbs, st, st->req_flags, upstream_proto(st), &err);
    /* the connection (if one was opened) now counts itself */
    if (cx_reserved)
        atomic_fetch_sub(&cs->cx_active, 1);
    if (!st->up) {
        if (cs)
            atomic_fetch_add(&cs->upstream_cx_connect_fail, 1);
        attempt_failed(st, err ? err : SK_TERM_CONNECT_FAIL, h->addr_str);
        return false;
    }
    if (!st->up->connecting)
        release_pending(st);
    sk_stat_add(&w->stats, SK_ST_upstream_rq_total, 1);
    if (cs)
        atomic_fetch_add_explicit(&cs->upstream_rq_total, 1, memory_order_relaxed);
    if (encode_request_head(st) < 0) {
        sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "request head too large");
        return false;
    }
    write_body_copy(st);
    if (!st->retries_left && st->body_copy.cap) {
        /* held only for a filter, not for retries: no need to keep copying */
        sk_buf_free(&st->body_copy);
        st->body_copy.cap = 0;
        st->body_copy_ok = false;
    }
    if (st->req_end)
        write_request_end(st);
    if (rp && rp->per_try_timeout_ms && rp->per_try_timeout_ms != SK_DUR_NONE) {
        ev_timer_set(&st->try_timer, (double)rp->per_try_timeout_ms / 1000.0, 0.);
        ev_timer_start(w->loop, &st->try_timer);
    }
    return true;
}

/* Route hash_policy -> 64-bit key for RING_HASH / MAGLEV (0 = none). */
static uint64_t route_hash(const struct sk_stream *st)
{
    const struct sk_route *r = st->route;
    uint64_t hv = 0;
    for (size_t i = 0; i < r->nhash_policy; i++) {
        const struct sk_hash_policy *hp = &r->hash_policy[i];
        const char *v = NULL;
        size_t vl = 0;
        if (hp->kind == SK_HASH_SOURCE_IP) {
            v = st->peer_ip;
            vl = strlen(st->peer_ip);
        } else if (hp->kind == SK_HASH_HEADER && hp->name) {
            header_lookup(st, hp->name, strlen(hp->name), &v, &vl);
        } else if (hp->kind == SK_HASH_COOKIE && hp->name) {
            struct sk_hdr *c = sk_hdrs_get(&st->req, "cookie", 6);
            size_t nl = strlen(hp->name);
            for (const char *p = c ? c->value : NULL, *e = c ? c->value + c->vlen : NULL;
                 p && p < e;) {
                while (p < e && (*p == ' ' || *p == ';'))
                    p++;
                const char *eq = memchr(p, '=', (size_t)(e - p));
                const char *semi = memchr(p, ';', (size_t)(e - p));
                if (!semi)
                    semi = e;
                if (eq && eq < semi && (size_t)(eq - p) == nl && memcmp(p, hp->name, nl) == 0) {
                    v = eq + 1;
                    vl = (size_t)(semi - v);
                    break;
                }
                p = semi;
            }
        } else if (hp->kind == SK_HASH_QUERY_PARAM && hp->name) {
            const char *q = memchr(st->path, '?', st->path_len);
            size_t nl = strlen(hp->name);
            const char *e = st->path + st->path_len;
            for (const char *p = q ? q + 1 : NULL; p && p < e;) {
                const char *amp = memchr(p, '&', (size_t)(e - p));
                if (!amp)
                    amp = e;
                if ((size_t)(amp - p) > nl && p[nl] == '=' && memcmp(p, hp->name, nl) == 0) {
                    v = p + nl + 1;
                    vl = (size_t)(amp - v);
                    break;
                }
                p = amp + 1;
            }
        }
        if (!v)
            continue;
        /* xxHash64 of the value (Envoy), combined with rotate + xor */
        uint64_t x = sk_hash64(v, vl);
        hv = ((hv << 1) | (hv >> 63)) ^ x;
        if (hp->terminal)
            break;
    }
    return hv;
}

/* First attempt: resolve the cluster runtime, take the request slot, set
 * up retry state, dispatch. */
static bool start_upstream(struct sk_stream *st)
{
    struct sk_worker *w = st->w;
    if (!st->cluster) {
        sk_stream_local_reply(st, SK_TERM_NO_CLUSTER, 0, NULL);
        return false;
    }
    st->crt = sk_worker_cluster_rt(w, st->snap, st->cluster);
    if (!st->crt) {
        sk_stream_local_reply(st, SK_TERM_NO_CLUSTER, 0, st->cluster->name);
        return false;
    }
    st->crt->active_rq++;
    const struct sk_cluster *cfg = st->crt->cfg;
    struct sk_cluster_state *cs = st->crt->cs;
    if (st->upgrade && upstream_proto(st) == SK_UP_HTTP2) {
        sk_stream_local_reply(st, SK_TERM_UPGRADE_REFUSED, 0,
                              "WebSocket to an HTTP/2-only cluster is not supported");
        return false;
    }
    if (cs && cfg) {
        if (atomic_fetch_add(&cs->rq_active, 1) >= (int64_t)cfg->cb.max_requests) {
            atomic_fetch_sub(&cs->rq_active, 1);
            atomic_fetch_add(&cs->upstream_rq_pending_overflow, 1);
            sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "max_requests reached");
            return false;
        }
        st->holds_rq_slot = true;
    }
    ev_init(&st->retry_timer, retry_timer_cb);
    st->retry_timer.data = st;
    ev_init(&st->try_timer, try_timer_cb);
    st->try_timer.data = st;
    const struct sk_retry_policy *rp = st->route->retry;
    if (rp && rp->num_retries && !st->upgrade) {
        st->retries_left = rp->num_retries;
        if (st->req_body_kind != SK_H1_BODY_NONE && !st->body_copy.cap) {
            uint64_t lim = st->route->per_request_buffer_limit_bytes
                               ? st->route->per_request_buffer_limit_bytes
                               : (1u << 20);
            sk_buf_init(&st->body_copy, (size_t)lim);
            st->body_copy_ok = true;
        }
    }
    if (cfg && (cfg->lb_policy == SK_LB_RING_HASH || cfg->lb_policy == SK_LB_MAGLEV) &&
        st->route->nhash_policy)
        st->hash = route_hash(st);
    return dispatch(st);
}

static void route_act(struct sk_stream *st);

/* The routed cluster (weighted: picked now), known to the filters before
 * the router acts (fault upstream_cluster). */
static void pick_cluster(struct sk_stream *st)
{
    const struct sk_route *r = st->route;
    if (r->action == SK_ROUTE_WEIGHTED && r->nweighted) {
        uint32_t pick = r->total_weight ? sk_worker_rand(st->w) % r->total_weight : 0;
        const struct sk_cluster_weight *cw = &r->weighted[0];
        for (size_t i = 0; i < r->nweighted; i++) {
            if (pick < r->weighted[i].weight) {
                cw = &r->weighted[i];
                break;
            }
            pick -= r->weighted[i].weight;
        }
        st->cluster = cw->cluster;
        st->cw_req = &cw->hdrs_req;
        st->cw_resp = &cw->hdrs_resp;
    } else if (r->action != SK_ROUTE_DIRECT) {
        st->cluster = r->cluster;
    }
}

/* The HCM's filters with the route's overrides applied. */
static void setup_filters(struct sk_stream *st)
{
    const struct sk_hcm *hcm = st->hcm;
    st->nfilters = 0;
    st->next_filter = 0;
    for (size_t i = 0; i < hcm->nfilters && st->nfilters < SK_MAX_HTTP_FILTERS; i++) {
        const struct sk_http_filter_cfg *f = &hcm->filters[i];
        const void *cfg = f->config;
        bool disabled = f->disabled;
        for (size_t k = 0; st->route && k < st->route->nfilter_overrides; k++) {
            const struct sk_filter_override *o = &st->route->filter_overrides[k];
            if (f->name && o->name && strcmp(f->name, o->name) == 0) {
                disabled = o->disabled;
                if (o->config)
                    cfg = o->config;
                break;
            }
        }
        if (disabled)
            continue;
        const char *tn = f->type_url ? strrchr(f->type_url, '/') : NULL;
        const struct sk_http_filter_vt *vt = sk_filter_lookup(tn ? tn + 1 : (f->type_url ? f->type_url : ""));
        if (!vt || !cfg)
            continue;
        st->filters[st->nfilters++] = (struct sk_filter_slot){vt, cfg, NULL};
    }
    sk_chaos_attach(st); /* runtime chaos rules (filters/chaos.c), at the head of the chain */
}

static void run_filters(struct sk_stream *st)
{
    while (st->next_filter < st->nfilters) {
        struct sk_filter_slot *fs = &st->filters[st->next_filter++];
        if (!fs->vt->on_request)
            continue;
        if (fs->vt->on_request(st, fs) == SK_FILTER_STOP)
            return; /* answered, or resumes later via sk_stream_continue */
        if (st->resp_started || st->state == SK_ST_S_DONE)
            return;
    }
    st->filters_done = true;
    route_act(st);
}

void sk_stream_continue(struct sk_stream *st)
{
    if (st->resp_started || st->state == SK_ST_S_DONE || st->filters_done)
        return;
    run_filters(st);
}

/* x-forwarded-client-cert per the HCM's forward_client_cert_details (Envoy's
 * five modes). Done before routing so routes can match on the identity. */
static void apply_xfcc(struct sk_stream *st)
{
    int mode = st->hcm->forward_client_cert;
    if (mode == 4) /* ALWAYS_FORWARD_ONLY */
        return;
    if (mode < 1 || mode > 4) { /* SANITIZE: the client certificate does not matter */
        sk_hdrs_del(&st->req, "x-forwarded-client-cert", 23);
        return;
    }
    bool mtls = false;
    char el[1024];
    size_t el_len = 0;
    if (st->tls) {
        char raw[1024];
        size_t rl = sk_tls_xfcc(st->tls, raw, sizeof(raw));
        mtls = rl > 0;
        size_t rn = mode == 1 ? 0 : rl; /* FORWARD_ONLY: only whether there is one */
        /* keep By, Hash, and URI when set_current_client_cert_details.uri
         * (a walk over the ';'-separated elements: no strtok, whose hidden
         * state is shared by the worker threads) */
        for (size_t i = 0; i < rn;) {
            const char *seg = raw + i;
            const char *semi = memchr(seg, ';', rn - i);
            size_t sl = semi ? (size_t)(semi - seg) : rn - i;
            i += sl + 1;
            if (sl == 0)
                continue;
            bool keep = (sl >= 3 && memcmp(seg, "By=", 3) == 0) ||
                        (sl >= 5 && memcmp(seg, "Hash=", 5) == 0) ||
                        (st->hcm->xfcc_uri && sl >= 4 && memcmp(seg, "URI=", 4) == 0);
            if (keep && el_len + sl + 2 < sizeof(el)) {
                if (el_len)
                    el[el_len++] = ';';
                memcpy(el + el_len, seg, sl);
                el_len += sl;
            }
        }
        el[el_len] = 0;
    }
    struct sk_hdr *cur = sk_hdrs_get(&st->req, "x-forwarded-client-cert", 23);
    switch (mode) {
    case 4: /* ALWAYS_FORWARD_ONLY */
        return;
    case 1: /* FORWARD_ONLY */
        if (!mtls)
            sk_hdrs_del(&st->req, "x-forwarded-client-cert", 23);
        return;
    case 2: /* APPEND_FORWARD */
        if (!mtls) {
            sk_hdrs_del(&st->req, "x-forwarded-client-cert", 23);
            return;
        }
        if (cur) {
            char *v = sk_arena_alloc(&st->arena, cur->vlen + el_len + 2);
            if (!v)
                return;
            memcpy(v, cur->value, cur->vlen);
            v[cur->vlen] = ',';
            memcpy(v + cur->vlen + 1, el, el_len);
            cur->value = v;
            cur->vlen += (uint32_t)el_len + 1;
            return;
        }
        sk_hdrs_add(&st->req, &st->arena, "x-forwarded-client-cert", 23, el, el_len);
        return;
    case 3: /* SANITIZE_SET */
        sk_hdrs_del(&st->req, "x-forwarded-client-cert", 23);
        if (mtls)
            sk_hdrs_add(&st->req, &st->arena, "x-forwarded-client-cert", 23, el, el_len);
        return;
    default: /* SANITIZE */
        if (cur)
            sk_hdrs_del(&st->req, "x-forwarded-client-cert", 23);
        return;
    }
}

/* ---- stream timeouts (HCM stream_idle_timeout, request_timeout, max_stream_duration) ----
 *
 * Envoy semantics: each fires a 408 local reply while no response head has
 * gone out, and resets the stream once one has (sk_stream_local_reply does
 * the choice). The idle timer is not re-armed on every byte: activity only
 * stamps idle_last, and the callback re-arms itself for the time left. */

static inline void touch(struct sk_stream *st)
{
    st->idle_last = ev_now(st->w->loop);
}

/* Drop the upstream attempt and every timer of the stream (it is ending). */
static void stream_stop_all(struct sk_stream *st)
{
    if (st->up) {
        sk_up_abort(st->up);
        st->up = NULL;
    }
    struct ev_loop *loop = st->w->loop;
    ev_timer *tm[] = {&st->timeout,    &st->retry_timer, &st->try_timer, &st->pace_timer,
                      &st->idle_timer, &st->req_timer,   &st->dur_timer};
    for (size_t i = 0; i < sizeof(tm) / sizeof(tm[0]); i++)
        ev_timer_stop(loop, tm[i]);
    st->retry_wait = false;
}

static void stream_timed_out(struct sk_stream *st, int cause, const char *detail)
{
    stream_stop_all(st);
    if (st->resp_started && st->cause == SK_TERM_NONE)
        st->cause = cause; /* the reset below carries this cause to the log */
    sk_stream_local_reply(st, cause, 0, detail);
}

static bool stream_finished(const struct sk_stream *st)
{
    return st->state == SK_ST_S_DONE && st->req_end;
}

static void idle_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct sk_stream *st = t->data;
    if (stream_finished(st) || st->idle_s <= 0)
        return;
    double left = st->idle_last + st->idle_s - ev_now(loop);
    if (left > 0.0005) {
        ev_timer_set(t, left, 0.);
        ev_timer_start(loop, t);
        return;
    }
    sk_stat_add(&st->w->stats, SK_ST_downstream_rq_idle_timeout, 1);
    char d[64];
    snprintf(d, sizeof(d), "no activity for %.0f ms", st->idle_s * 1000.0);
    stream_timed_out(st, SK_TERM_STREAM_IDLE, d);
}

static void req_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct sk_stream *st = t->data;
    if (st->req_end)
        return;
    sk_stat_add(&st->w->stats, SK_ST_downstream_rq_timeout, 1);
    char d[64];
    snprintf(d, sizeof(d), "request not received within %llu ms",
             (unsigned long long)st->hcm->request_timeout_ms);
    stream_timed_out(st, SK_TERM_REQUEST_TIMEOUT, d);
}

static void dur_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct sk_stream *st = t->data;
    if (stream_finished(st))
        return;
    sk_stat_add(&st->w->stats, SK_ST_downstream_rq_max_duration_reached, 1);
    stream_timed_out(st, SK_TERM_DURATION_TIMEOUT, NULL);
}

static void set_idle(struct sk_stream *st, uint64_t ms)
{
    st->idle_s = (ms == SK_DUR_NONE || ms == 0) ? 0 : (double)ms / 1000.0;
    ev_timer_stop(st->w->loop, &st->idle_timer);
    if (st->idle_s > 0) {
        touch(st);
        ev_timer_set(&st->idle_timer, st->idle_s, 0.);
        ev_timer_start(st->w->loop, &st->idle_timer);
    }
}

/* max_stream_duration counts from the request's arrival (t_start) */
static void set_duration(struct sk_stream *st, uint64_t ms)
{
    ev_timer_stop(st->w->loop, &st->dur_timer);
    if (ms == SK_DUR_NONE || ms == 0)
        return;
    double left = st->t_start + (double)ms / 1000.0 - ev_now(st->w->loop);
    ev_timer_set(&st->dur_timer, left > 0.0005 ? left : 0.0005, 0.);
    ev_timer_start(st->w->loop, &st->dur_timer);
}

static void stream_timers_start(struct sk_stream *st)
{
    ev_init(&st->idle_timer, idle_timer_cb);
    st->idle_timer.data = st;
    ev_init(&st->req_timer, req_timer_cb);
    st->req_timer.data = st;
    ev_init(&st->dur_timer, dur_timer_cb);
    st->dur_timer.data = st;
    const struct sk_hcm *h = st->hcm;
    set_idle(st, h->stream_idle_timeout_ms);
    uint64_t rq = h->request_timeout_ms;
    /* an upgrade / CONNECT request never "ends": it turns into a tunnel */
    bool tunnel = (st->req_flags & (SK_H1_F_UPGRADE | SK_H1_F_CONNECT)) != 0;
    if (!st->req_end && !tunnel && rq != SK_DUR_NONE && rq > 0) {
        ev_timer_set(&st->req_timer, (double)rq / 1000.0, 0.);
        ev_timer_start(st->w->loop, &st->req_timer);
    }
    set_duration(st, h->max_stream_duration_ms);
}

/* The route is known: its idle_timeout and max_stream_duration override the HCM's. */
static void stream_timers_route(struct sk_stream *st)
{
    const struct sk_route *r = st->route;
    if (r->idle_timeout_set)
        set_idle(st, r->idle_timeout_ms);
    if (r->max_stream_duration_ms != SK_DUR_NONE)
        set_duration(st, r->max_stream_duration_ms);
}

/* The low `digits` hex digits of v, most significant first ("%0*x"). */
static char *hex_digits(char *o, uint32_t v, int digits)
{
    for (int k = (digits - 1) * 4; k >= 0; k -= 4)
        *o++ = "0123456789abcdef"[(v >> k) & 15];
    return o;
}

void sk_stream_headers(struct sk_stream *st)
{
    struct sk_worker *w = st->w;
    sk_stat_add(&w->stats, SK_ST_downstream_rq_total, 1);
    ev_init(&st->timeout, stream_timeout_cb);
    st->timeout.data = st;
    ev_init(&st->retry_timer, retry_timer_cb);
    st->retry_timer.data = st;
    ev_init(&st->try_timer, try_timer_cb);
    st->try_timer.data = st;
    ev_init(&st->pace_timer, pace_timer_cb);
    st->pace_timer.data = st;
    st->state = SK_ST_S_HEADERS;
    stream_timers_start(st);
    st->resp_head_req = (st->req_flags & SK_H1_F_HEAD) != 0;

    if (st->req_flags & SK_H1_F_CONNECT) {
        if (!st->hcm->allow_connect) {
            sk_stream_local_reply(st, SK_TERM_UPGRADE_REFUSED, 0, "CONNECT");
            return;
        }
    }
    if (st->req_flags & SK_H1_F_UPGRADE) {
        struct sk_hdr *u = sk_hdrs_get(&st->req, "upgrade", 7);
        bool ws = u && ieq(u->value, u->vlen, "websocket", 9);
        if (!ws || !st->hcm->allow_websocket) {
            sk_stream_local_reply(st, SK_TERM_UPGRADE_REFUSED, 0, u ? "upgrade" : NULL);
            return;
        }
        st->upgrade = true;
    }
    apply_xfcc(st);
    if (st->hcm->generate_request_id && !sk_hdrs_get(&st->req, "x-request-id", 12)) {
        /* UUIDv4, on the request itself: upstream, filters and the access log see it */
        uint32_t r4[4];
        for (int i = 0; i < 4; i++)
            r4[i] = sk_worker_rand(st->w);
        r4[1] = (r4[1] & 0xffff0fffu) | 0x00004000u;
        r4[2] = (r4[2] & 0x3fffffffu) | 0x80000000u;
        /* "%08x-%04x-%04x-%04x-%04x%08x" of r4[0], r4[1] >> 16, r4[1] & 0xffff,
         * r4[2] >> 16, r4[2] & 0xffff, r4[3], without snprintf */
        char *id = sk_arena_alloc_nz(&st->arena, 37);
        if (id) {
            char *o = hex_digits(id, r4[0], 8);
            *o++ = '-';
            o = hex_digits(o, r4[1] >> 16, 4);
            *o++ = '-';
            o = hex_digits(o, r4[1] & 0xffff, 4);
            *o++ = '-';
            o = hex_digits(o, r4[2] >> 16, 4);
            *o++ = '-';
            o = hex_digits(o, r4[2] & 0xffff, 4);
            o = hex_digits(o, r4[3], 8);
            *o = 0;
            sk_hdrs_push(&st->req, &st->arena, &(struct sk_hdr){"x-request-id", 12, id, 36});
        }
    }
    sk_tracing_request(st); /* traceparent / B3: new span, or a new trace */
    const struct sk_route_config *rc = st->hcm->routes;
    const struct sk_vhost *vh =
        sk_route_vhost(rc, st->authority ? st->authority : "", st->authority_len);
    const struct sk_route *r = vh ? sk_route_match(vh, st) : NULL;
    st->vhost = vh; /* also for a no-route answer: it counts in the vhost's stats */
    if (!r) {
        sk_stat_add(&w->stats, SK_ST_rq_no_route, 1);
        sk_stream_local_reply(st, SK_TERM_NO_ROUTE, 0, NULL);
        return;
    }
    st->route = r;
    st->vhost = vh;
    stream_timers_route(st);
    pick_cluster(st);
    setup_filters(st);
    run_filters(st);
}

/* After the filters: act on the route. */
static void route_act(struct sk_stream *st)
{
    struct sk_worker *w = st->w;
    const struct sk_route *r = st->route;
    if (r->action == SK_ROUTE_DIRECT) {
        sk_stat_add(&w->stats, SK_ST_rq_direct_response, 1);
        st->cause = SK_TERM_DIRECT_RESPONSE;
        st->status = (int)r->direct_status;
        struct sk_hdrs h = {0};
        if (r->direct_body_len)
            sk_hdrs_add(&h, &st->arena, "content-type", 12, "text/plain", 10);
        apply_all_ops(st, &h, false);
        st->resp_started = true;
        st->resp_hdrs = h;
        st->bytes_tx += st->resp_head_req ? 0 : r->direct_body_len;
        st->ops->send_head(st, st->status, &h, (int64_t)r->direct_body_len, st->resp_head_req);
        if (r->direct_body_len && !st->resp_head_req)
            st->ops->send_data(st, r->direct_body, r->direct_body_len);
        st->ops->send_end(st);
        return;
    }
    st->state = SK_ST_S_UPSTREAM;
    if (!start_upstream(st))
        return;
    if (st->req_end)
        sk_stream_end(st, NULL);
}

static int frame_data(struct sk_stream *st, const char *p, size_t n)
{
    return sk_up_send_data(st->up, p, n) < 0 ? -1 : 0;
}

void sk_stream_data(struct sk_stream *st, const char *p, size_t n)
{
    st->bytes_rx += n;
    touch(st);
    if (st->state == SK_ST_S_HEADERS && st->route && !st->filters_done) {
        /* a filter holds the request (e.g. a delay): keep the body */
        if (!st->body_copy.cap) {
            uint64_t lim = st->route->per_request_buffer_limit_bytes
                               ? st->route->per_request_buffer_limit_bytes
                               : (1u << 20);
            sk_buf_init(&st->body_copy, (size_t)lim);
            st->body_copy_ok = true;
        }
        if (!st->body_copy_ok || sk_buf_append(&st->body_copy, p, n) < 0) {
            st->body_copy_ok = false;
            sk_stream_local_reply(st, SK_TERM_OVERFLOW, 413,
                                  "request body over the buffer limit while held by a filter");
        }
        return;
    }
    if (st->state == SK_ST_S_RESPONDING && st->up) {
        /* full duplex (gRPC bidi / client streaming): the response started
         * before the request ended; keep relaying the body (no retry now) */
        if (frame_data(st, p, n) < 0) {
            sk_up_abort(st->up);
            st->up = NULL;
            if (st->cause == SK_TERM_NONE)
                st->cause = SK_TERM_OVERFLOW;
            st->ops->reset(st);
            return;
        }
        if (sk_up_congested(st->up))
            st->ops->pause_read(st, true);
        return;
    }
    if (st->state != SK_ST_S_UPSTREAM)
        return; /* already answered locally: drop the body */
    if (st->body_copy_ok && sk_buf_append(&st->body_copy, p, n) < 0) {
        /* over the retry buffer limit: no more retries possible */
        st->body_copy_ok = false;
        sk_buf_free(&st->body_copy);
        if (!st->up) {
            /* waiting to retry, and the body can no longer be replayed */
            ev_timer_stop(st->w->loop, &st->retry_timer);
            st->retry_wait = false;
            sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0,
                                  "request body over the retry buffer limit");
            return;
        }
    }
    if (!st->up)
        return; /* between attempts: the copy holds it */
    if (frame_data(st, p, n) < 0)
        goto overflow;
    if (sk_up_congested(st->up))
        st->ops->pause_read(st, true);
    return;
overflow:
    sk_up_abort(st->up);
    st->up = NULL;
    sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "request buffer limit");
}

/* Terminate the request body upstream (h1 chunked: last chunk + trailers;
 * h2: END_STREAM or trailers). */
static void write_request_end(struct sk_stream *st)
{
    if (!st->up)
        return;
    st->up->vt->send_end(st->up, &st->req_trailers);
}

/* grpc-timeout: 1-8 digits + unit H M S m u n (gRPC over HTTP/2 spec).
 * SK_DUR_NONE when absent or malformed. */
static uint64_t grpc_timeout_ms(const struct sk_stream *st)
{
    struct sk_hdr *h = sk_hdrs_get(&st->req, "grpc-timeout", 12);
    if (!h || h->vlen < 2 || h->vlen > 9)
        return SK_DUR_NONE;
    uint64_t v = 0;
    for (uint32_t i = 0; i + 1 < h->vlen; i++) {
        char c = h->value[i];
        if (c < '0' || c > '9')
            return SK_DUR_NONE;
        v = v * 10 + (uint64_t)(c - '0');
    }
    switch (h->value[h->vlen - 1]) {
    case 'H': return v * 3600000;
    case 'M': return v * 60000;
    case 'S': return v * 1000;
    case 'm': return v;
    case 'u': return (v + 999) / 1000;
    case 'n': return (v + 999999) / 1000000;
    }
    return SK_DUR_NONE;
}

void sk_stream_end(struct sk_stream *st, const struct sk_hdrs *trailers)
{
    bool was_end = st->req_end;
    st->req_end = true;
    ev_timer_stop(st->w->loop, &st->req_timer);
    touch(st);
    if (trailers && trailers != &st->req_trailers)
        st->req_trailers = *trailers; /* entries live in the stream arena */
    if (st->state == SK_ST_S_RESPONDING && st->up && !was_end) {
        write_request_end(st); /* full duplex: the request ends after the response began */
        return;
    }
    if (st->state != SK_ST_S_UPSTREAM)
        return;
    if (st->up && !was_end)
        write_request_end(st);
    uint64_t tmo = st->route ? st->route->timeout_ms : SK_DUR_NONE;
    if (st->route && st->route->grpc_timeout_header) {
        /* gRPC deadline from the client (grpc-timeout), capped by the route */
        uint64_t g = grpc_timeout_ms(st);
        if (g != SK_DUR_NONE) {
            if (st->route->grpc_timeout_header_max_ms && g > st->route->grpc_timeout_header_max_ms)
                g = st->route->grpc_timeout_header_max_ms;
            tmo = g ? g : 1;
        }
    }
    if (!st->upgrade && tmo != SK_DUR_NONE && tmo > 0 && !ev_is_active(&st->timeout)) {
        st->eff_timeout_ms = tmo;
        ev_timer_set(&st->timeout, (double)tmo / 1000.0, 0.);
        ev_timer_start(st->w->loop, &st->timeout);
    }
}

void sk_stream_abort(struct sk_stream *st, int cause)
{
    if (st->cause == SK_TERM_NONE)
        st->cause = cause;
    stream_stop_all(st);
    st->state = SK_ST_S_DONE;
}

void sk_stream_downstream_drained(struct sk_stream *st)
{
    touch(st);
    if (st->up && !sk_buf_used(&st->resp_hold))
        sk_up_pause_read(st->up, false);
}

void sk_stream_tunnel_data(struct sk_stream *st, const char *p, size_t n)
{
    touch(st);
    if (!st->up)
        return;
    if (up_write(st, p, n) < 0) {
        sk_up_abort(st->up);
        st->up = NULL;
        st->ops->reset(st);
        return;
    }
    if (sk_up_congested(st->up))
        st->ops->pause_read(st, true);
}

void sk_stream_tunnel_eof(struct sk_stream *st)
{
    if (st->up)
        st->up->vt->shutdown_write(st->up);
}

/* ---- upstream events ------------------------------------------------------- */

static void up_connected(void *ctx)
{
    release_pending(ctx);
}

static void up_drained(void *ctx)
{
    struct sk_stream *st = ctx;
    touch(st);
    if (!st->req_end || st->state == SK_ST_S_TUNNEL)
        st->ops->pause_read(st, false);
}

static void count_status(struct sk_stream *st, int status, bool upstream)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        return;
    sk_stat_add(&st->w->stats,
                (upstream ? SK_ST_upstream_rq_1xx : SK_ST_downstream_rq_1xx) + cls - 1, 1);
    if (upstream && cls >= 2 && st->crt && st->crt->cs) {
        struct sk_cluster_state *cs = st->crt->cs;
        _Atomic uint64_t *c = cls == 2   ? &cs->upstream_rq_2xx
                              : cls == 3 ? &cs->upstream_rq_3xx
                              : cls == 4 ? &cs->upstream_rq_4xx
                                         : &cs->upstream_rq_5xx;
        atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
    }
}

static void up_response(void *ctx, const struct sk_h1_msg *m)
{
    struct sk_stream *st = ctx;
    touch(st);
    if (st->up && st->up->toxic)
        st->toxic = true; /* flag TX in the access log */
    count_status(st, m->status, true);
    if (m->status >= 100 && m->status < 200 && m->status != 101) {
        if (m->status == 100 && (st->req_flags & SK_H1_F_EXPECT_CONTINUE) && st->ops->send_1xx)
            st->ops->send_1xx(st, 100);
        return;
    }
    ev_timer_stop(st->w->loop, &st->try_timer);
    /* outcome of this attempt, for outlier detection */
    int outcome = SK_OUT_SUCCESS;
    if (m->status >= 500)
        outcome = (m->status >= 502 && m->status <= 504) ? SK_OUT_GATEWAY : SK_OUT_5XX;
    record_outcome(st, outcome);
    if (st->route && st->route->retry && st->retries_left) {
        int grpc = grpc_status_of(m);
        /* a retriable answer: drop this response, try again */
        if (policy_allows(st->route->retry, 0, m->status, grpc)) {
            struct sk_up *u = st->up;
            st->up = NULL;
            if (maybe_retry(st, 0, m->status, grpc)) {
                if (u)
                    sk_up_abort(u);
                release_host(st);
                return;
            }
            st->up = u;
        }
    }
    if (st->holds_retry_slot && st->attempt > 1 && m->status < 500 && st->crt && st->crt->cs)
        atomic_fetch_add(&st->crt->cs->upstream_rq_retry_success, 1);
    /* the route timeout runs until the response is complete (Envoy); only
     * an upgrade/tunnel ends it here */
    struct sk_hdrs h = {0};
    bool upgraded = (m->status == 101 && st->upgrade) ||
                    ((st->req_flags & SK_H1_F_CONNECT) && m->status >= 200 && m->status < 300);
    /* add (lower-cased copies), then drop the hop-by-hop ones; an h1
     * response's fields are copied in one piece */
    if (m->fields) {
        if (!sk_hdrs_add_h1(&h, &st->arena, m->fields, m->fields_len, m->hdrs, m->nhdrs))
            h.n = 0;
    } else {
        for (size_t i = 0; i < m->nhdrs; i++) {
            const struct sk_h1_header *x = &m->hdrs[i];
            if (sk_hdrs_add(&h, &st->arena, x->name, x->name_len, x->value, x->value_len) < 0)
                break;
        }
    }
    {
        uint32_t o = 0;
        for (uint32_t i = 0; i < h.n; i++) {
            const struct sk_hdr *lx = &h.v[i];
            /* keep content-length on HEAD responses and 304s: it describes the entity */
            if (hop_by_hop(lx->name, lx->nlen) &&
                !(lx->nlen == 14 && (st->resp_head_req || m->status == 304)))
                continue;
            h.v[o++] = *lx;
        }
        h.n = o;
    }
    apply_all_ops(st, &h, false);
    if (upgraded && m->status == 101) {
        for (size_t i = 0; i < m->nhdrs; i++)
            if (sk_h1_name_eq(m->hdrs[i].name, m->hdrs[i].name_len, "upgrade")) {
                sk_hdrs_add(&h, &st->arena, "upgrade", 7, m->hdrs[i].value, m->hdrs[i].value_len);
                break;
            }
        sk_hdrs_add(&h, &st->arena, "connection", 10, "upgrade", 7);
    }
    st->status = m->status;
    st->resp_started = true;
    st->resp_hdrs = h;
    st->t_first_byte = ev_now(st->w->loop);
    st->state = SK_ST_S_RESPONDING;
    /* the body copy is no longer needed: no retry after response bytes */
    sk_buf_free(&st->body_copy);
    st->body_copy_ok = false;
    int64_t cl = -1;
    bool end = false;
    if (upgraded)
        cl = -1;
    else if (m->body_kind == SK_H1_BODY_LENGTH)
        cl = (int64_t)m->content_length;
    else if (m->body_kind == SK_H1_BODY_NONE) {
        cl = 0;
        end = true;
    }
    if (st->resp_head_req)
        end = true;
    st->ops->send_head(st, m->status, &h, cl, end);
    if (upgraded) {
        ev_timer_stop(st->w->loop, &st->timeout);
        st->state = SK_ST_S_TUNNEL;
        st->up->vt->set_tunnel(st->up);
        st->ops->tunnel(st);
    }
}

/* ---- response pacing (a filter's on_response_data, e.g. the fault rate limit) ---- */

static bool paced(const struct sk_stream *st)
{
    for (uint8_t i = 0; i < st->nfilters; i++)
        if (st->filters[i].vt->on_response_data)
            return true;
    return false;
}

/* How many of n body bytes may go downstream now (the smallest allowance). */
static size_t pace_allow(struct sk_stream *st, size_t n)
{
    st->pace_wait_ms = 0;
    for (uint8_t i = 0; i < st->nfilters && n; i++) {
        struct sk_filter_slot *fs = &st->filters[i];
        if (fs->vt->on_response_data) {
            size_t a = fs->vt->on_response_data(st, fs, n);
            if (a < n)
                n = a;
        }
    }
    return n;
}

static void pace_arm(struct sk_stream *st)
{
    if (ev_is_active(&st->pace_timer))
        return;
    uint32_t ms = st->pace_wait_ms ? st->pace_wait_ms : 10;
    ev_timer_set(&st->pace_timer, (double)ms / 1000.0, 0.);
    ev_timer_start(st->w->loop, &st->pace_timer);
}

/* Body bytes while pacing: send what is allowed, hold the rest (in order)
 * and stop reading upstream until the hold drains. */
static void pace_data(struct sk_stream *st, const char *p, size_t n)
{
    if (!sk_buf_used(&st->resp_hold)) {
        size_t a = pace_allow(st, n);
        if (a) {
            st->bytes_tx += a;
            st->ops->send_data(st, p, a);
        }
        p += a;
        n -= a;
        if (!n) {
            if (st->up && st->ops->congested(st))
                sk_up_pause_read(st->up, true);
            return;
        }
    }
    if (!st->resp_hold.cap)
        sk_buf_init(&st->resp_hold, 8u << 20);
    if (sk_buf_append(&st->resp_hold, p, n) < 0) {
        if (st->up) {
            sk_up_abort(st->up);
            st->up = NULL;
        }
        sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "paced response buffer limit");
        return;
    }
    if (st->up)
        sk_up_pause_read(st->up, true);
    pace_arm(st);
}

static void pace_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_stream *st = t->data;
    size_t held = sk_buf_used(&st->resp_hold);
    size_t a = held ? pace_allow(st, held) : 0;
    if (a) {
        st->bytes_tx += a;
        st->ops->send_data(st, sk_buf_rptr(&st->resp_hold), a);
        sk_buf_consume(&st->resp_hold, a);
    }
    if (sk_buf_used(&st->resp_hold)) {
        pace_arm(st);
        return;
    }
    if (st->pace_trailers) {
        st->pace_trailers = false;
        st->ops->send_trailers(st, &st->pace_trl);
    }
    if (st->pace_end) {
        st->pace_end = false;
        st->state = SK_ST_S_DONE;
        st->ops->send_end(st); /* last: the codec may finish the stream */
        return;
    }
    if (st->up && !st->ops->congested(st))
        sk_up_pause_read(st->up, false);
}

static void up_data(void *ctx, const char *p, size_t n)
{
    struct sk_stream *st = ctx;
    touch(st);
    if (st->state == SK_ST_S_RESPONDING && paced(st)) {
        pace_data(st, p, n);
        return;
    }
    st->bytes_tx += n;
    st->ops->send_data(st, p, n);
    if (st->up && st->ops->congested(st))
        sk_up_pause_read(st->up, true);
}

static void up_trailers(void *ctx, const struct sk_h1_header *hh, size_t n)
{
    struct sk_stream *st = ctx;
    touch(st);
    struct sk_hdrs t = {0};
    for (size_t i = 0; i < n; i++)
        sk_hdrs_add(&t, &st->arena, hh[i].name, hh[i].name_len, hh[i].value, hh[i].value_len);
    if (sk_buf_used(&st->resp_hold)) { /* after the paced body */
        st->pace_trl = t;
        st->pace_trailers = true;
        return;
    }
    st->ops->send_trailers(st, &t);
}

static void up_complete(void *ctx)
{
    struct sk_stream *st = ctx;
    struct sk_up *u = st->up;
    st->up = NULL;
    if (u) {
        if (st->req_end)
            sk_up_release(u);
        else
            sk_up_abort(u); /* request still streaming: connection unusable */
    }
    ev_timer_stop(st->w->loop, &st->timeout);
    if (sk_buf_used(&st->resp_hold)) { /* the pace timer ends it */
        st->pace_end = true;
        return;
    }
    st->state = SK_ST_S_DONE;
    st->ops->send_end(st);
}

static void up_error(void *ctx, int cause, const char *detail)
{
    struct sk_stream *st = ctx;
    struct sk_up *u = st->up;
    if (u && u->toxic)
        st->toxic = true; /* flag TX in the access log */
    st->up = NULL;
    bool reused = u && u->reused && !u->got_bytes;
    if (u)
        sk_up_abort(u);
    if (st->state == SK_ST_S_TUNNEL) {
        if (cause == SK_TERM_NONE) {
            /* the upstream closed the tunnel cleanly: flush and end (h2: END_STREAM) */
            st->state = SK_ST_S_DONE;
            st->ops->send_end(st);
        } else {
            st->ops->reset(st);
        }
        return;
    }
    sk_stat_add(&st->w->stats, SK_ST_upstream_rq_reset, 1);
    /* A pooled keep-alive connection the upstream had already closed: the
     * request never reached it. Retry once on a fresh connection when the
     * request has no body still streaming (nothing is lost). This is not a
     * policy retry and does not count against the host. */
    if (reused && !st->up_retried && !st->resp_started && st->req_end &&
        st->req_body_kind == SK_H1_BODY_NONE && st->host) {
        st->up_retried = true;
        int err = 0;
        st->up = sk_up_acquire(st->host, &up_cbs, st, st->req_flags, upstream_proto(st), &err);
        if (st->up && encode_request_head(st) == 0) {
            sk_debug("conn %llu: retrying on a fresh upstream connection after a stale one",
                     (unsigned long long)st->conn_id);
            return;
        }
        if (st->up) {
            sk_up_abort(st->up);
            st->up = NULL;
        }
    }
    if (st->resp_started) {
        ev_timer_stop(st->w->loop, &st->try_timer);
        record_outcome(st, SK_OUT_LOCAL);
        if (st->cause == SK_TERM_NONE)
            st->cause = cause;
        st->ops->reset(st);
        return;
    }
    attempt_failed(st, cause, detail);
}
