/* L4 proxy: downstream conn <-> upstream conn, both directions streamed
 * through bounded buffers (a full buffer stops reading the other side),
 * half-close propagated, idle timeout. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "skiff/accesslog.h"
#include "skiff/err.h"
#include "skiff/evio.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/stream.h"
#include "skiff/scope.h"
#include "skiff/tls.h"
#include "skiff/toxics.h"
#include "skiff/transport.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

#define TCP_BUF_DEFAULT (64 * 1024)

struct side {
    struct sk_transport tp;
    ev_io io;
    struct sk_buf out; /* bytes waiting to be written to this side */
    bool eof_in;       /* this side sent FIN */
    bool shut_out;     /* we sent FIN to this side */
    bool want_write;
};

struct tcpp {
    struct sk_conn_base base;
    struct sk_reap reap;
    struct side d, u; /* downstream, upstream */
    bool connecting;
    bool handshaking; /* upstream TLS handshake in progress */
    bool closed;
    ev_timer timer;
    double last_activity;
    double idle_s;
    struct sk_snapshot *snap;
    const struct sk_tcp_proxy *cfg;
    struct sk_scope *lscope; /* the listener's stats scope (lives for the process) */
    const struct sk_tls_cfg *up_tls; /* cluster's UpstreamTlsContext, or NULL */
    const struct sk_toxics_cfg *up_toxics; /* cluster's L4 toxics (Cluster.filters), or NULL */
    struct sk_host *host;
    uint64_t id;
    uint32_t attempts;
    /* for the access log (TcpProxy.access_log) */
    const struct sk_cluster *cl; /* last cluster tried */
    double t_start;
    uint64_t bytes_rx, bytes_tx; /* from / to the client */
    int cause;                   /* enum sk_term, how the connection ended */
    bool toxic;                  /* an L4 toxic acted on it (TX) */
    struct sk_sockaddr peer;     /* the client (only read when access logs are on) */
};

static void io_cb(struct ev_loop *loop, ev_io *io, int revents);
static bool try_connect(struct tcpp *t);

static void tp_free(struct sk_reap *r)
{
    struct tcpp *t = SK_CONTAINER_OF(r, struct tcpp, reap);
    sk_buf_free(&t->d.out);
    sk_buf_free(&t->u.out);
    if (t->host)
        sk_host_unref(t->host);
    if (t->snap)
        sk_snapshot_unref(t->snap);
    free(t);
}

/* One access log line per connection, through a stream record (no method:
 * protocol "-", status 0; flags from the cause, TX when a toxic acted). */
static void tp_log(struct tcpp *t)
{
    if (!t->cfg->naccess_logs)
        return;
    struct sk_stream *st = calloc(1, sizeof(*st));
    if (!st)
        return;
    st->w = t->base.w;
    st->snap = t->snap;
    st->conn_id = t->id;
    st->t_start = t->t_start;
    st->cause = t->cause;
    st->toxic = t->toxic;
    st->bytes_rx = t->bytes_rx;
    st->bytes_tx = t->bytes_tx;
    st->cluster = t->cl;
    st->attempt = t->attempts;
    st->tls = t->d.tp.ssl;
    if (t->host)
        snprintf(st->upstream_host, sizeof(st->upstream_host), "%s", t->host->addr_str);
    if (t->peer.len) {
        char a[80];
        sk_addr_str(&t->peer, a, sizeof(a));
        char *colon = strrchr(a, ':');
        if (colon) {
            st->peer_port = (uint16_t)atoi(colon + 1);
            *colon = 0;
        }
        const char *ip = a[0] == '[' ? a + 1 : a;
        size_t il = strlen(ip);
        if (il && ip[il - 1] == ']')
            il--;
        snprintf(st->peer_ip, sizeof(st->peer_ip), "%.*s", (int)il, ip);
    }
    sk_access_log_write(st, t->cfg->access_logs, t->cfg->naccess_logs);
    free(st);
}

static void tp_close(struct tcpp *t, const char *why)
{
    if (t->closed)
        return;
    struct sk_worker *w = t->base.w;
    tp_log(t); /* before the sockets go: the client's address */
    t->closed = true;
    sk_debug("tcp %llu: closing: %s", (unsigned long long)t->id, why);
    ev_io_stop(w->loop, &t->d.io);
    ev_timer_stop(w->loop, &t->timer);
    sk_tp_close(&t->d.tp);
    if (t->u.tp.fd >= 0) {
        ev_io_stop(w->loop, &t->u.io);
        sk_tp_close(&t->u.tp);
        sk_stat_add(&w->stats, SK_ST_upstream_cx_active, -1);
        sk_stat_add(&w->stats, SK_ST_upstream_cx_destroy, 1);
        if (t->host && t->host->active_cx)
            t->host->active_cx--;
    }
    sk_worker_conn_unlink(w, &t->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, -1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_destroy, 1);
    sk_scope_add(t->lscope, w->id, SK_SC_downstream_cx_active, -1);
    sk_scope_add(t->lscope, w->id, SK_SC_downstream_cx_destroy, 1);
    sk_worker_reap(w, &t->reap);
}

/* (Re)compute which events each side needs. */
static void update(struct tcpp *t)
{
    struct sk_worker *w = t->base.w;
    struct side *s[2] = {&t->d, &t->u};
    for (int i = 0; i < 2; i++) {
        struct side *me = s[i], *peer = s[1 - i];
        if (me->tp.fd < 0)
            continue;
        int ev = 0;
        if (me == &t->u && t->connecting) {
            ev = EV_WRITE;
        } else if (me == &t->u && t->handshaking) {
            ev = t->u.tp.want_rd == SK_TLS_WANT_WRITE ? EV_WRITE : EV_READ;
        } else {
            /* read while the peer's buffer has room and we have not seen FIN */
            if (!me->eof_in && sk_buf_room(&peer->out) > 0)
                ev |= sk_tp_events_for_read(&me->tp);
            if (sk_buf_used(&me->out))
                ev |= sk_tp_events_for_write(&me->tp);
        }
        if (!sk_io_set(w->loop, &me->io, ev))
            continue;
        /* TLS: decrypted bytes waiting inside OpenSSL never raise readiness */
        if ((ev & EV_READ) && sk_tp_has_buffered(&me->tp))
            ev_feed_event(w->loop, &me->io, EV_READ);
    }
}

static void check_done(struct tcpp *t)
{
    /* both directions finished and flushed */
    if (t->d.eof_in && t->u.eof_in && !sk_buf_used(&t->d.out) && !sk_buf_used(&t->u.out))
        tp_close(t, "both sides closed");
}

static void flush_side(struct tcpp *t, struct side *me, struct side *peer)
{
    while (sk_buf_used(&me->out)) {
        ssize_t r = sk_tp_write(&me->tp, &me->out);
        if (r == SK_ERR_AGAIN)
            break;
        if (r < 0) {
            if (!t->cause)
                t->cause = me == &t->d ? SK_TERM_CLIENT_RESET : SK_TERM_UPSTREAM_RESET;
            tp_close(t, "write error");
            return;
        }
        sk_stat_add(&t->base.w->stats, SK_ST_tcp_bytes_tx, r);
        if (me == &t->d)
            t->bytes_tx += (uint64_t)r;
    }
    if (!sk_buf_used(&me->out)) {
        sk_buf_shrink(&me->out);
        if (peer->eof_in && !me->shut_out) {
            sk_tp_shutdown_write(&me->tp);
            me->shut_out = true;
        }
    }
}

static void read_side(struct tcpp *t, struct side *me, struct side *peer)
{
    ssize_t r = sk_tp_read(&me->tp, &peer->out, 0);
    if (r == SK_ERR_AGAIN || r == SK_ERR_TOO_LARGE)
        return;
    if (r > 0) {
        t->last_activity = ev_now(t->base.w->loop);
        sk_stat_add(&t->base.w->stats, SK_ST_tcp_bytes_rx, r);
        if (me == &t->d)
            t->bytes_rx += (uint64_t)r;
        if (sk_tp_has_buffered(&me->tp))
            ev_feed_event(t->base.w->loop, &me->io, EV_READ);
        return;
    }
    if (r == 0) {
        me->eof_in = true;
        return;
    }
    if (!t->cause)
        t->cause = me == &t->d ? SK_TERM_CLIENT_RESET : SK_TERM_UPSTREAM_RESET;
    tp_close(t, "read error");
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct tcpp *t = io->data;
    struct side *me = (io == &t->d.io) ? &t->d : &t->u;
    struct side *peer = (me == &t->d) ? &t->u : &t->d;
    if (me == &t->u && t->connecting) {
        int e = 0;
        socklen_t l = sizeof(e);
        getsockopt(t->u.tp.fd, SOL_SOCKET, SO_ERROR, &e, &l);
        if (e) {
            sk_stat_add(&t->base.w->stats, SK_ST_upstream_cx_connect_fail, 1);
            sk_warn("tcp %llu: upstream %s: connect: %s", (unsigned long long)t->id,
                    t->host->addr_str, strerror(e));
            ev_io_stop(loop, &t->u.io);
            sk_tp_close(&t->u.tp);
            sk_stat_add(&t->base.w->stats, SK_ST_upstream_cx_active, -1);
            if (t->host->active_cx)
                t->host->active_cx--;
            if (!try_connect(t)) {
                if (!t->cause)
                    t->cause = SK_TERM_CONNECT_FAIL;
                tp_close(t, "upstream connect failed");
            }
            return;
        }
        t->connecting = false;
        t->last_activity = ev_now(loop);
        if (t->up_tls) {
            t->u.tp.ssl = sk_tls_ssl_new(t->up_tls);
            if (!t->u.tp.ssl) {
                t->cause = SK_TERM_CONNECT_FAIL;
                tp_close(t, "cannot create upstream TLS session");
                return;
            }
            SSL_set_fd(t->u.tp.ssl, t->u.tp.fd);
            sk_tls_ssl_set_session_key(t->u.tp.ssl, t->host->addr_str);
            t->handshaking = true;
        } else {
            if (sk_tp_set_toxics(&t->u.tp, loop, &t->u.io, t->up_toxics, SK_TOX_SIDE_UPSTREAM,
                                 (unsigned)t->base.w->id, "tcp upstream",
                                 (unsigned long long)t->id))
                t->toxic = true;
            flush_side(t, &t->u, &t->d);
            if (t->closed)
                return;
            update(t);
            return;
        }
    }
    if (me == &t->u && t->handshaking) {
        int want = 0;
        const char *why = NULL;
        int hr = sk_tls_handshake(t->u.tp.ssl, &want, &why);
        if (hr < 0) {
            sk_warn("tcp %llu: upstream %s: TLS handshake failed: %s", (unsigned long long)t->id,
                    t->host->addr_str, why ? why : "?");
            t->cause = SK_TERM_CONNECT_FAIL;
            tp_close(t, "upstream TLS handshake failed");
            return;
        }
        if (hr == 0) {
            t->u.tp.want_rd = (uint8_t)want;
            update(t);
            return;
        }
        t->handshaking = false;
        t->u.tp.want_rd = 0;
        if (sk_tp_set_toxics(&t->u.tp, loop, &t->u.io, t->up_toxics, SK_TOX_SIDE_UPSTREAM,
                             (unsigned)t->base.w->id, "tcp upstream", (unsigned long long)t->id))
            t->toxic = true;
        flush_side(t, &t->u, &t->d);
        if (t->closed)
            return;
        update(t);
        return;
    }
    if (revents & EV_READ) {
        read_side(t, me, peer);
        if (t->closed)
            return;
        if (peer->tp.fd >= 0 && !(peer == &t->u && (t->connecting || t->handshaking)))
            flush_side(t, peer, me);
        if (t->closed)
            return;
    }
    if ((revents & EV_WRITE) && !(me == &t->u && t->handshaking)) {
        flush_side(t, me, peer);
        if (t->closed)
            return;
    }
    check_done(t);
    if (!t->closed)
        update(t);
}

static void timer_cb(struct ev_loop *loop, ev_timer *tm, int revents)
{
    struct tcpp *t = tm->data;
    double now = ev_now(loop);
    if (t->connecting) {
        sk_stat_add(&t->base.w->stats, SK_ST_upstream_cx_connect_timeout, 1);
        sk_warn("tcp %llu: upstream %s: connect timeout", (unsigned long long)t->id,
                t->host ? t->host->addr_str : "?");
        t->cause = SK_TERM_CONNECT_FAIL;
        tp_close(t, "connect timeout");
        return;
    }
    if (t->idle_s <= 0) {
        return;
    }
    double due = t->last_activity + t->idle_s;
    if (now >= due) {
        sk_stat_add(&t->base.w->stats, SK_ST_downstream_cx_idle_timeout, 1);
        t->cause = SK_TERM_IDLE_TIMEOUT;
        tp_close(t, "idle timeout");
        return;
    }
    ev_timer_set(tm, due - now, 0.);
    ev_timer_start(loop, tm);
}

static bool try_connect(struct tcpp *t)
{
    struct sk_worker *w = t->base.w;
    uint32_t max = t->cfg->max_connect_attempts ? t->cfg->max_connect_attempts : 1;
    while (t->attempts < max) {
        t->attempts++;
        const struct sk_cluster *cl = t->cfg->cluster;
        if (t->cfg->nweighted) {
            uint32_t pick = sk_worker_rand(w) % (t->cfg->total_weight ? t->cfg->total_weight : 1);
            for (size_t i = 0; i < t->cfg->nweighted; i++) {
                if (pick < t->cfg->weighted[i].weight) {
                    cl = t->cfg->weighted[i].cluster;
                    break;
                }
                pick -= t->cfg->weighted[i].weight;
            }
        }
        if (!cl) {
            sk_warn("tcp %llu: cluster not found", (unsigned long long)t->id);
            t->cause = SK_TERM_NO_CLUSTER;
            return false;
        }
        t->cl = cl;
        struct sk_cluster_rt *crt = sk_worker_cluster_rt(w, t->snap, cl);
        struct sk_host *h = crt ? sk_lb_choose(crt) : NULL;
        if (!h) {
            sk_stat_add(&w->stats, SK_ST_rq_no_healthy_upstream, 1);
            sk_warn("tcp %llu: no healthy upstream in cluster %s (UH)", (unsigned long long)t->id,
                    cl->name);
            t->cause = SK_TERM_NO_HEALTHY;
            return false;
        }
        if (t->host)
            sk_host_unref(t->host);
        t->host = h;
        sk_host_ref(h);
        int fd = sk_host_connect(h);
        sk_stat_add(&w->stats, SK_ST_upstream_cx_total, 1);
        if (fd < 0) {
            sk_stat_add(&w->stats, SK_ST_upstream_cx_connect_fail, 1);
            t->cause = SK_TERM_CONNECT_FAIL;
            continue;
        }
        t->cause = SK_TERM_NONE;
        sk_stat_add(&w->stats, SK_ST_upstream_cx_active, 1);
        h->active_cx++;
        t->u.tp.fd = fd;
        t->u.tp.ssl = NULL;
        t->connecting = true;
        t->up_tls = cl->tls;
        t->up_toxics = cl->toxics;
        ev_io_init(&t->u.io, io_cb, fd, EV_WRITE);
        t->u.io.data = t;
        ev_io_start(w->loop, &t->u.io);
        double ct = cl->connect_timeout_ms == SK_DUR_NONE ? 5.0 : cl->connect_timeout_ms / 1000.0;
        ev_timer_stop(w->loop, &t->timer);
        ev_timer_set(&t->timer, ct, 0.);
        ev_timer_start(w->loop, &t->timer);
        return true;
    }
    return false;
}

static void tp_drain(struct sk_conn_base *b)
{
    struct tcpp *t = (struct tcpp *)b;
    /* an L4 stream has no request boundary: it may finish within the drain
     * time; at the deadline (stopping) it is closed */
    if (b->w->stopping) {
        if (!t->cause)
            t->cause = SK_TERM_DRAINING;
        tp_close(t, "shutdown");
    }
}

void sk_tcp_proxy_accept(struct sk_worker *w, const struct sk_listener *l,
                         const struct sk_filter_chain *fc, int fd, SSL *ssl)
{
    struct tcpp *t = calloc(1, sizeof(*t));
    if (!t) {
        if (ssl)
            SSL_free(ssl);
        close(fd);
        return;
    }
    t->reap.free_fn = tp_free;
    t->base.drain = tp_drain;
    t->snap = sk_snapshot_ref(w->snap);
    t->cfg = fc->tcp;
    t->id = ++w->next_conn_id;
    t->d.tp.fd = fd;
    t->d.tp.ssl = ssl;
    t->u.tp.fd = -1;
    size_t cap = l->per_connection_buffer_limit_bytes ? l->per_connection_buffer_limit_bytes
                                                      : TCP_BUF_DEFAULT;
    sk_buf_init(&t->d.out, cap);
    sk_buf_init(&t->u.out, cap);
    ev_io_init(&t->d.io, io_cb, fd, 0);
    t->d.io.data = t;
    ev_init(&t->timer, timer_cb);
    t->timer.data = t;
    t->idle_s = (t->cfg->idle_timeout_ms == SK_DUR_NONE) ? 0 : t->cfg->idle_timeout_ms / 1000.0;
    t->last_activity = ev_now(w->loop);
    sk_worker_conn_link(w, &t->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, 1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_tcp_total, 1);
    t->lscope = l->scope;
    sk_scope_add(t->lscope, w->id, SK_SC_downstream_cx_active, 1);
    t->t_start = ev_now(w->loop);
    if (t->cfg->naccess_logs) {
        t->peer.len = sizeof(t->peer.ss);
        if (getpeername(fd, (struct sockaddr *)&t->peer.ss, &t->peer.len) != 0)
            t->peer.len = 0;
    }
    /* L4 toxics of the filter chain act on the client's connection */
    if (sk_tp_set_toxics(&t->d.tp, w->loop, &t->d.io, fc->toxics, SK_TOX_SIDE_DOWNSTREAM,
                         (unsigned)w->id, "tcp downstream", (unsigned long long)t->id))
        t->toxic = true;
    if (!try_connect(t)) {
        tp_close(t, "no upstream");
        return;
    }
    update(t);
}
