/* Downstream HTTP/1.1 connections: parse requests (strictly), drive one
 * stream at a time (pipelined requests wait in the input buffer), encode
 * responses, keep-alive, upgrade tunnels, drain, lingering close. */
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "skiff/err.h"
#include "skiff/evio.h"
#include "skiff/h2.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/scope.h"
#include "skiff/stream.h"
#include "skiff/tls.h"
#include "skiff/transport.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

#define H1_HIGH_MARK (256 * 1024)
#define H1_MAX_HDRS_CAP 512
#define LINGER_S 2.0

enum { S_HEAD = 0, S_BODY, S_WAIT, S_TUNNEL, S_LINGER, S_CLOSED };
enum { RM_NONE = 0, RM_CL, RM_CHUNKED, RM_EOF };

struct h1s {
    struct sk_conn_base base;
    struct sk_reap reap;
    struct sk_reap flush;
    struct sk_transport tp; /* socket (+ TLS) */
    ev_io io;
    ev_timer timer;
    struct sk_snapshot *snap;
    const struct sk_listener *l;
    const struct sk_filter_chain *fc;
    struct sk_buf in, out;
    struct sk_stream *st;
    struct sk_h1_body body;
    uint64_t id;
    uint32_t nreq;
    uint8_t state;
    uint8_t resp_mode;
    /* one bit each: an idle keep-alive connection is this struct (see
     * bench/README.md, memory per idle connection) */
    bool keepalive : 1;     /* current request allows reuse */
    bool close_after : 1;   /* close once the current response is out */
    bool read_paused : 1;   /* backpressure from upstream */
    bool write_blocked : 1; /* waiting for EV_WRITE */
    bool flush_queued : 1;
    bool draining : 1;
    bool in_process : 1;
    bool resp_done : 1, req_done : 1;
    bool trailers_sent : 1;
    bool minor0 : 1;    /* HTTP/1.0 request */
    bool hdr_timer : 1; /* `timer` runs request_headers_timeout for a partial head */
    double idle_deadline; /* idle timeout: `timer` may fire earlier and re-arm (lazy) */
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } peer;
};

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void process(struct h1s *c);
static void conn_close(struct h1s *c);
static void flush_now(struct h1s *c);

static const struct sk_downstream_ops h1_ops;

/* ---- lifecycle ------------------------------------------------------------ */

static void conn_free(struct sk_reap *r)
{
    struct h1s *c = SK_CONTAINER_OF(r, struct h1s, reap);
    sk_buf_free(&c->in);
    sk_buf_free(&c->out);
    if (c->snap)
        sk_snapshot_unref(c->snap);
    free(c);
}

struct stream_box {
    struct sk_reap reap;
    struct sk_stream st;
};

/* Finished streams go back to a small per-thread pool (each worker is one
 * thread), keeping their arena block: no malloc on the request path. */
#define STREAM_POOL_MAX 128
static __thread struct stream_box *stream_pool;
static __thread unsigned stream_pool_n;

static void stream_free(struct sk_reap *r)
{
    struct stream_box *b = (struct stream_box *)r;
    if (stream_pool_n < STREAM_POOL_MAX) {
        b->reap.next = (struct sk_reap *)stream_pool;
        stream_pool = b;
        stream_pool_n++;
        return;
    }
    sk_arena_free(&b->st.arena);
    free(b);
}

void sk_http_thread_cleanup(void)
{
    while (stream_pool) {
        struct stream_box *b = stream_pool;
        stream_pool = (struct stream_box *)b->reap.next;
        sk_arena_free(&b->st.arena);
        free(b);
    }
    stream_pool_n = 0;
    sk_h2_thread_cleanup();
}

static struct stream_box *stream_alloc(void)
{
    struct stream_box *b = stream_pool;
    if (b) {
        stream_pool = (struct stream_box *)b->reap.next;
        stream_pool_n--;
        struct sk_arena keep = b->st.arena;
        memset(b, 0, sizeof(*b));
        b->st.arena = keep;
        return b;
    }
    b = calloc(1, sizeof(*b));
    if (b)
        sk_arena_init(&b->st.arena, 2048);
    return b;
}

static void stream_finish(struct h1s *c)
{
    struct sk_stream *st = c->st;
    if (!st)
        return;
    c->st = NULL;
    sk_stream_cleanup(st);
    sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_active, -1);
    struct stream_box *b = SK_CONTAINER_OF(st, struct stream_box, st);
    sk_worker_reap(c->base.w, &b->reap);
}

static void update_io(struct h1s *c)
{
    if (c->state == S_CLOSED)
        return;
    int ev = 0;
    if (!c->read_paused)
        ev |= sk_tp_events_for_read(&c->tp);
    if (c->write_blocked)
        ev |= sk_tp_events_for_write(&c->tp);
    sk_io_set(c->base.w->loop, &c->io, ev);
}

/* The idle timer is armed lazily: a keep-alive connection moves its deadline
 * on every request, but the running timer stays where it is (no heap
 * operations per request) as long as it fires no later than the deadline;
 * conn_timer_cb then re-arms it for what is left. */
static void idle_timer_start(struct h1s *c)
{
    const struct sk_hcm *hcm = c->fc->hcm;
    struct ev_loop *loop = c->base.w->loop;
    bool was_hdr = c->hdr_timer;
    c->hdr_timer = false;
    uint64_t ms = hcm->idle_timeout_ms;
    if (ms == SK_DUR_NONE || ms == 0) {
        ev_timer_stop(loop, &c->timer);
        return;
    }
    double t = (double)ms / 1000.0;
    c->idle_deadline = ev_now(loop) + t;
    if (!was_hdr && ev_is_active(&c->timer) && ev_timer_remaining(loop, &c->timer) <= t)
        return;
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, t, 0.);
    ev_timer_start(loop, &c->timer);
}

/* The first bytes of a request head are in: the whole head must follow within
 * request_headers_timeout (the connection idle timer stops counting). */
static void hdr_timer_start(struct h1s *c)
{
    uint64_t ms = c->fc->hcm->request_headers_timeout_ms;
    if (c->hdr_timer || ms == SK_DUR_NONE || ms == 0)
        return;
    c->hdr_timer = true;
    ev_timer_stop(c->base.w->loop, &c->timer);
    ev_timer_set(&c->timer, (double)ms / 1000.0, 0.);
    ev_timer_start(c->base.w->loop, &c->timer);
}

static void conn_close(struct h1s *c)
{
    if (c->state == S_CLOSED)
        return;
    struct sk_worker *w = c->base.w;
    if (c->st) {
        if (!c->resp_done)
            sk_stream_abort(c->st, SK_TERM_CLIENT_RESET);
        stream_finish(c);
    }
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->timer);
    sk_tp_close(&c->tp);
    c->state = S_CLOSED;
    sk_worker_conn_unlink(w, &c->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, -1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_destroy, 1);
    sk_scope_add(c->l->scope, w->id, SK_SC_downstream_cx_active, -1);
    sk_scope_add(c->l->scope, w->id, SK_SC_downstream_cx_destroy, 1);
    sk_worker_reap(w, &c->reap);
}

/* Half-close our side and read (discarding) for a while so that the client
 * gets our last response before any RST caused by unread input. */
static void linger_close(struct h1s *c)
{
    if (c->state == S_CLOSED || c->state == S_LINGER)
        return;
    if (c->st) {
        if (!c->resp_done)
            sk_stream_abort(c->st, SK_TERM_CLIENT_RESET);
        stream_finish(c);
    }
    sk_tp_shutdown_write(&c->tp);
    c->state = S_LINGER;
    c->read_paused = false;
    c->write_blocked = false;
    sk_buf_free(&c->in);
    update_io(c);
    ev_timer_stop(c->base.w->loop, &c->timer);
    ev_timer_set(&c->timer, LINGER_S, 0.);
    ev_timer_start(c->base.w->loop, &c->timer);
}

static void conn_drain(struct sk_conn_base *b)
{
    struct h1s *c = (struct h1s *)b;
    c->draining = true;
    c->close_after = true;
    if (c->state == S_HEAD && !c->st && sk_buf_used(&c->in) == 0 && sk_buf_used(&c->out) == 0)
        conn_close(c);
    else if (c->base.w->stopping)
        conn_close(c);
}

/* ---- writing ------------------------------------------------------------------ */

static void do_write(struct h1s *c)
{
    while (sk_buf_used(&c->out)) {
        ssize_t r = sk_tp_write(&c->tp, &c->out);
        if (r == SK_ERR_AGAIN) {
            if (!c->write_blocked) {
                c->write_blocked = true;
                update_io(c);
            }
            return;
        }
        if (r < 0) {
            conn_close(c);
            return;
        }
    }
    sk_buf_shrink(&c->out);
    if (c->write_blocked) {
        c->write_blocked = false;
        update_io(c);
        if (c->st)
            sk_stream_downstream_drained(c->st);
    }
    if (c->resp_done && c->close_after && c->state != S_CLOSED && c->state != S_LINGER &&
        !c->st)
        linger_close(c);
}

static void flush_cb(struct sk_reap *r)
{
    struct h1s *c = SK_CONTAINER_OF(r, struct h1s, flush);
    c->flush_queued = false;
    if (c->state != S_CLOSED && c->state != S_LINGER && !c->write_blocked)
        do_write(c);
}

static void flush_now(struct h1s *c)
{
    if (!c->write_blocked)
        do_write(c);
}

static void queue_flush(struct h1s *c)
{
    if (sk_buf_used(&c->out) > 64 * 1024) {
        flush_now(c);
        return;
    }
    if (!c->flush_queued && !c->write_blocked) {
        c->flush_queued = true;
        sk_worker_defer_write(c->base.w, &c->flush, &c->tp, &c->out);
    }
}

static int out_append(struct h1s *c, const void *p, size_t n)
{
    int r = sk_buf_append(&c->out, p, n);
    if (r < 0) {
        /* over the hard cap: the peer does not read; give up on it */
        sk_warn("conn %llu: output buffer limit reached; closing", (unsigned long long)c->id);
        conn_close(c);
    }
    return r;
}

static const char *reason_phrase(int s)
{
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

/* ---- downstream ops (called by the router) ------------------------------------ */

static int cl_line(char *line, unsigned long long v)
{
    memcpy(line, "content-length: ", 16);
    size_t n = 16 + sk_fmt_u64(line + 16, v);
    line[n++] = '\r';
    line[n++] = '\n';
    return (int)n;
}

static struct h1s *conn_of(struct sk_stream *st)
{
    return st->conn;
}

static void op_send_head(struct sk_stream *st, int status, const struct sk_hdrs *h,
                         int64_t content_length, bool end_stream)
{
    struct h1s *c = conn_of(st);
    if (c->state == S_CLOSED)
        return;
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_1xx + cls - 1, 1);
    if (c->draining)
        c->close_after = true;
    char line[64];
    const char *rp = reason_phrase(status);
    size_t rl = strlen(rp);
    memcpy(line, "HTTP/1.1 ", 9);
    int n;
    if (status >= 100 && status <= 999) {
        line[9] = (char)('0' + status / 100);
        line[10] = (char)('0' + status / 10 % 10);
        line[11] = (char)('0' + status % 10);
        n = 12;
    } else {
        n = 9 + (int)sk_fmt_u64(line + 9, (unsigned)status % 1000);
    }
    line[n++] = ' ';
    memcpy(line + n, rp, rl);
    n += (int)rl;
    line[n++] = '\r';
    line[n++] = '\n';
    if (out_append(c, line, (size_t)n) < 0)
        return;
    if (h->n && sk_buf_append_fields(&c->out, h) < 0) {
        conn_close(c);
        return;
    }
    bool no_body = status == 204 || status == 304 || (status >= 100 && status < 200) ||
                   st->resp_head_req;
    bool tunnel = status == 101 || ((st->req_flags & SK_H1_F_CONNECT) && cls == 2);
    if (tunnel) {
        c->resp_mode = RM_NONE;
    } else if (no_body) {
        c->resp_mode = RM_NONE;
        if (st->resp_head_req && content_length >= 0 && !sk_hdrs_get(h, "content-length", 14)) {
            n = cl_line(line, (unsigned long long)content_length);
            out_append(c, line, (size_t)n);
        }
    } else if (content_length >= 0) {
        c->resp_mode = RM_CL;
        n = cl_line(line, (unsigned long long)content_length);
        out_append(c, line, (size_t)n);
    } else if (!c->minor0) {
        c->resp_mode = RM_CHUNKED;
        out_append(c, "transfer-encoding: chunked\r\n", 28);
    } else {
        c->resp_mode = RM_EOF;
        c->close_after = true;
    }
    if (!tunnel) {
        if (c->close_after || !c->keepalive) {
            c->close_after = true;
            out_append(c, "connection: close\r\n", 19);
        } else if (c->minor0) {
            out_append(c, "connection: keep-alive\r\n", 24);
        }
    }
    out_append(c, "\r\n", 2);
    c->trailers_sent = false;
    (void)end_stream;
    queue_flush(c);
}

static void op_send_data(struct sk_stream *st, const char *p, size_t n)
{
    struct h1s *c = conn_of(st);
    if (c->state == S_CLOSED || n == 0 || c->resp_mode == RM_NONE) {
        if (c->state == S_TUNNEL && n)
            goto raw;
        return;
    }
    if (c->resp_mode == RM_CHUNKED) {
        char sz[24];
        size_t l = sk_fmt_hex(sz, n);
        sz[l++] = '\r';
        sz[l++] = '\n';
        if (out_append(c, sz, (size_t)l) < 0 || out_append(c, p, n) < 0 ||
            out_append(c, "\r\n", 2) < 0)
            return;
        queue_flush(c);
        return;
    }
raw:
    if (out_append(c, p, n) < 0)
        return;
    queue_flush(c);
}

static void op_send_trailers(struct sk_stream *st, const struct sk_hdrs *t)
{
    struct h1s *c = conn_of(st);
    if (c->state == S_CLOSED || c->resp_mode != RM_CHUNKED || c->trailers_sent)
        return;
    c->trailers_sent = true;
    out_append(c, "0\r\n", 3);
    for (uint32_t i = 0; t && i < t->n; i++) {
        out_append(c, t->v[i].name, t->v[i].nlen);
        out_append(c, ": ", 2);
        out_append(c, t->v[i].value, t->v[i].vlen);
        out_append(c, "\r\n", 2);
    }
    out_append(c, "\r\n", 2);
    queue_flush(c);
}

static void next_request(struct h1s *c);

static void op_send_end(struct sk_stream *st)
{
    struct h1s *c = conn_of(st);
    if (c->state == S_CLOSED)
        return;
    if (c->resp_mode == RM_CHUNKED && !c->trailers_sent)
        out_append(c, "0\r\n\r\n", 5);
    if (c->state == S_CLOSED)
        return;
    queue_flush(c);
    c->resp_done = true;
    if (!c->req_done || c->state == S_TUNNEL) {
        /* answered before the request body was read: we cannot find the next
         * request boundary cheaply, so this connection ends here (and a tunnel
         * the upstream closed ends with what it sent flushed first) */
        c->close_after = true;
        stream_finish(c);
        if (c->read_paused) {
            c->read_paused = false;
            update_io(c);
        }
        c->state = S_WAIT;
        flush_now(c);
        if (c->state != S_CLOSED && c->state != S_LINGER && !c->write_blocked)
            linger_close(c);
        return;
    }
    next_request(c);
}

static void op_reset(struct sk_stream *st)
{
    struct h1s *c = conn_of(st);
    /* h1 has no stream reset: the connection goes. Flush what we have first
     * is wrong here (a truncated body must not look complete), so close. */
    conn_close(c);
}

static bool op_congested(struct sk_stream *st)
{
    struct h1s *c = conn_of(st);
    return sk_buf_used(&c->out) > H1_HIGH_MARK;
}

static void op_pause_read(struct sk_stream *st, bool pause)
{
    struct h1s *c = conn_of(st);
    if (c->state == S_CLOSED || c->read_paused == pause)
        return;
    c->read_paused = pause;
    update_io(c);
    /* S_BODY with nothing buffered: the body's DONE may still be due (the
     * pause came with the last DATA; DONE needs one more, empty, step) */
    if (!pause && (sk_buf_used(&c->in) || c->state == S_BODY))
        process(c);
    if (!pause && c->state != S_CLOSED && !c->read_paused && sk_tp_has_buffered(&c->tp))
        ev_feed_event(c->base.w->loop, &c->io, EV_READ);
}

static void op_tunnel(struct sk_stream *st)
{
    struct h1s *c = conn_of(st);
    c->state = S_TUNNEL;
    c->close_after = true;
    ev_timer_stop(c->base.w->loop, &c->timer);
    /* bytes the client sent after its request head belong to the tunnel */
    if (sk_buf_used(&c->in)) {
        sk_stream_tunnel_data(st, sk_buf_rptr(&c->in), sk_buf_used(&c->in));
        sk_buf_consume(&c->in, sk_buf_used(&c->in));
    }
}

static void op_send_1xx(struct sk_stream *st, int status)
{
    struct h1s *c = conn_of(st);
    if (status == 100) {
        out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        queue_flush(c);
    }
}

static const struct sk_downstream_ops h1_ops = {
    op_send_head, op_send_data, op_send_trailers, op_send_end, op_reset,
    op_congested, op_pause_read, op_tunnel, op_send_1xx,
};

/* ---- request side ---------------------------------------------------------------- */

static void next_request(struct h1s *c)
{
    stream_finish(c);
    if (c->close_after || !c->keepalive || c->draining) {
        c->close_after = true;
        flush_now(c);
        if (c->state != S_CLOSED && c->state != S_LINGER && !c->write_blocked)
            linger_close(c);
        return;
    }
    c->state = S_HEAD;
    c->resp_done = c->req_done = false;
    if (c->read_paused) {
        c->read_paused = false;
        update_io(c);
    }
    idle_timer_start(c);
    if (sk_buf_used(&c->in)) {
        process(c); /* pipelined request already buffered */
    } else {
        sk_buf_shrink(&c->in);
    }
    if (c->state == S_HEAD && sk_tp_has_buffered(&c->tp))
        ev_feed_event(c->base.w->loop, &c->io, EV_READ);
}

/* Reply without a stream object (malformed request, head timeout), then close. */
static void reply_close(struct h1s *c, int status, const char *flag, const char *what,
                        const char *why)
{
    char buf[512];
    int bl = snprintf(buf, sizeof(buf), "%s: %s\n", what, why);
    if (bl < 0 || (size_t)bl >= sizeof(buf))
        bl = (int)strlen(buf);
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                      "x-skiff-flags: %s\r\nconnection: close\r\n\r\n",
                      status, reason_phrase(status), bl, flag);
    sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_4xx, 1);
    char ip[64];
    if (c->peer.v4.sin_family == AF_INET6)
        inet_ntop(AF_INET6, &c->peer.v6.sin6_addr, ip, sizeof(ip));
    else
        inet_ntop(AF_INET, &c->peer.v4.sin_addr, ip, sizeof(ip));
    sk_warn("conn %llu: %s: %d (%s) %s: %s", (unsigned long long)c->id, ip, status, flag, what,
            why);
    sk_buf_append(&c->out, head, (size_t)hl);
    sk_buf_append(&c->out, buf, (size_t)bl);
    c->close_after = true;
    c->resp_done = true;
    c->state = S_WAIT;
    flush_now(c);
    if (c->state != S_CLOSED && c->state != S_LINGER && !c->write_blocked)
        linger_close(c);
}

static void reject(struct h1s *c, int status, const char *why)
{
    sk_stat_add(&c->base.w->stats, SK_ST_downstream_cx_protocol_error, 1);
    reply_close(c, status, "DPE", "malformed request", why);
}

/* Point the connection at the worker's newest snapshot, if its listener and
 * filter chain still exist there (route changes apply to new requests on
 * existing connections; a removed listener drains). */
static void refresh_config(struct h1s *c)
{
    struct sk_worker *w = c->base.w;
    if (!w->snap || w->snap == c->snap)
        return;
    const struct sk_listener *nl = sk_snapshot_find_listener(w->snap, c->l->name);
    if (!nl) {
        c->close_after = true;
        return;
    }
    const struct sk_filter_chain *nfc = NULL;
    size_t idx = (size_t)(c->fc - c->l->chains);
    if (c->fc == c->l->default_chain)
        nfc = nl->default_chain;
    else if (idx < nl->nchains && idx < c->l->nchains)
        nfc = &nl->chains[idx];
    if (!nfc || nfc->kind != SK_CHAIN_HCM) {
        c->close_after = true;
        return;
    }
    sk_snapshot_unref(c->snap);
    c->snap = sk_snapshot_ref(w->snap);
    c->l = nl;
    c->fc = nfc;
}

static int start_stream(struct h1s *c, const struct sk_h1_msg *m, size_t head_len)
{
    struct sk_worker *w = c->base.w;
    struct stream_box *b = stream_alloc();
    if (!b)
        return SK_ERR_NOMEM;
    b->reap.free_fn = stream_free;
    struct sk_stream *st = &b->st;
    st->w = w;
    st->ops = &h1_ops;
    st->conn = c;
    st->tls = c->tp.ssl;
    st->conn_id = c->id;
    st->stream_id = ++c->nreq;
    st->snap = c->snap;
    st->listener = c->l;
    st->hcm = c->fc->hcm;
    st->t_start = ev_now(w->loop);
    st->scheme = c->tp.ssl ? "https" : "http";
    /* copy what outlives the input buffer into the stream arena: the head
     * from the method on, in one piece; the fields point into the copy
     * (names lower-cased), method and target are NUL-terminated at the SP
     * after each, the Host value at its end */
    const char *span = m->method;
    char *blk = sk_hdrs_add_h1(&st->req, &st->arena, span,
                               (size_t)(m->fields + m->fields_len - span), m->hdrs, m->nhdrs);
    if (!blk) {
        sk_arena_reset(&st->arena);
        stream_free(&b->reap);
        return SK_ERR_NOMEM;
    }
    blk[m->method_len] = 0;
    st->method = blk;
    st->method_len = (uint32_t)m->method_len;
    char *t = blk + (m->target - span);
    t[m->target_len] = 0;
    st->path = t;
    st->path_len = (uint32_t)m->target_len;
    if (m->host) {
        st->authority = blk + (m->host - span);
        st->authority_len = (uint32_t)m->host_len;
    }
    /* absolute-form (RFC 9112 3.2.2): the target's authority replaces Host,
     * the path is what follows it ("/" when empty) */
    size_t skip = 0;
    if (m->target_len > 7 && strncasecmp(t, "http://", 7) == 0)
        skip = 7;
    else if (m->target_len > 8 && strncasecmp(t, "https://", 8) == 0)
        skip = 8;
    if (skip && !(m->flags & SK_H1_F_CONNECT)) {
        const char *auth = t + skip;
        size_t rest = m->target_len - skip;
        size_t alen = strcspn(auth, "/?");
        if (alen > rest)
            alen = rest;
        /* userinfo is not allowed in http(s) URIs sent to a server */
        if (alen == 0 || memchr(auth, '@', alen)) {
            sk_arena_reset(&st->arena);
            stream_free(&b->reap);
            return SK_ERR_H1_BAD_START;
        }
        st->authority = auth;
        st->authority_len = (uint32_t)alen;
        if (alen == rest) {
            st->path = "/";
            st->path_len = 1;
        } else if (auth[alen] == '?') {
            char *p2 = sk_arena_alloc(&st->arena, rest - alen + 2);
            if (!p2) {
                sk_arena_reset(&st->arena);
                stream_free(&b->reap);
                return SK_ERR_NOMEM;
            }
            p2[0] = '/';
            memcpy(p2 + 1, auth + alen, rest - alen);
            st->path = p2;
            st->path_len = (uint32_t)(rest - alen + 1);
        } else {
            st->path = auth + alen;
            st->path_len = (uint32_t)(rest - alen);
        }
        /* the router writes Host from st->authority, so the upstream sees one */
    }
    st->req_flags = m->flags;
    st->req_body_kind = m->body_kind;
    st->req_content_length = m->content_length;
    /* per request, not kept on the connection: an idle keep-alive
     * connection costs its struct, and the IPv4 form is a few table lookups */
    if (c->peer.v4.sin_family == AF_INET6)
        inet_ntop(AF_INET6, &c->peer.v6.sin6_addr, st->peer_ip, sizeof(st->peer_ip));
    else
        sk_fmt_ipv4(st->peer_ip, &c->peer.v4.sin_addr); /* inet_ntop goes through sprintf */
    st->peer_port = ntohs(c->peer.v4.sin_family == AF_INET6 ? c->peer.v6.sin6_port
                                                            : c->peer.v4.sin_port);
    c->st = st;
    c->minor0 = m->minor_version == 0;
    c->keepalive = (m->flags & SK_H1_F_KEEPALIVE) != 0;
    c->resp_done = false;
    c->req_done = m->body_kind == SK_H1_BODY_NONE;
    st->req_end = c->req_done;
    sk_h1_body_init(&c->body, m->body_kind, m->content_length,
                    (size_t)c->fc->hcm->max_request_headers_kb * 1024);
    sk_buf_consume(&c->in, head_len);
    c->state = c->req_done ? S_WAIT : S_BODY;
    sk_stat_add(&w->stats, SK_ST_downstream_rq_active, 1);
    /* a request is in progress: the head timer stops; an idle timer may run
     * on (lazy, see idle_timer_start): firing now it finds a request and stops */
    if (c->hdr_timer)
        ev_timer_stop(w->loop, &c->timer);
    return 0;
}

/* codec_type AUTO and the client sent the HTTP/2 preface: hand the socket,
 * the bytes read so far and our snapshot reference to the h2 codec. This
 * object then only waits for the reap list (we are inside its callbacks). */
static void to_h2(struct h1s *c)
{
    struct sk_worker *w = c->base.w;
    struct sk_sockaddr peer = {0};
    peer.len = c->peer.v4.sin_family == AF_INET6 ? sizeof(c->peer.v6) : sizeof(c->peer.v4);
    memcpy(&peer.ss, &c->peer, peer.len);
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->timer);
    int fd = c->tp.fd;
    SSL *ssl = c->tp.ssl;
    struct sk_snapshot *snap = c->snap;
    c->tp.fd = -1;
    c->tp.ssl = NULL;
    c->snap = NULL;
    c->state = S_CLOSED;
    sk_worker_conn_unlink(w, &c->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, -1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_http1_total, -1);
    sk_scope_add(c->l->scope, w->id, SK_SC_downstream_cx_active, -1); /* h2 counts it again */
    sk_h2_accept(w, c->l, c->fc, fd, ssl, &peer, snap, sk_buf_rptr(&c->in),
                 sk_buf_used(&c->in));
    sk_worker_reap(w, &c->reap);
}

static void process_head(struct h1s *c)
{
    const struct sk_hcm *hcm = c->fc->hcm;
    if (c->nreq == 0 && hcm->codec_type == SK_CODEC_AUTO) {
        int pm = sk_h2_preface_match(sk_buf_rptr(&c->in), sk_buf_used(&c->in));
        if (pm == 0)
            return; /* still a prefix of the preface: wait for more */
        if (pm > 0) {
            to_h2(c);
            return;
        }
    }
    size_t maxh = hcm->max_headers_count ? hcm->max_headers_count : 100;
    if (maxh > H1_MAX_HDRS_CAP)
        maxh = H1_MAX_HDRS_CAP;
    struct sk_h1_header hdrs[H1_MAX_HDRS_CAP];
    struct sk_h1_msg m; /* the parser resets every other field */
    m.hdrs = hdrs;
    m.hdrs_cap = maxh;
    struct sk_h1_limits lim = {(size_t)hcm->max_request_headers_kb * 1024, maxh};
    ssize_t r = sk_h1_parse_request(sk_buf_rptr(&c->in), sk_buf_used(&c->in), &m, &lim);
    if (r == SK_ERR_AGAIN)
        return;
    if (r < 0) {
        int status = (r == SK_ERR_H1_HDR_TOO_LARGE || r == SK_ERR_H1_TOO_MANY_HDRS) ? 431 : 400;
        if (r == SK_ERR_H1_BAD_VERSION)
            status = 505;
        if (r == SK_ERR_H1_BAD_TE)
            status = 501;
        if (r == SK_ERR_H1_SMUGGLE || r == SK_ERR_H1_BAD_TE || r == SK_ERR_H1_BAD_CL || r == SK_ERR_H1_OBS_FOLD)
            sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_rejected_smuggling, 1);
        reject(c, status, sk_strerror((int)r));
        return;
    }
    refresh_config(c);
    int sr = start_stream(c, &m, (size_t)r);
    if (sr == SK_ERR_H1_BAD_START) {
        reject(c, 400, "invalid absolute-form request target");
        return;
    }
    if (sr < 0) {
        reject(c, 503, "out of memory");
        return;
    }
    sk_stream_headers(c->st);
}

static void process_body(struct h1s *c)
{
    struct sk_hdrs trailers = {0};
    bool have_trailers = false;
    /* step even with an empty buffer: DONE after the last DATA/TRAILERS event
     * comes from one more call that consumes nothing */
    while (c->state == S_BODY && !c->read_paused) {
        int ev = 0;
        const char *d = NULL;
        size_t dl = 0;
        ssize_t r = sk_h1_body_step(&c->body, sk_buf_rptr(&c->in), sk_buf_used(&c->in), &ev, &d,
                                    &dl);
        if (r < 0) {
            /* the head was forwarded already: the stream dies with the connection */
            sk_stat_add(&c->base.w->stats, SK_ST_downstream_cx_protocol_error, 1);
            if (c->st && !c->st->resp_started) {
                c->req_done = true;
                sk_stream_abort(c->st, SK_TERM_DOWNSTREAM_PROTO);
                c->close_after = true;
                sk_stream_local_reply(c->st, SK_TERM_DOWNSTREAM_PROTO, 400, sk_strerror((int)r));
            } else {
                conn_close(c);
            }
            return;
        }
        if (ev == SK_H1_BEV_DATA) {
            /* the stream may pause us or answer (and finish) inside */
            sk_stream_data(c->st, d, dl);
            if (c->state == S_CLOSED)
                return;
            sk_buf_consume(&c->in, (size_t)r);
        } else if (ev == SK_H1_BEV_TRAILERS) {
            struct sk_h1_header th[64];
            ssize_t nt = sk_h1_parse_trailers(d, dl, th, 64);
            if (nt < 0) {
                conn_close(c);
                return;
            }
            if (c->st)
                for (ssize_t i = 0; i < nt; i++)
                    sk_hdrs_add(&trailers, &c->st->arena, th[i].name, th[i].name_len,
                                th[i].value, th[i].value_len);
            have_trailers = true;
            sk_buf_consume(&c->in, (size_t)r);
        } else if (ev == SK_H1_BEV_DONE) {
            sk_buf_consume(&c->in, (size_t)r);
            c->req_done = true;
            c->state = S_WAIT;
            if (c->st)
                sk_stream_end(c->st, have_trailers ? &trailers : NULL);
            return;
        } else {
            sk_buf_consume(&c->in, (size_t)r);
            if (r == 0)
                return;
        }
    }
}

static void process(struct h1s *c)
{
    if (c->in_process)
        return;
    c->in_process = true;
    for (;;) {
        uint8_t s = c->state;
        if (s == S_HEAD && sk_buf_used(&c->in)) {
            process_head(c);
            if (c->state == S_HEAD)
                break; /* need more bytes */
        } else if (s == S_BODY) {
            process_body(c);
            if (c->state == S_BODY)
                break;
        } else if (s == S_TUNNEL) {
            if (sk_buf_used(&c->in) && c->st) {
                sk_stream_tunnel_data(c->st, sk_buf_rptr(&c->in), sk_buf_used(&c->in));
                if (c->state == S_TUNNEL)
                    sk_buf_consume(&c->in, sk_buf_used(&c->in));
            }
            break;
        } else {
            break;
        }
    }
    c->in_process = false;
    if (c->state == S_HEAD && !c->st && sk_buf_used(&c->in))
        hdr_timer_start(c); /* a partial head is buffered */
}

static void on_readable(struct h1s *c)
{
    if (c->state == S_LINGER) {
        char tmp[4096];
        ssize_t r = c->tp.ssl ? SSL_read(c->tp.ssl, tmp, sizeof(tmp)) : read(c->tp.fd, tmp, sizeof(tmp));
        if (c->tp.ssl && r <= 0) {
            int e = SSL_get_error(c->tp.ssl, (int)r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            conn_close(c);
            return;
        }
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            conn_close(c);
        return;
    }
    if (c->state == S_WAIT && sk_buf_room(&c->in) == 0) {
        /* pipelined bytes fill the buffer: wait for the response */
        c->read_paused = true;
        update_io(c);
        return;
    }
    ssize_t r = sk_tp_read(&c->tp, &c->in, 0);
    if (r == SK_ERR_AGAIN)
        return;
    if (r == SK_ERR_TOO_LARGE) {
        if (c->state == S_HEAD) {
            process(c);
            if (c->state == S_HEAD)
                reject(c, 431, "request head too large");
        } else {
            c->read_paused = true;
            update_io(c);
        }
        return;
    }
    if (r > 0) {
        process(c);
        if (c->state != S_CLOSED && !c->read_paused && sk_tp_has_buffered(&c->tp))
            ev_feed_event(c->base.w->loop, &c->io, EV_READ);
        return;
    }
    /* EOF or error from the client */
    if (c->state == S_TUNNEL && c->st && r == 0) {
        sk_stream_tunnel_eof(c->st);
        c->read_paused = true;
        update_io(c);
        return;
    }
    if (c->st && !c->resp_done)
        sk_stream_abort(c->st, SK_TERM_CLIENT_RESET);
    conn_close(c);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct h1s *c = io->data;
    if (revents & EV_WRITE) {
        do_write(c);
        if (c->state == S_CLOSED)
            return;
    }
    if ((revents & EV_READ) || (c->tp.ssl && c->tp.want_rd == SK_TLS_WANT_WRITE))
        on_readable(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *tm, int revents)
{
    struct h1s *c = tm->data;
    if (c->state == S_LINGER) {
        conn_close(c);
        return;
    }
    if (c->state == S_HEAD && !c->st) {
        if (c->hdr_timer) {
            c->hdr_timer = false;
            sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_header_timeout, 1);
            char d[64];
            snprintf(d, sizeof(d), "request headers not received within %llu ms",
                     (unsigned long long)c->fc->hcm->request_headers_timeout_ms);
            reply_close(c, 408, "RQT", "request header timeout", d);
            return;
        }
        /* the idle timer is armed lazily: the deadline may have moved on */
        double left = c->idle_deadline - ev_now(loop);
        if (left > 0.001) {
            uint64_t ms = c->fc->hcm->idle_timeout_ms;
            double t = (double)ms / 1000.0;
            if (ms != SK_DUR_NONE && ms != 0 && left > t)
                left = t; /* the wall clock went back */
            ev_timer_set(tm, left, 0.);
            ev_timer_start(loop, tm);
            return;
        }
        sk_stat_add(&c->base.w->stats, SK_ST_downstream_cx_idle_timeout, 1);
        conn_close(c);
    }
}

void sk_http_accept(struct sk_worker *w, const struct sk_listener *l,
                    const struct sk_filter_chain *fc, int fd, SSL *ssl,
                    const struct sk_sockaddr *peer)
{
    /* HTTP/2 by config, or by ALPN on TLS */
    const char *alpn = ssl ? sk_tls_alpn(ssl) : NULL;
    if (fc->hcm->codec_type == SK_CODEC_HTTP2 ||
        (alpn && strcmp(alpn, "h2") == 0 && fc->hcm->codec_type != SK_CODEC_HTTP1)) {
        sk_h2_accept(w, l, fc, fd, ssl, peer, NULL, NULL, 0);
        return;
    }
    struct h1s *c = calloc(1, sizeof(*c));
    if (!c) {
        if (ssl)
            SSL_free(ssl);
        close(fd);
        return;
    }
    c->reap.free_fn = conn_free;
    c->flush.free_fn = flush_cb;
    c->base.drain = conn_drain;
    c->tp.fd = fd;
    c->tp.ssl = ssl;
    c->snap = sk_snapshot_ref(w->snap);
    c->l = l;
    c->fc = fc;
    c->id = ++w->next_conn_id;
    if (peer->ss.ss_family == AF_INET6)
        memcpy(&c->peer.v6, &peer->ss, sizeof(c->peer.v6));
    else
        memcpy(&c->peer.v4, &peer->ss, sizeof(c->peer.v4));
    uint32_t cap = l->per_connection_buffer_limit_bytes;
    size_t head_max = (size_t)fc->hcm->max_request_headers_kb * 1024;
    if (cap < head_max + 1024)
        cap = (uint32_t)(head_max + 1024);
    sk_buf_init(&c->in, cap);
    sk_buf_init(&c->out, (size_t)cap + H1_HIGH_MARK * 2);
    sk_worker_conn_link(w, &c->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, 1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_http1_total, 1);
    sk_scope_add(l->scope, w->id, SK_SC_downstream_cx_active, 1);
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    c->io.data = c;
    ev_io_start(w->loop, &c->io);
    ev_init(&c->timer, conn_timer_cb);
    c->timer.data = c;
    idle_timer_start(c);
    if (w->draining)
        conn_drain(&c->base);
}
