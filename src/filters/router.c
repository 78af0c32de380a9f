/* The router: the terminal HTTP filter. Matches a virtual host and route,
 * applies header mutations, picks a cluster and host, and relays the request
 * to an upstream connection and the response back to the downstream codec. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "skiff/err.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/stream.h"
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
    if (!ops)
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
static bool hop_by_hop(const char *n, uint32_t l)
{
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
static bool named_in_connection(const struct sk_hdrs *h, const char *n, uint32_t l)
{
    struct sk_hdr *c = sk_hdrs_get(h, "connection", 10);
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

static const struct sk_upconn_cbs up_cbs = {
    up_connected, up_response, up_data, up_trailers, up_complete, up_error, up_drained,
};

static int up_write(struct sk_stream *st, const void *p, size_t n)
{
    if (!st->up)
        return SK_ERR_CLOSED;
    return sk_upconn_write(st->up, p, n);
}

static int encode_request_head(struct sk_stream *st)
{
    struct sk_buf *b = &st->up->out;
    const struct sk_route *r = st->route;
    struct sk_hdrs h = {0};
    /* path with prefix_rewrite */
    const char *path = st->path;
    size_t pl = st->path_len;
    const char *rw = r->prefix_rewrite;
    int rc = 0;
    rc |= sk_buf_append(b, st->method, st->method_len);
    rc |= sk_buf_append(b, " ", 1);
    if (rw && r->match.path_kind == SK_PATH_PREFIX) {
        size_t mlen = r->match.path_len;
        rc |= sk_buf_append(b, rw, strlen(rw));
        rc |= sk_buf_append(b, path + mlen, pl - mlen);
    } else if (rw) {
        const char *q = memchr(path, '?', pl);
        rc |= sk_buf_append(b, rw, strlen(rw));
        if (q)
            rc |= sk_buf_append(b, q, pl - (size_t)(q - path));
    } else {
        rc |= sk_buf_append(b, path, pl);
    }
    rc |= sk_buf_append(b, " HTTP/1.1\r\n", 11);

    /* host */
    if (r->host_rewrite_literal) {
        rc |= sk_buf_appendf(b, "host: %s\r\n", r->host_rewrite_literal);
    } else if (st->authority) {
        rc |= sk_buf_append(b, "host: ", 6);
        rc |= sk_buf_append(b, st->authority, st->authority_len);
        rc |= sk_buf_append(b, "\r\n", 2);
    }
    /* copy end-to-end headers into a mutable list */
    for (uint32_t i = 0; i < st->req.n; i++) {
        const struct sk_hdr *x = &st->req.v[i];
        if (x->nlen == 4 && memcmp(x->name, "host", 4) == 0)
            continue;
        if (hop_by_hop(x->name, x->nlen) || named_in_connection(&st->req, x->name, x->nlen))
            continue;
        if (x->name[0] == ':')
            continue;
        if (sk_hdrs_push(&h, &st->arena, x) < 0)
            return SK_ERR_NOMEM;
    }
    /* x-forwarded-for: append the peer */
    struct sk_hdr *xff = sk_hdrs_get(&h, "x-forwarded-for", 15);
    if (xff) {
        char *nv = sk_arena_alloc(&st->arena, xff->vlen + strlen(st->peer_ip) + 3);
        if (nv) {
            int n = sprintf(nv, "%.*s, %s", (int)xff->vlen, xff->value, st->peer_ip);
            xff->value = nv;
            xff->vlen = (uint32_t)n;
        }
    } else {
        sk_hdrs_add(&h, &st->arena, "x-forwarded-for", 15, st->peer_ip, strlen(st->peer_ip));
    }
    if (!sk_hdrs_get(&h, "x-forwarded-proto", 17))
        sk_hdrs_add(&h, &st->arena, "x-forwarded-proto", 17, st->scheme, strlen(st->scheme));
    if (st->hcm->generate_request_id && !sk_hdrs_get(&h, "x-request-id", 12)) {
        /* UUIDv4 */
        uint32_t r4[4];
        for (int i = 0; i < 4; i++)
            r4[i] = sk_worker_rand(st->w);
        r4[1] = (r4[1] & 0xffff0fffu) | 0x00004000u;
        r4[2] = (r4[2] & 0x3fffffffu) | 0x80000000u;
        char id[40];
        snprintf(id, sizeof(id), "%08x-%04x-%04x-%04x-%04x%08x", r4[0], r4[1] >> 16,
                 r4[1] & 0xffff, r4[2] >> 16, r4[2] & 0xffff, r4[3]);
        sk_hdrs_add(&h, &st->arena, "x-request-id", 12, id, 36);
    }
    apply_all_ops(st, &h, true);
    for (uint32_t i = 0; i < h.n; i++) {
        rc |= sk_buf_append(b, h.v[i].name, h.v[i].nlen);
        rc |= sk_buf_append(b, ": ", 2);
        rc |= sk_buf_append(b, h.v[i].value, h.v[i].vlen);
        rc |= sk_buf_append(b, "\r\n", 2);
    }
    /* framing */
    if (st->upgrade) {
        struct sk_hdr *u = sk_hdrs_get(&st->req, "upgrade", 7);
        rc |= sk_buf_append(b, "connection: upgrade\r\nupgrade: ", 30);
        if (u)
            rc |= sk_buf_append(b, u->value, u->vlen);
        rc |= sk_buf_append(b, "\r\n", 2);
    }
    if (st->req_body_kind == SK_H1_BODY_CHUNKED) {
        rc |= sk_buf_append(b, "transfer-encoding: chunked\r\n", 28);
        st->up_body_kind = SK_H1_BODY_CHUNKED;
    } else if (st->req_body_kind == SK_H1_BODY_LENGTH || (st->req_flags & SK_H1_F_HAS_CL)) {
        char cl[48];
        memcpy(cl, "content-length: ", 16);
        size_t n = 16 + sk_fmt_u64(cl + 16, (unsigned long long)st->req_content_length);
        cl[n++] = '\r';
        cl[n++] = '\n';
        rc |= sk_buf_append(b, cl, n);
        st->up_body_kind = SK_H1_BODY_LENGTH;
    } else {
        st->up_body_kind = SK_H1_BODY_NONE;
    }
    rc |= sk_buf_append(b, "\r\n", 2);
    st->up_sent_head = true;
    sk_upconn_flush(st->up);
    return rc ? SK_ERR_TOO_LARGE : 0;
}

static void stream_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_stream *st = t->data;
    sk_stat_add(&st->w->stats, SK_ST_upstream_rq_timeout, 1);
    if (st->up) {
        sk_upconn_abort(st->up);
        st->up = NULL;
    }
    char detail[64];
    snprintf(detail, sizeof(detail), "no complete response within %llu ms",
             (unsigned long long)st->route->timeout_ms);
    sk_stream_local_reply(st, SK_TERM_UPSTREAM_TIMEOUT, 0, detail);
}

/* Pick host + connection and send the head. Returns false when a local reply
 * was sent instead. */
static bool dispatch(struct sk_stream *st)
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
    struct sk_host *h = sk_lb_choose(st->crt);
    if (!h) {
        sk_stat_add(&w->stats, SK_ST_rq_no_healthy_upstream, 1);
        sk_stream_local_reply(st, SK_TERM_NO_HEALTHY, 0, st->cluster->name);
        return false;
    }
    sk_host_ref(h);
    h->active_rq++;
    st->host = h;
    int err = 0;
    st->up = sk_upconn_acquire(h, &up_cbs, st, st->req_flags, &err);
    if (!st->up) {
        sk_stream_local_reply(st, err ? err : SK_TERM_CONNECT_FAIL, 0, h->addr_str);
        return false;
    }
    sk_stat_add(&w->stats, SK_ST_upstream_rq_total, 1);
    if (encode_request_head(st) < 0) {
        sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "request head too large");
        return false;
    }
    return true;
}

void sk_stream_headers(struct sk_stream *st)
{
    struct sk_worker *w = st->w;
    sk_stat_add(&w->stats, SK_ST_downstream_rq_total, 1);
    ev_init(&st->timeout, stream_timeout_cb);
    st->timeout.data = st;
    st->state = SK_ST_S_HEADERS;
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
    const struct sk_route_config *rc = st->hcm->routes;
    const struct sk_vhost *vh =
        sk_route_vhost(rc, st->authority ? st->authority : "", st->authority_len);
    const struct sk_route *r = vh ? sk_route_match(vh, st) : NULL;
    if (!r) {
        sk_stat_add(&w->stats, SK_ST_rq_no_route, 1);
        sk_stream_local_reply(st, SK_TERM_NO_ROUTE, 0, NULL);
        return;
    }
    st->route = r;
    st->vhost = vh;
    if (r->action == SK_ROUTE_DIRECT) {
        sk_stat_add(&w->stats, SK_ST_rq_direct_response, 1);
        st->cause = SK_TERM_DIRECT_RESPONSE;
        st->status = (int)r->direct_status;
        struct sk_hdrs h = {0};
        if (r->direct_body_len)
            sk_hdrs_add(&h, &st->arena, "content-type", 12, "text/plain", 10);
        apply_all_ops(st, &h, false);
        st->resp_started = true;
        st->ops->send_head(st, st->status, &h, (int64_t)r->direct_body_len, st->resp_head_req);
        if (r->direct_body_len && !st->resp_head_req)
            st->ops->send_data(st, r->direct_body, r->direct_body_len);
        st->ops->send_end(st);
        return;
    }
    if (r->action == SK_ROUTE_WEIGHTED && r->nweighted) {
        uint32_t pick = r->total_weight ? sk_worker_rand(w) % r->total_weight : 0;
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
    } else {
        st->cluster = r->cluster;
    }
    st->state = SK_ST_S_UPSTREAM;
    if (!dispatch(st))
        return;
    if (st->req_end)
        sk_stream_end(st, NULL);
}

void sk_stream_data(struct sk_stream *st, const char *p, size_t n)
{
    if (!st->up || st->state != SK_ST_S_UPSTREAM)
        return; /* already answered locally: drop the body */
    if (st->up_body_kind == SK_H1_BODY_CHUNKED) {
        char sz[24];
        size_t l = sk_fmt_hex(sz, n);
        sz[l++] = '\r';
        sz[l++] = '\n';
        if (up_write(st, sz, (size_t)l) < 0 || up_write(st, p, n) < 0 ||
            up_write(st, "\r\n", 2) < 0)
            goto overflow;
    } else if (up_write(st, p, n) < 0) {
        goto overflow;
    }
    if (sk_upconn_congested(st->up))
        st->ops->pause_read(st, true);
    return;
overflow:
    sk_upconn_abort(st->up);
    st->up = NULL;
    sk_stream_local_reply(st, SK_TERM_OVERFLOW, 0, "request buffer limit");
}

void sk_stream_end(struct sk_stream *st, const struct sk_hdrs *trailers)
{
    st->req_end = true;
    if (!st->up || st->state != SK_ST_S_UPSTREAM)
        return;
    if (st->up_body_kind == SK_H1_BODY_CHUNKED) {
        up_write(st, "0\r\n", 3);
        if (trailers)
            for (uint32_t i = 0; i < trailers->n; i++) {
                up_write(st, trailers->v[i].name, trailers->v[i].nlen);
                up_write(st, ": ", 2);
                up_write(st, trailers->v[i].value, trailers->v[i].vlen);
                up_write(st, "\r\n", 2);
            }
        up_write(st, "\r\n", 2);
    }
    if (!st->upgrade && st->route && st->route->timeout_ms != SK_DUR_NONE &&
        st->route->timeout_ms > 0) {
        ev_timer_set(&st->timeout, (double)st->route->timeout_ms / 1000.0, 0.);
        ev_timer_start(st->w->loop, &st->timeout);
    }
}

void sk_stream_abort(struct sk_stream *st, int cause)
{
    if (st->cause == SK_TERM_NONE)
        st->cause = cause;
    if (st->up) {
        sk_upconn_abort(st->up);
        st->up = NULL;
    }
    ev_timer_stop(st->w->loop, &st->timeout);
    st->state = SK_ST_S_DONE;
}

void sk_stream_downstream_drained(struct sk_stream *st)
{
    if (st->up)
        sk_upconn_pause_read(st->up, false);
}

void sk_stream_tunnel_data(struct sk_stream *st, const char *p, size_t n)
{
    if (!st->up)
        return;
    if (up_write(st, p, n) < 0) {
        sk_upconn_abort(st->up);
        st->up = NULL;
        st->ops->reset(st);
        return;
    }
    if (sk_upconn_congested(st->up))
        st->ops->pause_read(st, true);
}

void sk_stream_tunnel_eof(struct sk_stream *st)
{
    if (st->up)
        sk_upconn_shutdown_write(st->up);
}

/* ---- upstream events ------------------------------------------------------- */

static void up_connected(void *ctx)
{
    (void)ctx;
}

static void up_drained(void *ctx)
{
    struct sk_stream *st = ctx;
    if (!st->req_end || st->state == SK_ST_S_TUNNEL)
        st->ops->pause_read(st, false);
}

static void count_status(struct sk_worker *w, int status, bool upstream)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        return;
    sk_stat_add(&w->stats, (upstream ? SK_ST_upstream_rq_1xx : SK_ST_downstream_rq_1xx) + cls - 1,
                1);
}

static void up_response(void *ctx, const struct sk_h1_msg *m)
{
    struct sk_stream *st = ctx;
    count_status(st->w, m->status, true);
    if (m->status >= 100 && m->status < 200 && m->status != 101) {
        if (m->status == 100 && (st->req_flags & SK_H1_F_EXPECT_CONTINUE) && st->ops->send_1xx)
            st->ops->send_1xx(st, 100);
        return;
    }
    ev_timer_stop(st->w->loop, &st->timeout);
    struct sk_hdrs h = {0};
    bool upgraded = (m->status == 101 && st->upgrade) ||
                    ((st->req_flags & SK_H1_F_CONNECT) && m->status >= 200 && m->status < 300);
    for (size_t i = 0; i < m->nhdrs; i++) {
        const struct sk_h1_header *x = &m->hdrs[i];
        /* add (lower-cased copy), then drop it again if it is hop-by-hop */
        if (sk_hdrs_add(&h, &st->arena, x->name, x->name_len, x->value, x->value_len) < 0)
            break;
        const struct sk_hdr *lx = &h.v[h.n - 1];
        if (hop_by_hop(lx->name, lx->nlen)) {
            /* keep content-length on HEAD responses and 304s: it describes the entity */
            bool keep_cl = lx->nlen == 14 && (st->resp_head_req || m->status == 304);
            if (!keep_cl)
                h.n--;
        }
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
    st->state = SK_ST_S_RESPONDING;
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
        st->state = SK_ST_S_TUNNEL;
        sk_upconn_set_tunnel(st->up);
        st->ops->tunnel(st);
    }
}

static void up_data(void *ctx, const char *p, size_t n)
{
    struct sk_stream *st = ctx;
    st->bytes_tx += n;
    st->ops->send_data(st, p, n);
    if (st->up && st->ops->congested(st))
        sk_upconn_pause_read(st->up, true);
}

static void up_trailers(void *ctx, const struct sk_h1_header *hh, size_t n)
{
    struct sk_stream *st = ctx;
    struct sk_hdrs t = {0};
    for (size_t i = 0; i < n; i++)
        sk_hdrs_add(&t, &st->arena, hh[i].name, hh[i].name_len, hh[i].value, hh[i].value_len);
    st->ops->send_trailers(st, &t);
}

static void up_complete(void *ctx)
{
    struct sk_stream *st = ctx;
    struct sk_upconn *u = st->up;
    st->up = NULL;
    if (u) {
        if (st->req_end)
            sk_upconn_release(u);
        else
            sk_upconn_abort(u); /* request still streaming: connection unusable */
    }
    st->state = SK_ST_S_DONE;
    st->ops->send_end(st);
}

static void up_error(void *ctx, int cause, const char *detail)
{
    struct sk_stream *st = ctx;
    struct sk_upconn *u = st->up;
    st->up = NULL;
    bool reused = u && u->reused && !u->got_bytes;
    if (u)
        sk_upconn_abort(u);
    if (st->state == SK_ST_S_TUNNEL) {
        st->ops->reset(st);
        return;
    }
    sk_stat_add(&st->w->stats, SK_ST_upstream_rq_reset, 1);
    /* A pooled keep-alive connection the upstream had already closed: the
     * request never reached it. Retry once on a fresh connection when the
     * request has no body still streaming (nothing is lost). */
    if (reused && !st->up_retried && !st->resp_started && st->req_end &&
        st->req_body_kind == SK_H1_BODY_NONE && st->host) {
        st->up_retried = true;
        int err = 0;
        st->up = sk_upconn_acquire(st->host, &up_cbs, st, st->req_flags, &err);
        if (st->up && encode_request_head(st) == 0) {
            sk_debug("conn %llu: retrying on a fresh upstream connection after a stale one",
                     (unsigned long long)st->conn_id);
            return;
        }
        if (st->up) {
            sk_upconn_abort(st->up);
            st->up = NULL;
        }
    }
    if (st->resp_started) {
        if (st->cause == SK_TERM_NONE)
            st->cause = cause;
        st->ops->reset(st);
        return;
    }
    sk_stream_local_reply(st, cause, 0, detail);
}
