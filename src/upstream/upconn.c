/* HTTP/1.1 upstream connections and the per-host keep-alive pool. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "skiff/err.h"
#include "skiff/evio.h"
#include "skiff/hoststate.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/stream.h"
#include "skiff/tls.h"
#include "skiff/toxics.h"
#include "skiff/upstream.h"

#define UP_HEAD_MAX (64 * 1024)
#define UP_MAX_HDRS 128
#define UP_IDLE_MAX 1024 /* idle connections kept per host per worker (Envoy: bounded only by the
                           max_connections breaker, default 1024); idle ones hold no buffers */
#define UP_HIGH_MARK (256 * 1024)
#define UP_LOW_MARK (64 * 1024)

enum { R_HEAD = 0, R_BODY = 1, R_DONE = 2, R_TUNNEL = 3 };

static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static const struct sk_up_vt h1_vt;

struct sk_up *(*sk_up_h2_acquire)(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                                  unsigned req_flags, int *err);
static void up_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void up_flush_cb(struct sk_reap *r);

struct upconn_priv {
    struct sk_upconn u;
    struct sk_reap flush;
    bool flush_queued;
    bool write_blocked; /* last send hit EAGAIN: wait for EV_WRITE */
    bool was_congested;
    bool shut_wr;
    bool idle_timer;      /* `timer` runs (or ran) the pool idle timeout */
    double idle_deadline; /* pooled: idle until then (INFINITY: no timeout) */
};

#define PRIV(u) ((struct upconn_priv *)(u))

static void up_free(struct sk_reap *r)
{
    struct sk_upconn *u = SK_CONTAINER_OF(r, struct sk_upconn, reap);
    sk_buf_free(&u->in);
    sk_buf_free(&u->out);
    if (u->host)
        sk_host_unref(u->host);
    free(PRIV(u));
}

static void update_io(struct sk_upconn *u)
{
    struct upconn_priv *p = PRIV(u);
    if (u->state == SK_UP_S_CLOSED)
        return;
    int ev = 0;
    if (u->state == SK_UP_S_CONNECTING) {
        if (u->handshaking)
            return; /* the handshake sets its own events */
        ev = EV_WRITE;
    } else {
        if (!u->read_paused)
            ev |= sk_tp_events_for_read(&u->tp);
        if (p->write_blocked && sk_buf_used(&u->out))
            ev |= sk_tp_events_for_write(&u->tp);
    }
    sk_io_set(u->w->loop, &u->io, ev);
}

static void pool_remove(struct sk_upconn *u)
{
    struct sk_host *h = u->host;
    struct sk_upconn **pp = &h->idle;
    while (*pp) {
        if (*pp == u) {
            *pp = u->pool_next;
            h->nidle--;
            break;
        }
        pp = &(*pp)->pool_next;
    }
    u->pool_next = NULL;
}

static void up_close(struct sk_upconn *u)
{
    if (u->state == SK_UP_S_CLOSED)
        return;
    if (u->state == SK_UP_S_IDLE)
        pool_remove(u);
    ev_io_stop(u->w->loop, &u->io);
    ev_timer_stop(u->w->loop, &u->timer);
    sk_tp_close(&u->tp);
    u->fd = -1;
    u->state = SK_UP_S_CLOSED;
    u->cbs = NULL;
    u->ctx = NULL;
    if (u->host && u->host->active_cx)
        u->host->active_cx--;
    if (u->host && u->host->cl->cs)
        atomic_fetch_sub_explicit(&u->host->cl->cs->cx_active, 1, memory_order_relaxed);
    sk_stat_add(&u->w->stats, SK_ST_upstream_cx_active, -1);
    sk_stat_add(&u->w->stats, SK_ST_upstream_cx_destroy, 1);
    sk_worker_reap(u->w, &u->reap);
}

void sk_upconn_close_idle_of(struct sk_host *h);
void sk_upconn_close_idle_of(struct sk_host *h)
{
    while (h->idle)
        up_close(h->idle);
}

static void fail(struct sk_upconn *u, int cause, const char *detail)
{
    const struct sk_upconn_cbs *cbs = u->cbs;
    void *ctx = u->ctx;
    u->cbs = NULL;
    if (cbs)
        cbs->on_error(ctx, cause, detail);
    up_close(u);
}

struct sk_upconn *sk_upconn_acquire(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                                    unsigned req_flags, int *err)
{
    struct sk_worker *w = h->cl->w;
    struct sk_upconn *u;
    while ((u = h->idle) != NULL) {
        pool_remove(u);
        if (u->state != SK_UP_S_IDLE) /* cannot happen; be safe */
            continue;
        u->state = SK_UP_S_ACTIVE;
        u->cbs = cbs;
        u->ctx = ctx;
        u->req_flags = req_flags;
        u->rstate = R_HEAD;
        u->base.reused = true;
        u->base.got_bytes = false;
        u->base.connecting = false;
        u->read_paused = false;
        /* the idle timer runs on (lazy, see sk_upconn_release): firing while
         * the connection is in use it does nothing and stops */
        sk_stat_add(&w->stats, SK_ST_upstream_cx_reused, 1);
        update_io(u);
        return u;
    }
    struct upconn_priv *p = calloc(1, sizeof(*p));
    if (!p) {
        *err = SK_TERM_OVERFLOW;
        return NULL;
    }
    u = &p->u;
    u->w = w;
    u->host = h;
    sk_host_ref(h);
    u->reap.free_fn = up_free;
    p->flush.free_fn = up_flush_cb;
    uint32_t cap = h->cl->cfg ? h->cl->cfg->per_connection_buffer_limit_bytes : 0;
    if (cap < UP_HEAD_MAX)
        cap = UP_HEAD_MAX;
    sk_buf_init(&u->in, cap);
    sk_buf_init(&u->out, cap + UP_HIGH_MARK);
    u->cbs = cbs;
    u->ctx = ctx;
    u->req_flags = req_flags;
    u->id = ++w->next_conn_id;
    u->fd = sk_host_connect(h);
    u->tp.fd = u->fd;
    u->tp.ssl = NULL;
    sk_stat_add(&w->stats, SK_ST_upstream_cx_total, 1);
    sk_stat_add(&w->stats, SK_ST_upstream_cx_active, 1);
    h->active_cx++;
    if (h->cl->cs)
        atomic_fetch_add_explicit(&h->cl->cs->cx_active, 1, memory_order_relaxed);
    if (u->fd < 0) {
        sk_warn("upstream %s: connect: %s", h->addr_str, strerror(-u->fd));
        sk_stat_add(&w->stats, SK_ST_upstream_cx_connect_fail, 1);
        u->state = SK_UP_S_CONNECTING;
        u->fd = -1;
        /* no socket: fail synchronously, the caller answers */
        u->cbs = NULL;
        h->active_cx--;
        if (h->cl->cs)
            atomic_fetch_sub_explicit(&h->cl->cs->cx_active, 1, memory_order_relaxed);
        sk_stat_add(&w->stats, SK_ST_upstream_cx_active, -1);
        sk_host_unref(h);
        sk_buf_free(&u->in);
        sk_buf_free(&u->out);
        free(p);
        *err = SK_TERM_CONNECT_FAIL;
        return NULL;
    }
    u->state = SK_UP_S_CONNECTING;
    u->base.vt = &h1_vt;
    u->base.connecting = true;
    ev_io_init(&u->io, up_io_cb, u->fd, EV_WRITE);
    u->io.data = u;
    ev_io_start(w->loop, &u->io);
    double ct = 5.0;
    if (h->cl->cfg && h->cl->cfg->connect_timeout_ms != SK_DUR_NONE)
        ct = (double)h->cl->cfg->connect_timeout_ms / 1000.0;
    ev_timer_init(&u->timer, up_timer_cb, ct, 0.);
    u->timer.data = u;
    ev_timer_start(w->loop, &u->timer);
    return u;
}

static void queue_flush(struct sk_upconn *u)
{
    struct upconn_priv *p = PRIV(u);
    if (!p->flush_queued && !p->write_blocked && u->state != SK_UP_S_CONNECTING) {
        p->flush_queued = true;
        sk_worker_defer_write(u->w, &p->flush, &u->tp, &u->out);
    }
}

int sk_upconn_write(struct sk_upconn *u, const void *p, size_t n)
{
    int r = sk_buf_append(&u->out, p, n);
    if (r < 0)
        return r;
    if (sk_buf_used(&u->out) > UP_HIGH_MARK)
        PRIV(u)->was_congested = true;
    queue_flush(u);
    return 0;
}

void sk_upconn_flush(struct sk_upconn *u)
{
    queue_flush(u);
}

bool sk_upconn_congested(const struct sk_upconn *u)
{
    return sk_buf_used(&u->out) > UP_HIGH_MARK;
}

static void do_write(struct sk_upconn *u)
{
    struct upconn_priv *p = PRIV(u);
    while (sk_buf_used(&u->out)) {
        ssize_t r = sk_tp_write(&u->tp, &u->out);
        if (r == SK_ERR_AGAIN) {
            p->write_blocked = true;
            update_io(u);
            return;
        }
        if (r < 0) {
            fail(u, SK_TERM_UPSTREAM_RESET, strerror(errno));
            return;
        }
    }
    sk_buf_shrink(&u->out);
    bool was = p->write_blocked;
    p->write_blocked = false;
    if (was)
        update_io(u);
    if (p->shut_wr)
        sk_tp_shutdown_write(&u->tp);
    if (p->was_congested || was) {
        p->was_congested = false;
        if (u->cbs && u->cbs->on_drained)
            u->cbs->on_drained(u->ctx);
    }
}

static void up_flush_cb(struct sk_reap *r)
{
    struct upconn_priv *p = SK_CONTAINER_OF(r, struct upconn_priv, flush);
    p->flush_queued = false;
    if (p->u.state == SK_UP_S_ACTIVE && !p->write_blocked)
        do_write(&p->u);
}

void sk_upconn_pause_read(struct sk_upconn *u, bool pause)
{
    if (u->read_paused == pause)
        return;
    u->read_paused = pause;
    update_io(u);
    /* process what is buffered; in R_BODY even with nothing buffered: the
     * pause may have come with the body's last DATA, and its DONE needs one
     * more (empty) step, for which the socket may never be readable again */
    if (!pause && u->state == SK_UP_S_ACTIVE &&
        (sk_buf_used(&u->in) || sk_tp_has_buffered(&u->tp) || u->rstate == R_BODY))
        ev_feed_event(u->w->loop, &u->io, EV_READ);
}

/* Pool idle timeout in seconds; <= 0: none. */
static double pool_idle_s(const struct sk_cluster *cfg)
{
    if (!cfg || cfg->idle_timeout_ms == SK_DUR_NONE)
        return 0;
    return (double)cfg->idle_timeout_ms / 1000.0;
}

void sk_upconn_release(struct sk_upconn *u)
{
    struct sk_host *h = u->host;
    struct sk_worker *w = u->w;
    u->cbs = NULL;
    u->ctx = NULL;
    u->nreq++;
    const struct sk_cluster *cfg = h->cl->cfg;
    bool reusable = u->keepalive && u->rstate == R_DONE && sk_buf_used(&u->in) == 0 &&
                    sk_buf_used(&u->out) == 0 && !h->removed && !w->draining &&
                    h->nidle < UP_IDLE_MAX &&
                    !(cfg && cfg->max_requests_per_connection &&
                      u->nreq >= cfg->max_requests_per_connection);
    if (!reusable) {
        up_close(u);
        return;
    }
    u->state = SK_UP_S_IDLE;
    u->read_paused = false;
    sk_buf_shrink(&u->in);
    sk_buf_shrink(&u->out);
    u->pool_next = h->idle;
    h->idle = u;
    h->nidle++;
    update_io(u); /* watch for the upstream closing it */
    /* The idle timer is armed lazily: a timer left running from an earlier
     * idle period that fires no later than the new deadline stays (no heap
     * operations per request); up_timer_cb re-arms it for what is left. */
    struct upconn_priv *p = PRIV(u);
    double idle = pool_idle_s(cfg);
    if (idle <= 0) {
        p->idle_deadline = INFINITY;
        return;
    }
    p->idle_deadline = ev_now(w->loop) + idle;
    if (p->idle_timer && ev_is_active(&u->timer) && ev_timer_remaining(w->loop, &u->timer) <= idle)
        return;
    p->idle_timer = true;
    ev_timer_stop(w->loop, &u->timer);
    ev_timer_set(&u->timer, idle, 0.);
    ev_timer_start(w->loop, &u->timer);
}

void sk_upconn_abort(struct sk_upconn *u)
{
    u->cbs = NULL;
    u->ctx = NULL;
    up_close(u);
}

void sk_upconn_set_tunnel(struct sk_upconn *u)
{
    u->rstate = R_TUNNEL;
}

void sk_upconn_shutdown_write(struct sk_upconn *u)
{
    PRIV(u)->shut_wr = true;
    if (sk_buf_used(&u->out) == 0 && u->state == SK_UP_S_ACTIVE)
        sk_tp_shutdown_write(&u->tp);
}

static void up_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_upconn *u = t->data;
    if (u->state == SK_UP_S_CONNECTING) {
        sk_stat_add(&u->w->stats, SK_ST_upstream_cx_connect_timeout, 1);
        sk_stat_add(&u->w->stats, SK_ST_upstream_cx_connect_fail, 1);
        sk_warn("upstream %s: connect timeout", u->host->addr_str);
        fail(u, SK_TERM_CONNECT_FAIL, "connect timeout");
    } else if (u->state == SK_UP_S_IDLE) {
        /* armed lazily: the deadline may have moved on */
        double left = PRIV(u)->idle_deadline - ev_now(loop);
        if (left > 0.001) {
            /* (no idle timeout any more: stop; min: the wall clock went back) */
            double idle = pool_idle_s(u->host->cl->cfg);
            if (idle <= 0)
                return;
            ev_timer_set(t, left < idle ? left : idle, 0.);
            ev_timer_start(loop, t);
            return;
        }
        up_close(u);
    }
}

/* Complete the response: hand the connection back through on_complete. */
static void complete(struct sk_upconn *u)
{
    u->rstate = R_DONE;
    if (sk_buf_used(&u->in))
        u->keepalive = false; /* unsolicited bytes after a response */
    const struct sk_upconn_cbs *cbs = u->cbs;
    if (cbs)
        cbs->on_complete(u->ctx);
    else
        up_close(u);
}

/* Parse and deliver what is buffered. Stops as soon as the user dropped us. */
static void process(struct sk_upconn *u)
{
    struct sk_h1_header hdrs[UP_MAX_HDRS];
    while (u->cbs && u->state == SK_UP_S_ACTIVE && !u->read_paused) {
        size_t avail = sk_buf_used(&u->in);
        const char *in = sk_buf_rptr(&u->in);
        if (u->rstate == R_HEAD) {
            if (!avail)
                return;
            struct sk_h1_msg m = {0};
            m.hdrs = hdrs;
            m.hdrs_cap = UP_MAX_HDRS;
            struct sk_h1_limits lim = {UP_HEAD_MAX, UP_MAX_HDRS};
            ssize_t r = sk_h1_parse_response(in, avail, &m, &lim, u->req_flags);
            if (r == SK_ERR_AGAIN)
                return;
            if (r < 0) {
                sk_warn("upstream %s: bad response: %s", u->host->addr_str, sk_strerror((int)r));
                fail(u, SK_TERM_UPSTREAM_PROTO, sk_strerror((int)r));
                return;
            }
            if (m.status >= 100 && m.status < 200 && m.status != 101) {
                u->cbs->on_response(u->ctx, &m);
                sk_buf_consume(&u->in, (size_t)r);
                continue;
            }
            u->keepalive = (m.flags & SK_H1_F_KEEPALIVE) != 0;
            sk_h1_body_init(&u->body, m.body_kind, m.content_length, UP_HEAD_MAX);
            int kind = m.body_kind;
            u->rstate = R_BODY;
            u->cbs->on_response(u->ctx, &m);
            sk_buf_consume(&u->in, (size_t)r);
            if (u->rstate == R_TUNNEL)
                continue;
            if (kind == SK_H1_BODY_NONE) {
                complete(u);
                return;
            }
            continue;
        }
        if (u->rstate == R_TUNNEL) {
            if (!avail)
                return;
            u->cbs->on_data(u->ctx, in, avail);
            sk_buf_consume(&u->in, avail);
            continue;
        }
        if (u->rstate != R_BODY)
            return;
        /* step even with nothing buffered: DONE after the last DATA or
         * TRAILERS event comes from one more call consuming nothing */
        int ev = 0;
        const char *d = NULL;
        size_t dl = 0;
        ssize_t r = sk_h1_body_step(&u->body, in, avail, &ev, &d, &dl);
        if (r < 0) {
            fail(u, SK_TERM_UPSTREAM_PROTO, sk_strerror((int)r));
            return;
        }
        if (ev == SK_H1_BEV_DATA) {
            u->cbs->on_data(u->ctx, d, dl);
            sk_buf_consume(&u->in, (size_t)r);
        } else if (ev == SK_H1_BEV_TRAILERS) {
            struct sk_h1_header th[UP_MAX_HDRS];
            ssize_t nt = sk_h1_parse_trailers(d, dl, th, UP_MAX_HDRS);
            if (nt < 0) {
                fail(u, SK_TERM_UPSTREAM_PROTO, "bad trailers");
                return;
            }
            if (nt > 0)
                u->cbs->on_trailers(u->ctx, th, (size_t)nt);
            sk_buf_consume(&u->in, (size_t)r);
        } else if (ev == SK_H1_BEV_DONE) {
            sk_buf_consume(&u->in, (size_t)r);
            complete(u);
            return;
        } else {
            sk_buf_consume(&u->in, (size_t)r);
            if (r == 0)
                return;
        }
    }
}

static void on_readable(struct sk_upconn *u)
{
    if (u->state == SK_UP_S_IDLE) {
        /* the upstream closed (or spoke out of turn) while idle */
        if (u->tp.ssl) {
            /* TLS 1.3 session tickets may arrive after the handshake:
             * let OpenSSL consume records; only data or EOF end the conn */
            char tmp[1];
            int want = 0;
            ssize_t r = sk_tls_read(u->tp.ssl, tmp, sizeof(tmp), &want);
            if (r == SK_ERR_AGAIN)
                return;
            up_close(u);
            return;
        }
        char tmp[1];
        ssize_t r = recv(u->fd, tmp, sizeof(tmp), MSG_PEEK);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        up_close(u);
        return;
    }
    ssize_t r = sk_tp_read(&u->tp, &u->in, 0);
    if (r == SK_ERR_AGAIN) {
        if (sk_buf_used(&u->in) || u->rstate == R_BODY)
            process(u); /* resumed after a pause (see sk_upconn_pause_read) */
        return;
    }
    if (r == SK_ERR_TOO_LARGE) {
        /* buffer full: parse what we have; a head that does not fit is bad */
        process(u);
        if (u->state == SK_UP_S_ACTIVE && u->rstate == R_HEAD && sk_buf_room(&u->in) == 0)
            fail(u, SK_TERM_UPSTREAM_PROTO, "response head too large");
        return;
    }
    if (r > 0) {
        u->base.got_bytes = true;
        process(u);
        if (u->state == SK_UP_S_ACTIVE && !u->read_paused && sk_tp_has_buffered(&u->tp))
            ev_feed_event(u->w->loop, &u->io, EV_READ);
        return;
    }
    /* EOF or error */
    process(u);
    if (u->state != SK_UP_S_ACTIVE || !u->cbs)
        return;
    if (u->rstate == R_BODY && u->body.kind == SK_H1_BODY_EOF) {
        u->keepalive = false;
        complete(u);
        return;
    }
    if (u->rstate == R_TUNNEL) {
        /* upstream finished sending: end the tunnel */
        fail(u, SK_TERM_NONE, "tunnel closed");
        return;
    }
    const char *why = u->tp.ssl ? sk_tls_why(u->tp.ssl) : NULL;
    if (why && why[0]) {
        char d[128];
        snprintf(d, sizeof(d), "TLS: %s", why);
        fail(u, SK_TERM_UPSTREAM_RESET, d);
        return;
    }
    fail(u, SK_TERM_UPSTREAM_RESET,
         r == 0 ? "upstream closed the connection" : (errno ? strerror(errno) : "connection error"));
}

static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct sk_upconn *u = io->data;
    if (u->state == SK_UP_S_CONNECTING) {
        int e = 0;
        socklen_t l = sizeof(e);
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &e, &l);
        if (e) {
            sk_stat_add(&u->w->stats, SK_ST_upstream_cx_connect_fail, 1);
            sk_warn("upstream %s: connect: %s", u->host->addr_str, strerror(e));
            fail(u, SK_TERM_CONNECT_FAIL, strerror(e));
            return;
        }
        const struct sk_cluster *cfg = u->host->cl->cfg;
        if (cfg && cfg->tls && !u->handshaking) {
            /* TCP is up: originate TLS before anything else */
            u->tp.ssl = sk_tls_ssl_new(cfg->tls);
            if (!u->tp.ssl) {
                fail(u, SK_TERM_CONNECT_FAIL, "cannot create a TLS session");
                return;
            }
            SSL_set_fd(u->tp.ssl, u->fd);
            sk_tls_ssl_set_session_key(u->tp.ssl, u->host->addr_str);
            u->handshaking = true;
        }
        if (u->handshaking) {
            int want = 0;
            const char *why = NULL;
            int hr = sk_tls_handshake(u->tp.ssl, &want, &why);
            if (hr == 0) {
                sk_io_set(loop, &u->io, want == SK_TLS_WANT_WRITE ? EV_WRITE : EV_READ);
                return;
            }
            if (hr < 0) {
                sk_stat_add(&u->w->stats, SK_ST_upstream_cx_connect_fail, 1);
                sk_warn("upstream %s: TLS handshake failed: %s", u->host->addr_str,
                        why ? why : "?");
                char d[96];
                snprintf(d, sizeof(d), "TLS handshake failed: %s", why ? why : "?");
                fail(u, SK_TERM_CONNECT_FAIL, d);
                return;
            }
            u->handshaking = false;
        }
        ev_timer_stop(loop, &u->timer);
        u->state = SK_UP_S_ACTIVE;
        u->base.connecting = false;
        if (cfg && cfg->toxics) /* L4 toxics of the cluster (Cluster.filters) */
            u->base.toxic =
                sk_tp_set_toxics(&u->tp, loop, &u->io, cfg->toxics, SK_TOX_SIDE_UPSTREAM,
                                 (unsigned)u->w->id, "upstream h1", (unsigned long long)u->id) != 0;
        if (u->cbs && u->cbs->on_connected)
            u->cbs->on_connected(u->ctx);
        if (u->state != SK_UP_S_ACTIVE)
            return;
        update_io(u);
        do_write(u);
        return;
    }
    if ((revents & EV_WRITE) && u->state == SK_UP_S_ACTIVE) {
        PRIV(u)->write_blocked = false;
        do_write(u);
        if (u->state == SK_UP_S_CLOSED)
            return;
    }
    if ((revents & EV_READ) || (u->tp.ssl && u->tp.want_rd == SK_TLS_WANT_WRITE))
        on_readable(u);
}

/* ---- struct sk_up over HTTP/1.1 -------------------------------------------- */

#define H1U(x) ((struct sk_upconn *)(x))

static int append_all(struct sk_upconn *u, int rc, const void *p, size_t n)
{
    return rc | sk_buf_append(&u->out, p, n);
}

static int h1_send_head(struct sk_up *base, const struct sk_req_head *h)
{
    struct sk_upconn *u = H1U(base);
    int rc = 0;
    rc = append_all(u, rc, h->method, h->method_len);
    rc = append_all(u, rc, " ", 1);
    rc = append_all(u, rc, h->path, h->path_len);
    rc = append_all(u, rc, " HTTP/1.1\r\n", 11);
    if (h->authority) {
        rc = append_all(u, rc, "host: ", 6);
        rc = append_all(u, rc, h->authority, h->authority_len);
        rc = append_all(u, rc, "\r\n", 2);
    }
    if (h->hdrs && h->hdrs->n && !rc)
        rc = sk_buf_append_fields(&u->out, h->hdrs);
    if (h->upgrade) {
        rc = append_all(u, rc, "connection: upgrade\r\nupgrade: ", 30);
        rc = append_all(u, rc, h->upgrade, h->upgrade_len);
        rc = append_all(u, rc, "\r\n", 2);
    }
    u->req_body_kind = h->body_kind;
    if (h->body_kind == SK_H1_BODY_CHUNKED) {
        rc = append_all(u, rc, "transfer-encoding: chunked\r\n", 28);
    } else if (h->body_kind == SK_H1_BODY_LENGTH || h->send_zero_cl) {
        char cl[48];
        memcpy(cl, "content-length: ", 16);
        size_t n = 16 + sk_fmt_u64(cl + 16, (unsigned long long)h->content_length);
        cl[n++] = '\r';
        cl[n++] = '\n';
        rc = append_all(u, rc, cl, n);
    }
    rc = append_all(u, rc, "\r\n", 2);
    queue_flush(u);
    return rc ? SK_ERR_TOO_LARGE : 0;
}

static int h1_send_data(struct sk_up *base, const char *p, size_t n)
{
    struct sk_upconn *u = H1U(base);
    if (n == 0)
        return 0;
    if (u->req_body_kind == SK_H1_BODY_CHUNKED) {
        char sz[24];
        size_t l = sk_fmt_hex(sz, n);
        sz[l++] = '\r';
        sz[l++] = '\n';
        if (sk_upconn_write(u, sz, l) < 0 || sk_upconn_write(u, p, n) < 0 ||
            sk_upconn_write(u, "\r\n", 2) < 0)
            return SK_ERR_TOO_LARGE;
        return 0;
    }
    return sk_upconn_write(u, p, n);
}

static int h1_send_end(struct sk_up *base, const struct sk_hdrs *t)
{
    struct sk_upconn *u = H1U(base);
    if (u->req_body_kind != SK_H1_BODY_CHUNKED)
        return 0;
    int rc = 0;
    rc |= sk_upconn_write(u, "0\r\n", 3);
    for (uint32_t i = 0; t && i < t->n; i++) {
        rc |= sk_upconn_write(u, t->v[i].name, t->v[i].nlen);
        rc |= sk_upconn_write(u, ": ", 2);
        rc |= sk_upconn_write(u, t->v[i].value, t->v[i].vlen);
        rc |= sk_upconn_write(u, "\r\n", 2);
    }
    rc |= sk_upconn_write(u, "\r\n", 2);
    return rc ? SK_ERR_TOO_LARGE : 0;
}

static int h1_send_raw(struct sk_up *base, const char *p, size_t n)
{
    return sk_upconn_write(H1U(base), p, n);
}

static bool h1_congested(const struct sk_up *base)
{
    return sk_upconn_congested((const struct sk_upconn *)base);
}

static void h1_pause_read(struct sk_up *base, bool pause)
{
    sk_upconn_pause_read(H1U(base), pause);
}

static void h1_release(struct sk_up *base)
{
    sk_upconn_release(H1U(base));
}

static void h1_abort(struct sk_up *base)
{
    sk_upconn_abort(H1U(base));
}

static void h1_set_tunnel(struct sk_up *base)
{
    sk_upconn_set_tunnel(H1U(base));
}

static void h1_shutdown_write(struct sk_up *base)
{
    sk_upconn_shutdown_write(H1U(base));
}

static const struct sk_up_vt h1_vt = {
    h1_send_head, h1_send_data,   h1_send_end,   h1_send_raw,   h1_congested,
    h1_pause_read, h1_release,    h1_abort,      h1_set_tunnel, h1_shutdown_write,
};

struct sk_up *sk_up_acquire(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                            unsigned req_flags, int proto, int *err)
{
    if (proto == SK_UP_HTTP2 && sk_up_h2_acquire)
        return sk_up_h2_acquire(h, cbs, ctx, req_flags, err);
    struct sk_upconn *u = sk_upconn_acquire(h, cbs, ctx, req_flags, err);
    return u ? &u->base : NULL;
}
