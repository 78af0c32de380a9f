/* HTTP/2 upstream client on nghttp2 (h2c with prior knowledge, or h2 over TLS
 * with ALPN "h2" required). See h2_client.h for the contract with the router.
 *
 * Bytes move through the transport layer (transport.h), plaintext or TLS, the
 * same as for HTTP/1.1 upstreams: with a cluster transport_socket the TCP
 * connect is followed by the TLS handshake (SNI, client certificate, SAN
 * matchers and session resumption from the cluster's UpstreamTlsContext); the
 * connection counts as connected only once the handshake is done and the
 * server selected "h2". A TLS read may need writability and a write
 * readability (io_cb follows the transport's want_rd / want_wr), and bytes
 * OpenSSL already decrypted are drained without waiting for the socket.
 *
 * I/O mirrors h2_server.c: transport bytes go into nghttp2_session_mem_recv,
 * frames come out of nghttp2_session_mem_send into a bounded output buffer.
 * Work triggered by the router (new request, body bytes, resumed reading) is
 * coalesced into one deferred flush per connection and loop iteration; the
 * session is never re-entered (mem_recv/mem_send only from I/O, timer and
 * deferred callbacks).
 *
 * Flow control is real in both directions. Request bodies go through a
 * bounded per-stream buffer read by a deferred data provider (congested()
 * above a high mark, on_drained below the low mark). Response DATA is
 * consumed (automatic WINDOW_UPDATE is off) only once the router has taken
 * it; while the router pauses us, DATA the server may still send within the
 * stream window is held per stream, and the server stalls on the window.
 *
 * Lifetime: a stream object is freed (worker reap list) once the router is
 * done with it (release/abort/on_error) and nghttp2 is done with it (stream
 * closed, or the HEADERS never went out, or the connection is gone). A
 * connection is freed from the reap list after it closed; its nghttp2
 * session is deleted there, never below one of its callbacks. */
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "skiff/ascii.h"
#include "skiff/err.h"
#include "skiff/evio.h"
#include "skiff/h2_client.h"
#include "skiff/hoststate.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/ngmem.h"
#include "skiff/net.h"
#include "skiff/stream.h"
#include "skiff/tls.h"
#include "skiff/toxics.h"
#include "skiff/transport.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

#define UC_STREAM_WINDOW (256u * 1024)       /* our SETTINGS_INITIAL_WINDOW_SIZE */
#define UC_CONN_WINDOW (4u * 1024 * 1024)    /* connection-level receive window */
#define UC_MAX_HDR_BYTES (64u * 1024)        /* one response header block */
#define UC_MAX_HDRS 128u                     /* fields per header block */
#define UC_FIRST_HDRS 16u                    /* first allocation (doubles up to the max) */
#define UC_MAX_1XX 16u                       /* informational heads per response */
#define UC_DEF_MAX_STREAMS 100u              /* cluster h2 max_concurrent_streams unset */
#define UC_OUT_HIGH (64 * 1024)              /* stop pulling frames above this */
#define UC_OUT_CAP (4 * 1024 * 1024)         /* hard cap of the output buffer */
#define UC_BODY_HIGH (256 * 1024)            /* request body unsent: congested */
#define UC_BODY_LOW (64 * 1024)              /* ... and drained */
#define UC_REPLAY_CAP (64 * 1024)            /* bodies up to this stay replayable */
#define UC_MAX_REISSUE 2u                    /* transparent re-issues per request */
#define UC_SESSION_MEM_CAP (16u * 1024 * 1024) /* nghttp2's own allocations */
#define UC_READ_CHUNK (64 * 1024)
#define UC_READ_ROUNDS 4 /* reads per readiness event before yielding to the loop */
#define UC_MAX_STREAM_ID 0x7ffffff0 /* stop opening streams near the id limit */

enum { C_CONNECTING = 0, C_OPEN, C_CLOSED };

struct h2uc;

struct h2us {
    struct sk_up base; /* first: a struct sk_up * is a struct h2us * */
    struct sk_reap reap;
    struct sk_worker *w;
    struct sk_host *host; /* ref: the stream may move to another connection */
    struct h2uc *c;       /* current connection; NULL once detached */
    struct h2us *prev, *next;
    const struct sk_upconn_cbs *cbs;
    void *ctx;
    unsigned req_flags;
    int32_t id;
    struct sk_arena arena; /* request head copy (replay), response heads */
    nghttp2_nv *nva;
    size_t nnv;
    nghttp2_nv *tnva; /* request trailers */
    size_t ntnv;
    struct sk_buf body; /* request body; [0, body_sent) already handed to nghttp2 */
    size_t body_sent;
    /* response header block being received */
    struct sk_h1_header *rh;
    size_t nrh;
    size_t rh_cap; /* entries allocated at rh (grows by doubling to UC_MAX_HDRS) */
    size_t rh_bytes;
    int status;
    bool has_cl;
    uint64_t cl;
    bool hdr_bad;
    unsigned n1xx;
    /* response data held while the router pauses us */
    struct sk_buf hold;
    struct sk_h1_header *th; /* trailers held behind `hold` */
    size_t nth;
    bool hold_end; /* END_STREAM (after `hold` and `th`) still to deliver */
    bool end_rcvd; /* the server's END_STREAM arrived (maybe still held) */
    unsigned reissues;
    bool has_body;   /* a data provider is attached */
    bool replayable; /* `body` holds the whole body from its first byte */
    bool req_eof;    /* send_end called */
    bool deferred;   /* data provider returned DEFERRED */
    bool end_sent;   /* our END_STREAM went out */
    bool submitted;  /* nghttp2_submit_request succeeded on c */
    bool ng_open;    /* nghttp2 may still call back for this stream */
    bool hdrs_sent;  /* the request HEADERS left nghttp2 */
    bool got_frame;  /* the server said anything on this stream */
    bool head_done;  /* final response head delivered */
    bool resp_done;  /* END_STREAM received */
    bool user_done;  /* released / aborted / failed: no more callbacks */
    bool paused;
    bool want_drained;
    bool told; /* on_connected delivered for the current connection */
    bool reaped;
};

struct h2uc {
    bool toxic; /* an L4 toxic acts on this connection (flag TX on its streams) */
    struct sk_reap reap;
    struct sk_reap flush;
    struct h2uc *prev_all, *next_all; /* the worker's connections */
    struct sk_worker *w;
    struct sk_host *host;
    struct sk_transport tp; /* fd + SSL (NULL = h2c) */
    struct sk_buf in;       /* transport bytes on their way to nghttp2 (empty between reads) */
    int state;
    ev_io io;
    ev_timer timer; /* connect timeout, then idle timeout */
    nghttp2_session *ng;
    struct sk_ngmem ngm; /* nghttp2's own memory, capped */
    struct sk_buf out;
    struct h2us *streams;
    uint32_t nstreams;
    uint32_t nreq; /* requests submitted */
    uint64_t id;
    int32_t goaway_last;
    bool goaway;   /* GOAWAY received */
    bool draining; /* no new streams */
    bool write_blocked;
    bool flush_queued;
    bool in_pump;
    bool in_recv;
    bool handshaking; /* C_CONNECTING: TCP is up, the TLS handshake runs */
};

/* Per-worker connection lists. A global array (not thread-local storage) so
 * that connections still open at exit stay reachable. */
static struct h2uc *conns_of[SK_MAX_WORKERS];

static const struct sk_up_vt h2_vt;

static void queue_flush(struct h2uc *c);
static void conn_fail(struct h2uc *c, int cause, const char *detail);
static void maybe_free(struct h2us *s);
static bool try_reissue(struct h2us *s, struct h2uc *exclude);
static int submit(struct h2us *s);

#define US(u) ((struct h2us *)(u))

/* ---- small helpers ------------------------------------------------------------ */

static const struct sk_cluster *cfg_of(const struct sk_host *h)
{
    return h && h->cl ? h->cl->cfg : NULL;
}

static uint32_t conn_capacity(const struct h2uc *c)
{
    const struct sk_cluster *cfg = cfg_of(c->host);
    uint32_t lim = cfg && cfg->h2_max_concurrent_streams ? cfg->h2_max_concurrent_streams
                                                         : UC_DEF_MAX_STREAMS;
    uint32_t peer =
        nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return peer < lim ? peer : lim;
}

static bool conn_usable(const struct h2uc *c)
{
    if (c->state == C_CLOSED || c->draining || c->goaway || c->host->removed)
        return false;
    if (nghttp2_session_get_next_stream_id(c->ng) > UC_MAX_STREAM_ID)
        return false;
    const struct sk_cluster *cfg = cfg_of(c->host);
    if (cfg && cfg->max_requests_per_connection && c->nreq >= cfg->max_requests_per_connection)
        return false;
    return c->nstreams < conn_capacity(c);
}

static struct h2us *find_stream(struct h2uc *c, int32_t id)
{
    for (struct h2us *s = c->streams; s; s = s->next)
        if (s->id == id && s->submitted)
            return s;
    return NULL;
}

/* The stream a callback is about, if it is still ours on this connection. */
static struct h2us *lookup(struct h2uc *c, nghttp2_session *ng, int32_t id)
{
    struct h2us *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s || s->c != c || s->id != id || !s->ng_open)
        s = find_stream(c, id);
    if (!s || s->c != c || !s->ng_open)
        return NULL;
    return s;
}

static void stream_link(struct h2uc *c, struct h2us *s)
{
    s->c = c;
    s->prev = NULL;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nstreams++;
    s->told = false;
    if (c->state == C_OPEN)
        ev_timer_stop(c->w->loop, &c->timer); /* the idle timer */
}

static void stream_unlink(struct h2us *s)
{
    struct h2uc *c = s->c;
    if (!c)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    c->nstreams--;
    s->c = NULL;
    if (c->nstreams == 0 && c->state != C_CLOSED)
        queue_flush(c); /* idle: start the idle timer or close (flush_cb) */
}

/* ---- connection lifecycle ------------------------------------------------------ */

static void conn_free(struct sk_reap *r)
{
    struct h2uc *c = SK_CONTAINER_OF(r, struct h2uc, reap);
    if (c->ng)
        nghttp2_session_del(c->ng);
    sk_buf_free(&c->out);
    sk_buf_free(&c->in);
    if (c->host)
        sk_host_unref(c->host);
    free(c);
}

static void list_remove(struct h2uc *c)
{
    int wid = c->w->id;
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else if (conns_of[wid] == c)
        conns_of[wid] = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    c->prev_all = c->next_all = NULL;
}

/* Close the transport and account for it; streams are handled by callers. */
static void conn_shut(struct h2uc *c)
{
    if (c->state == C_CLOSED)
        return;
    struct sk_worker *w = c->w;
    c->state = C_CLOSED;
    c->draining = true;
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->timer);
    sk_tp_close(&c->tp); /* close_notify first on TLS (best effort) */
    list_remove(c);
    struct sk_host *h = c->host;
    if (h->active_cx)
        h->active_cx--;
    if (h->cl->cs)
        atomic_fetch_sub_explicit(&h->cl->cs->cx_active, 1, memory_order_relaxed);
    sk_stat_add(&w->stats, SK_ST_upstream_cx_active, -1);
    sk_stat_add(&w->stats, SK_ST_upstream_cx_destroy, 1);
    sk_worker_reap(w, &c->reap);
}

static void fail_stream(struct h2us *s, int cause, const char *detail);
static void deliver_held(struct h2us *s);

/* The connection is gone: every stream on it ends. Streams the server
 * provably never processed are re-issued elsewhere when possible
 * (`reissue`); streams whose response is complete but not yet delivered
 * are delivered now. Never called below an nghttp2 callback. */
static void conn_fail_ex(struct h2uc *c, int cause, const char *detail, bool reissue)
{
    if (c->state == C_CLOSED)
        return;
    conn_shut(c);
    while (c->streams) {
        struct h2us *s = c->streams;
        bool unprocessed = !s->got_frame && (!s->hdrs_sent || (c->goaway && s->id > c->goaway_last));
        int32_t id = s->id;
        stream_unlink(s);
        s->ng_open = false;
        if (s->user_done) {
            maybe_free(s);
            continue;
        }
        if (s->resp_done || s->end_rcvd) {
            /* complete response still held behind a pause: hand it over */
            s->paused = false;
            deliver_held(s);
            maybe_free(s);
            continue;
        }
        if (reissue && unprocessed && try_reissue(s, c))
            continue;
        char d[160];
        if (cause == SK_TERM_UPSTREAM_RESET && unprocessed)
            snprintf(d, sizeof(d), "%s (stream %d not processed)", detail, (int)id);
        else
            snprintf(d, sizeof(d), "%s", detail);
        fail_stream(s, cause, d);
        maybe_free(s);
    }
}

static void conn_fail(struct h2uc *c, int cause, const char *detail)
{
    conn_fail_ex(c, cause, detail, cause != SK_TERM_CONNECT_FAIL);
}

/* Why the transport failed: the TLS reason when there is one, else `dflt`. */
static const char *io_why(struct h2uc *c, char *buf, size_t n, const char *dflt)
{
    const char *why = c->tp.ssl ? sk_tls_why(c->tp.ssl) : NULL;
    if (why && why[0]) {
        if (strcmp(why, "socket error") == 0 && dflt)
            snprintf(buf, n, "TLS: socket error: %s", dflt); /* e.g. connection reset */
        else
            snprintf(buf, n, "TLS: %s", why);
        return buf;
    }
    return dflt;
}

static void update_io(struct h2uc *c)
{
    if (c->state == C_CLOSED || c->handshaking)
        return; /* the handshake sets its own events */
    int ev = EV_WRITE;
    if (c->state == C_OPEN) {
        /* always reading: the server may speak at any time (SETTINGS, PING,
         * GOAWAY, TLS session tickets); TLS may need the other readiness */
        ev = sk_tp_events_for_read(&c->tp);
        if (c->write_blocked)
            ev |= sk_tp_events_for_write(&c->tp);
    }
    sk_io_set(c->w->loop, &c->io, ev);
}

/* Idle connection: close it if it will not be used again, else arm the
 * idle timer. */
static void idle_check(struct h2uc *c)
{
    if (c->state == C_CLOSED || c->nstreams)
        return;
    if (c->draining || c->goaway || c->host->removed || c->w->draining || !conn_usable(c)) {
        if (c->state == C_OPEN) {
            /* polite: tell the server we are done; best effort */
            nghttp2_session_terminate_session(c->ng, NGHTTP2_NO_ERROR);
            const uint8_t *d = NULL;
            ssize_t n;
            while (!c->write_blocked && (n = nghttp2_session_mem_send(c->ng, &d)) > 0)
                if (sk_buf_append(&c->out, d, (size_t)n) < 0)
                    break;
            while (sk_buf_used(&c->out) && sk_tp_write(&c->tp, &c->out) > 0)
                ;
        }
        conn_shut(c);
        return;
    }
    if (c->state != C_OPEN || ev_is_active(&c->timer))
        return;
    const struct sk_cluster *cfg = cfg_of(c->host);
    if (cfg && cfg->idle_timeout_ms != SK_DUR_NONE && cfg->idle_timeout_ms > 0) {
        ev_timer_set(&c->timer, (double)cfg->idle_timeout_ms / 1000.0, 0.);
        ev_timer_start(c->w->loop, &c->timer);
    }
}

/* ---- writing ------------------------------------------------------------------- */

static size_t unsent(const struct h2us *s)
{
    return sk_buf_used(&s->body) - s->body_sent;
}

static void notify_drained(struct h2uc *c)
{
again:
    for (struct h2us *s = c->streams; s; s = s->next) {
        if (s->want_drained && !s->user_done && unsent(s) <= UC_BODY_LOW) {
            s->want_drained = false;
            if (s->cbs && s->cbs->on_drained) {
                s->cbs->on_drained(s->ctx);
                if (c->state == C_CLOSED)
                    return;
                goto again;
            }
        }
    }
}

static void pump(struct h2uc *c)
{
    if (c->state != C_OPEN || c->in_pump || c->in_recv)
        return;
    c->in_pump = true;
    for (;;) {
        while (!c->write_blocked && sk_buf_used(&c->out) < UC_OUT_HIGH) {
            const uint8_t *d = NULL;
            ssize_t n = nghttp2_session_mem_send(c->ng, &d);
            if (n < 0) {
                c->in_pump = false;
                conn_fail(c, SK_TERM_UPSTREAM_PROTO, nghttp2_strerror((int)n));
                return;
            }
            if (n == 0)
                break;
            if (sk_buf_append(&c->out, d, (size_t)n) < 0) {
                c->in_pump = false;
                conn_fail(c, SK_TERM_OVERFLOW, "h2 upstream output buffer limit");
                return;
            }
        }
        if (c->state != C_OPEN) { /* a callback failed the connection */
            c->in_pump = false;
            return;
        }
        if (sk_buf_used(&c->out) == 0 || c->write_blocked)
            break;
        bool progressed = false;
        while (sk_buf_used(&c->out)) {
            ssize_t r = sk_tp_write(&c->tp, &c->out);
            if (r == SK_ERR_AGAIN) {
                c->write_blocked = true;
                update_io(c);
                break;
            }
            if (r < 0) {
                char d[128];
                c->in_pump = false;
                conn_fail(c, SK_TERM_UPSTREAM_RESET, io_why(c, d, sizeof(d), strerror(errno)));
                return;
            }
            progressed = true;
        }
        if (c->write_blocked || !progressed)
            break;
    }
    if (sk_buf_used(&c->out) == 0)
        sk_buf_shrink(&c->out);
    c->in_pump = false;
    notify_drained(c);
    if (c->state == C_OPEN && sk_buf_used(&c->out) == 0 && !nghttp2_session_want_read(c->ng) &&
        !nghttp2_session_want_write(c->ng)) {
        conn_fail(c, SK_TERM_UPSTREAM_RESET, "upstream h2 session ended");
    }
}

static void deliver_pending(struct h2uc *c)
{
again:
    for (struct h2us *s = c->streams; s; s = s->next) {
        if (!s->user_done && !s->paused && (sk_buf_used(&s->hold) || s->hold_end)) {
            deliver_held(s);
            if (c->state == C_CLOSED)
                return;
            goto again;
        }
    }
}

static void flush_cb(struct sk_reap *r)
{
    struct h2uc *c = SK_CONTAINER_OF(r, struct h2uc, flush);
    c->flush_queued = false;
    if (c->state == C_CLOSED)
        return;
    deliver_pending(c);
    if (c->state == C_OPEN && !c->write_blocked)
        pump(c);
    if (c->state != C_CLOSED && c->nstreams == 0)
        idle_check(c);
}

static void queue_flush(struct h2uc *c)
{
    if (!c->flush_queued && c->state != C_CLOSED) {
        c->flush_queued = true;
        sk_worker_defer(c->w, &c->flush);
    }
}

/* ---- stream objects ------------------------------------------------------------ */

/* Freed streams are kept per thread (up to STREAM_POOL_MAX) with their
 * arena's first block: a request then costs no calloc/malloc/free of them. */
#define STREAM_POOL_MAX 128
static __thread struct h2us *stream_pool;
static __thread unsigned stream_pool_n;

static void stream_free(struct sk_reap *r)
{
    struct h2us *s = SK_CONTAINER_OF(r, struct h2us, reap);
    sk_buf_free(&s->body);
    sk_buf_free(&s->hold);
    if (s->host)
        sk_host_unref(s->host);
    if (stream_pool_n < STREAM_POOL_MAX) {
        sk_arena_reset(&s->arena);
        s->next = stream_pool;
        stream_pool = s;
        stream_pool_n++;
        return;
    }
    sk_arena_free(&s->arena);
    free(s);
}

void sk_h2_client_thread_cleanup(void)
{
    while (stream_pool) {
        struct h2us *s = stream_pool;
        stream_pool = s->next;
        sk_arena_free(&s->arena);
        free(s);
    }
    stream_pool_n = 0;
}

/* Free once neither the router nor nghttp2 can reach the stream. */
static void maybe_free(struct h2us *s)
{
    if (!s->user_done || s->ng_open || s->reaped)
        return;
    s->reaped = true;
    stream_unlink(s);
    sk_worker_reap(s->w, &s->reap);
}

/* Give flow-control credit back for held bytes nobody will read. */
static void drop_hold(struct h2us *s)
{
    size_t n = sk_buf_used(&s->hold);
    if (n && s->c && s->c->state != C_CLOSED)
        nghttp2_session_consume(s->c->ng, s->id, n);
    sk_buf_consume(&s->hold, n);
    sk_buf_shrink(&s->hold);
    s->hold_end = false;
}

static void rst(struct h2us *s, uint32_t code)
{
    struct h2uc *c = s->c;
    if (!s->ng_open || !c || c->state == C_CLOSED)
        return;
    nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, code);
    queue_flush(c);
}

/* End the stream towards the router with an error. */
static void fail_stream(struct h2us *s, int cause, const char *detail)
{
    if (s->user_done)
        return;
    const struct sk_upconn_cbs *cbs = s->cbs;
    void *ctx = s->ctx;
    s->user_done = true;
    s->cbs = NULL;
    s->ctx = NULL;
    drop_hold(s);
    rst(s, NGHTTP2_CANCEL);
    if (cbs)
        cbs->on_error(ctx, cause, detail);
}

static void complete_resp(struct h2us *s)
{
    s->resp_done = true;
    if (!s->user_done && s->cbs)
        s->cbs->on_complete(s->ctx);
}

/* Hand held response bytes (then trailers and the end) to the router. */
static void deliver_held(struct h2us *s)
{
    while (!s->paused && !s->user_done && sk_buf_used(&s->hold)) {
        size_t n = sk_buf_used(&s->hold);
        s->cbs->on_data(s->ctx, sk_buf_rptr(&s->hold), n);
        sk_buf_consume(&s->hold, n);
        if (s->c && s->c->state != C_CLOSED)
            nghttp2_session_consume(s->c->ng, s->id, n);
    }
    if (s->user_done || sk_buf_used(&s->hold))
        return;
    sk_buf_shrink(&s->hold);
    if (s->hold_end) {
        s->hold_end = false;
        if (s->nth)
            s->cbs->on_trailers(s->ctx, s->th, s->nth);
        if (!s->user_done)
            complete_resp(s);
    }
    if (s->c)
        queue_flush(s->c); /* window updates */
}

static struct h2us *stream_new(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                               unsigned req_flags)
{
    struct h2us *s = stream_pool;
    if (s) {
        stream_pool = s->next;
        stream_pool_n--;
        struct sk_arena keep = s->arena;
        memset(s, 0, sizeof(*s));
        s->arena = keep;
    } else {
        s = calloc(1, sizeof(*s));
        if (!s)
            return NULL;
        sk_arena_init(&s->arena, 2048);
    }
    s->base.vt = &h2_vt;
    s->reap.free_fn = stream_free;
    s->w = h->cl->w;
    s->host = h;
    sk_host_ref(h);
    s->cbs = cbs;
    s->ctx = ctx;
    s->req_flags = req_flags;
    s->replayable = true;
    const struct sk_cluster *cfg = cfg_of(h);
    size_t cap = cfg ? cfg->per_connection_buffer_limit_bytes : 0;
    if (cap < UC_BODY_HIGH)
        cap = UC_BODY_HIGH;
    sk_buf_init(&s->body, cap + UC_BODY_HIGH + UC_REPLAY_CAP);
    sk_buf_init(&s->hold, UC_STREAM_WINDOW + 16 * 1024);
    return s;
}

/* ---- nghttp2 callbacks ------------------------------------------------------------ */

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct h2us *s = src->ptr;
    struct h2uc *c = ud;
    if (!s || s->c != c || s->id != id || !s->ng_open)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t avail = unsent(s);
    size_t n = avail < len ? avail : len;
    if (n) {
        memcpy(buf, sk_buf_rptr(&s->body) + s->body_sent, n);
        s->body_sent += n;
        if (!s->replayable) {
            sk_buf_consume(&s->body, s->body_sent);
            s->body_sent = 0;
        }
    }
    if (n == avail) {
        if (s->req_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (s->ntnv && nghttp2_submit_trailer(ng, id, s->tnva, s->ntnv) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        } else if (n == 0) {
            s->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
        if (!s->replayable)
            sk_buf_shrink(&s->body);
    }
    return (ssize_t)n;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct h2uc *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct h2us *s = lookup(c, ng, f->hd.stream_id);
    if (!s)
        return 0;
    s->got_frame = true;
    s->base.got_bytes = true;
    s->nrh = 0;
    s->rh_bytes = 0;
    s->status = 0;
    s->has_cl = false;
    s->cl = 0;
    /* most responses carry a handful of fields: start small, grow on demand
     * (entries are written before they are read: no zeroing) */
    s->rh_cap = UC_FIRST_HDRS;
    s->rh = sk_arena_alloc_nz(&s->arena, sizeof(*s->rh) * s->rh_cap);
    if (!s->rh)
        s->hdr_bad = true;
    return 0;
}

static bool name_is(const uint8_t *n, size_t nl, const char *lit)
{
    size_t l = strlen(lit);
    return nl == l && memcmp(n, lit, l) == 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct h2uc *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct h2us *s = lookup(c, ng, f->hd.stream_id);
    if (!s || s->hdr_bad || s->user_done)
        return 0;
    s->rh_bytes += nlen + vlen + 32;
    if (s->rh_bytes > UC_MAX_HDR_BYTES || s->nrh >= UC_MAX_HDRS) {
        s->hdr_bad = true;
        return 0;
    }
    if (nlen && name[0] == ':') {
        if (name_is(name, nlen, ":status")) {
            int st = 0;
            for (size_t i = 0; i < vlen && i < 3; i++)
                st = st * 10 + (value[i] - '0'); /* nghttp2 checked: 3 digits */
            s->status = st;
        }
        return 0;
    }
    if (name_is(name, nlen, "content-length")) {
        uint64_t v = 0;
        for (size_t i = 0; i < vlen && i < 19; i++)
            v = v * 10 + (uint64_t)(value[i] - '0'); /* nghttp2 checked: digits */
        s->has_cl = true;
        s->cl = v;
    }
    /* name and value in one allocation, each NUL-terminated */
    char *n = sk_arena_alloc_nz(&s->arena, nlen + vlen + 2);
    if (!n) {
        s->hdr_bad = true;
        return 0;
    }
    memcpy(n, name, nlen);
    n[nlen] = 0;
    char *v = n + nlen + 1;
    memcpy(v, value, vlen);
    v[vlen] = 0;
    if (s->nrh == s->rh_cap) {
        size_t cap = s->rh_cap * 2;
        struct sk_h1_header *nh = sk_arena_alloc_nz(&s->arena, sizeof(*nh) * cap);
        if (!nh) {
            s->hdr_bad = true;
            return 0;
        }
        memcpy(nh, s->rh, sizeof(*nh) * s->nrh);
        s->rh = nh;
        s->rh_cap = cap;
    }
    s->rh[s->nrh++] = (struct sk_h1_header){n, nlen, v, vlen};
    return 0;
}

static void on_headers_done(struct h2uc *c, struct h2us *s, bool es)
{
    if (s->user_done)
        return;
    if (s->hdr_bad) {
        fail_stream(s, SK_TERM_UPSTREAM_PROTO, "upstream response headers too large");
        return;
    }
    if (!s->head_done) {
        struct sk_h1_msg m;
        memset(&m, 0, sizeof(m));
        m.status = s->status;
        m.minor_version = 1;
        m.hdrs = s->rh;
        m.nhdrs = s->nrh;
        m.hdrs_cap = s->rh_cap;
        m.flags = SK_H1_F_KEEPALIVE;
        if (s->status < 200) {
            if (s->status == 101 || ++s->n1xx > UC_MAX_1XX) {
                fail_stream(s, SK_TERM_UPSTREAM_PROTO, "bad informational response");
                return;
            }
            m.body_kind = SK_H1_BODY_NONE;
            s->cbs->on_response(s->ctx, &m);
            return;
        }
        s->head_done = true;
        if (es) {
            m.body_kind = SK_H1_BODY_NONE;
        } else if (s->has_cl) {
            m.body_kind = SK_H1_BODY_LENGTH;
            m.content_length = s->cl;
            m.flags |= SK_H1_F_HAS_CL;
        } else {
            m.body_kind = SK_H1_BODY_CHUNKED;
        }
        s->cbs->on_response(s->ctx, &m);
        if (es && !s->user_done)
            complete_resp(s);
        return;
    }
    /* trailers (nghttp2 guarantees END_STREAM) */
    if (sk_buf_used(&s->hold)) {
        s->th = s->rh;
        s->nth = s->nrh;
        s->rh = NULL;
        s->hold_end = true;
        s->end_rcvd = true;
        return;
    }
    s->end_rcvd = true;
    if (s->nrh)
        s->cbs->on_trailers(s->ctx, s->rh, s->nrh);
    if (!s->user_done)
        complete_resp(s);
    (void)c;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct h2uc *c = ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        c->goaway = true;
        c->draining = true;
        c->goaway_last = f->goaway.last_stream_id;
        sk_debug("upstream %s: h2 conn %llu: GOAWAY (last stream %d, %s)", c->host->addr_str,
                 (unsigned long long)c->id, f->goaway.last_stream_id,
                 nghttp2_http2_strerror(f->goaway.error_code));
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    struct h2us *s = lookup(c, ng, f->hd.stream_id);
    if (!s || s->user_done)
        return 0;
    bool es = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
        on_headers_done(c, s, es);
        return 0;
    }
    if (es && s->head_done && !s->resp_done) {
        s->end_rcvd = true;
        if (sk_buf_used(&s->hold))
            s->hold_end = true;
        else
            complete_resp(s);
    }
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                              size_t len, void *ud)
{
    struct h2uc *c = ud;
    struct h2us *s = lookup(c, ng, id);
    if (!s || s->user_done || !s->head_done) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    s->got_frame = true;
    if (s->paused || sk_buf_used(&s->hold)) {
        if (sk_buf_append(&s->hold, data, len) < 0) {
            /* more than the window we granted */
            nghttp2_session_consume(ng, id, len);
            fail_stream(s, SK_TERM_UPSTREAM_PROTO, "upstream exceeded the h2 flow-control window");
        }
        return 0;
    }
    s->cbs->on_data(s->ctx, (const char *)data, len);
    nghttp2_session_consume(ng, id, len);
    return 0;
}

/* nghttp2 is done with the stream (closed, or its HEADERS never went out). */
static void stream_closed(struct h2us *s, uint32_t err, bool unprocessed)
{
    struct h2uc *c = s->c;
    s->ng_open = false;
    if (c && c->state != C_CLOSED)
        nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
    if (!s->user_done && !s->resp_done && !s->end_rcvd) {
        if (unprocessed && try_reissue(s, c))
            return;
        char d[128];
        if (unprocessed)
            snprintf(d, sizeof(d), "stream refused by the upstream (%s; request not processed)",
                     nghttp2_http2_strerror(err));
        else if (err == NGHTTP2_NO_ERROR)
            snprintf(d, sizeof(d), "stream closed before the response completed");
        else
            snprintf(d, sizeof(d), "stream reset: %s", nghttp2_http2_strerror(err));
        fail_stream(s, SK_TERM_UPSTREAM_RESET, d);
    } else if (s->user_done) {
        drop_hold(s);
    }
    maybe_free(s);
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t err, void *ud)
{
    struct h2uc *c = ud;
    struct h2us *s = lookup(c, ng, id);
    if (!s)
        return 0;
    bool unprocessed =
        !s->got_frame && (err == NGHTTP2_REFUSED_STREAM || (c->goaway && id > c->goaway_last));
    stream_closed(s, err, unprocessed);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct h2uc *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    struct h2us *s = lookup(c, ng, f->hd.stream_id);
    if (!s)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS)
        s->hdrs_sent = true;
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
        s->end_sent = true;
    return 0;
}

static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *f, int lib_err, void *ud)
{
    struct h2uc *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2us *s = find_stream(c, f->hd.stream_id);
    if (!s || !s->ng_open)
        return 0;
    sk_debug("upstream %s: h2 conn %llu stream %d: request not sent: %s", c->host->addr_str,
             (unsigned long long)c->id, f->hd.stream_id, nghttp2_strerror(lib_err));
    stream_closed(s, NGHTTP2_REFUSED_STREAM, true);
    return 0;
}

/* ---- reading --------------------------------------------------------------------------- */

/* One read from the transport into nghttp2. 1 = more may follow at once
 * (TLS holds decrypted bytes), 0 = wait for readiness, -1 = the connection
 * is gone. */
static int read_once(struct h2uc *c)
{
    ssize_t r = sk_tp_read(&c->tp, &c->in, UC_READ_CHUNK);
    if (r == SK_ERR_AGAIN) {
        update_io(c); /* TLS may want writability for this read */
        return 0;
    }
    if (r == 0 || r == SK_ERR_IO) {
        char d[128];
        int e = errno;
        conn_fail(c, SK_TERM_UPSTREAM_RESET,
                  io_why(c, d, sizeof(d),
                         r == 0 ? "upstream closed the connection"
                                : (e ? strerror(e) : "connection error")));
        return -1;
    }
    if (r < 0) { /* SK_ERR_TOO_LARGE cannot happen: `in` is empty between reads */
        conn_fail(c, SK_TERM_UPSTREAM_RESET, sk_strerror((int)r));
        return -1;
    }
    c->in_recv = true;
    ssize_t rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)sk_buf_rptr(&c->in),
                                          sk_buf_used(&c->in));
    c->in_recv = false;
    sk_buf_consume(&c->in, sk_buf_used(&c->in));
    if (c->state == C_CLOSED)
        return -1;
    if (rv < 0) {
        sk_warn("upstream %s: h2 conn %llu: protocol error: %s", c->host->addr_str,
                (unsigned long long)c->id, nghttp2_strerror((int)rv));
        char d[96];
        snprintf(d, sizeof(d), "upstream h2 protocol error: %s", nghttp2_strerror((int)rv));
        conn_fail_ex(c, SK_TERM_UPSTREAM_PROTO, d, true);
        return -1;
    }
    return sk_tp_has_buffered(&c->tp) ? 1 : 0;
}

static void on_readable(struct h2uc *c)
{
    int more = 0;
    for (int i = 0; i < UC_READ_ROUNDS; i++) {
        more = read_once(c);
        if (more <= 0)
            break;
    }
    sk_buf_shrink(&c->in); /* idle connections keep no read buffer */
    if (more < 0 || c->state == C_CLOSED)
        return;
    pump(c);
    if (c->state == C_CLOSED)
        return;
    if (more > 0)
        ev_feed_event(c->w->loop, &c->io, EV_READ); /* decrypted bytes wait in OpenSSL */
    if (c->nstreams == 0)
        queue_flush(c);
}

static void connected(struct h2uc *c)
{
    struct sk_worker *w = c->w;
    ev_timer_stop(w->loop, &c->timer);
    c->state = C_OPEN;
    const struct sk_cluster *tcfg = cfg_of(c->host);
    if (tcfg && tcfg->toxics) /* L4 toxics of the cluster (Cluster.filters) */
        c->toxic = sk_tp_set_toxics(&c->tp, w->loop, &c->io, tcfg->toxics, SK_TOX_SIDE_UPSTREAM,
                                    (unsigned)w->id, "upstream h2", (unsigned long long)c->id) != 0;
    for (struct h2us *s = c->streams; s; s = s->next)
        s->base.toxic = c->toxic;
    update_io(c);
    /* tell the users queued while connecting (the router releases its
     * pending-request slot); callbacks may abort their stream */
    for (struct h2us *s = c->streams; s; s = s->next)
        s->base.connecting = false;
again:
    for (struct h2us *s = c->streams; s; s = s->next) {
        if (s->told)
            continue;
        s->told = true;
        if (s->user_done || !s->cbs || !s->cbs->on_connected)
            continue;
        s->cbs->on_connected(s->ctx);
        if (c->state != C_OPEN)
            return;
        goto again;
    }
    pump(c);
    if (c->state == C_OPEN && sk_tp_has_buffered(&c->tp))
        ev_feed_event(w->loop, &c->io, EV_READ); /* records decrypted during the handshake */
    if (c->state == C_OPEN && c->nstreams == 0)
        queue_flush(c); /* nobody left: arm the idle timer */
}

/* TCP is up: originate TLS when the cluster has a transport_socket. 0 = go
 * on (plaintext, or the handshake was set up), < 0 = failed (handled). */
static int tls_start(struct h2uc *c)
{
    const struct sk_cluster *cfg = cfg_of(c->host);
    if (!cfg || !cfg->tls)
        return 0;
    c->tp.ssl = sk_tls_ssl_new(cfg->tls);
    if (!c->tp.ssl) {
        sk_stat_add(&c->w->stats, SK_ST_upstream_cx_connect_fail, 1);
        sk_warn("upstream %s: h2 conn %llu: cannot create a TLS session", c->host->addr_str,
                (unsigned long long)c->id);
        conn_fail(c, SK_TERM_CONNECT_FAIL, "cannot create a TLS session");
        return -1;
    }
    SSL_set_fd(c->tp.ssl, c->tp.fd);
    /* same session cache key as the HTTP/1.1 pool: one resumable session per host */
    sk_tls_ssl_set_session_key(c->tp.ssl, c->host->addr_str);
    /* explicit HTTP/2: ALPN h2 offered and required (Envoy: the h2 codec
     * with an "h2" ALPN fallback); never fall back to HTTP/1.1 */
    sk_tls_ssl_require_alpn(c->tp.ssl, "h2");
    c->handshaking = true;
    return 0;
}

/* Drive the TLS handshake: 1 = done, 0 = in progress, < 0 = failed (handled:
 * counted as a connect failure like the HTTP/1.1 pool's, and in the TLS
 * handshake failure counters by reason). */
static int tls_step(struct h2uc *c)
{
    int want = 0;
    const char *why = NULL;
    int hr = sk_tls_handshake(c->tp.ssl, &want, &why);
    if (hr == 0) {
        sk_io_set(c->w->loop, &c->io, want == SK_TLS_WANT_WRITE ? EV_WRITE : EV_READ);
        return 0;
    }
    if (hr < 0) {
        sk_stat_add(&c->w->stats, SK_ST_upstream_cx_connect_fail, 1);
        char d[160];
        if (why && strcmp(why, "no ALPN match") == 0) {
            const unsigned char *a = NULL;
            unsigned al = 0;
            SSL_get0_alpn_selected(c->tp.ssl, &a, &al);
            snprintf(d, sizeof(d), "TLS handshake failed: no ALPN match (h2 required, upstream %s%.*s)",
                     al ? "selected " : "selected none", (int)al, al ? (const char *)a : "");
        } else {
            snprintf(d, sizeof(d), "TLS handshake failed: %s", why ? why : "?");
        }
        sk_warn("upstream %s: h2 conn %llu: %s", c->host->addr_str, (unsigned long long)c->id, d);
        c->handshaking = false;
        conn_fail(c, SK_TERM_CONNECT_FAIL, d);
        return -1;
    }
    c->handshaking = false;
    sk_debug("upstream %s: h2 conn %llu: TLS up (%s, ALPN h2%s)", c->host->addr_str,
             (unsigned long long)c->id, SSL_get_version(c->tp.ssl),
             SSL_session_reused(c->tp.ssl) ? ", resumed" : "");
    return 1;
}

static void io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct h2uc *c = io->data;
    if (c->state == C_CONNECTING) {
        if (!c->handshaking) {
            int e = 0;
            socklen_t l = sizeof(e);
            getsockopt(c->tp.fd, SOL_SOCKET, SO_ERROR, &e, &l);
            if (e) {
                sk_stat_add(&c->w->stats, SK_ST_upstream_cx_connect_fail, 1);
                sk_warn("upstream %s: connect: %s", c->host->addr_str, strerror(e));
                conn_fail(c, SK_TERM_CONNECT_FAIL, strerror(e));
                return;
            }
            if (tls_start(c) < 0)
                return;
        }
        if (c->handshaking && tls_step(c) <= 0)
            return;
        connected(c);
        return;
    }
    if (c->state != C_OPEN)
        return;
    bool ssl = c->tp.ssl != NULL;
    /* a TLS write blocked on readability, a TLS read blocked on writability */
    if ((revents & EV_WRITE) ||
        (ssl && c->write_blocked && c->tp.want_wr == SK_TLS_WANT_READ && (revents & EV_READ))) {
        c->write_blocked = false;
        update_io(c);
        pump(c);
        if (c->state != C_OPEN)
            return;
    }
    if ((revents & EV_READ) || (ssl && c->tp.want_rd == SK_TLS_WANT_WRITE && (revents & EV_WRITE)))
        on_readable(c);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2uc *c = t->data;
    if (c->state == C_CONNECTING) {
        sk_stat_add(&c->w->stats, SK_ST_upstream_cx_connect_timeout, 1);
        sk_stat_add(&c->w->stats, SK_ST_upstream_cx_connect_fail, 1);
        sk_warn("upstream %s: connect timeout", c->host->addr_str);
        conn_fail(c, SK_TERM_CONNECT_FAIL, "connect timeout");
    } else if (c->state == C_OPEN && c->nstreams == 0) {
        c->draining = true;
        idle_check(c);
    }
}

/* ---- connections ------------------------------------------------------------------------ */

/* `reserved`: the caller already counted the connection in cx_active. */
static struct h2uc *conn_new(struct sk_host *h, int *err, bool reserved)
{
    struct sk_worker *w = h->cl->w;
    struct h2uc *c = calloc(1, sizeof(*c));
    if (!c) {
        *err = SK_TERM_OVERFLOW;
        return NULL;
    }
    c->w = w;
    c->reap.free_fn = conn_free;
    c->flush.free_fn = flush_cb;
    c->id = ++w->next_conn_id;
    sk_buf_init(&c->out, UC_OUT_CAP);
    sk_buf_init(&c->in, UC_READ_CHUNK);
    c->tp.fd = -1;

    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    int rv = nghttp2_session_callbacks_new(&cbs);
    if (rv == 0)
        rv = nghttp2_option_new(&opt);
    if (rv == 0) {
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
        nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
        nghttp2_option_set_no_auto_window_update(opt, 1);
        nghttp2_option_set_no_closed_streams(opt, 1);
        nghttp2_option_set_max_send_header_block_length(opt, 256 * 1024);
        nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
        nghttp2_mem mem;
        c->ngm.cap = UC_SESSION_MEM_CAP;
        sk_ngmem_init(&mem, &c->ngm);
        rv = nghttp2_session_client_new3(&c->ng, cbs, c, opt, &mem);
    }
    if (cbs)
        nghttp2_session_callbacks_del(cbs);
    if (opt)
        nghttp2_option_del(opt);
    if (rv == 0) {
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, UC_STREAM_WINDOW},
            {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, UC_MAX_HDR_BYTES},
        };
        rv = nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
        if (rv == 0)
            rv = nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0,
                                                       (int32_t)UC_CONN_WINDOW);
    }
    if (rv != 0) {
        sk_warn("upstream %s: cannot start an HTTP/2 session: %s", h->addr_str,
                nghttp2_strerror(rv));
        if (c->ng)
            nghttp2_session_del(c->ng);
        sk_buf_free(&c->out);
        free(c);
        *err = SK_TERM_OVERFLOW;
        return NULL;
    }
    int fd = sk_host_connect(h);
    sk_stat_add(&w->stats, SK_ST_upstream_cx_total, 1);
    if (fd < 0) {
        sk_warn("upstream %s: connect: %s", h->addr_str, strerror(-fd));
        sk_stat_add(&w->stats, SK_ST_upstream_cx_connect_fail, 1);
        nghttp2_session_del(c->ng);
        sk_buf_free(&c->out);
        free(c);
        *err = SK_TERM_CONNECT_FAIL;
        return NULL;
    }
    c->host = h;
    sk_host_ref(h);
    sk_stat_add(&w->stats, SK_ST_upstream_cx_active, 1);
    h->active_cx++;
    if (h->cl->cs && !reserved)
        atomic_fetch_add_explicit(&h->cl->cs->cx_active, 1, memory_order_relaxed);
    c->state = C_CONNECTING;
    c->tp.fd = fd;
    ev_io_init(&c->io, io_cb, fd, EV_WRITE);
    c->io.data = c;
    ev_io_start(w->loop, &c->io);
    const struct sk_cluster *cfg = cfg_of(h);
    double ct = 5.0;
    if (cfg && cfg->connect_timeout_ms != SK_DUR_NONE)
        ct = (double)cfg->connect_timeout_ms / 1000.0;
    ev_timer_init(&c->timer, timer_cb, ct, 0.);
    c->timer.data = c;
    ev_timer_start(w->loop, &c->timer);
    /* link into the worker's list */
    int wid = w->id;
    c->next_all = conns_of[wid];
    if (c->next_all)
        c->next_all->prev_all = c;
    conns_of[wid] = c;
    sk_debug("upstream %s: h2 conn %llu: connecting", h->addr_str, (unsigned long long)c->id);
    return c;
}

/* A connection to `h` with room for one more stream (not `exclude`), or a
 * new one. NULL + *err (a cause) when none can be had. */
static struct h2uc *conn_pick(struct sk_host *h, struct h2uc *exclude, int *err)
{
    struct sk_worker *w = h->cl->w;
    struct h2uc *best = NULL;
    for (struct h2uc *c = conns_of[w->id]; c; c = c->next_all) {
        if (c == exclude || c->host != h || !conn_usable(c))
            continue;
        /* prefer established connections, then the busiest (packs streams
         * so that spare connections can go idle) */
        if (!best || (best->state != C_OPEN && c->state == C_OPEN) ||
            (best->state == c->state && c->nstreams > best->nstreams))
            best = c;
    }
    if (best) {
        if (best->nreq)
            sk_stat_add(&w->stats, SK_ST_upstream_cx_reused, 1);
        return best;
    }
    const struct sk_cluster *cfg = cfg_of(h);
    struct sk_cluster_state *cs = h->cl->cs;
    if (cs && cfg) {
        /* reserve before checking (workers race for the last slot); the
         * new connection then holds the reservation as its own count */
        if (atomic_fetch_add(&cs->cx_active, 1) >= (int64_t)cfg->cb.max_connections) {
            atomic_fetch_sub(&cs->cx_active, 1);
            atomic_fetch_add(&cs->upstream_cx_overflow, 1);
            *err = SK_TERM_OVERFLOW;
            return NULL;
        }
    }
    struct h2uc *c = conn_new(h, err, cs && cfg);
    if (!c && cs && cfg)
        atomic_fetch_sub(&cs->cx_active, 1);
    return c;
}

/* Put a stream the server never processed on another connection. Only when
 * the whole request body is still in our buffer. */
static bool try_reissue(struct h2us *s, struct h2uc *exclude)
{
    if (s->user_done || s->got_frame || s->reissues >= UC_MAX_REISSUE || s->host->removed ||
        s->w->draining)
        return false;
    if (s->has_body && !s->replayable)
        return false;
    int32_t old_id = s->id;
    stream_unlink(s);
    s->submitted = false;
    s->ng_open = false;
    s->hdrs_sent = false;
    s->end_sent = false;
    s->deferred = false;
    s->body_sent = 0;
    s->id = 0;
    int err = 0;
    struct h2uc *c = conn_pick(s->host, exclude, &err);
    if (!c)
        return false;
    stream_link(c, s);
    s->base.connecting = c->state == C_CONNECTING;
    s->reissues++;
    if (submit(s) < 0) {
        stream_unlink(s);
        return false;
    }
    sk_debug("upstream %s: request on h2 stream %d was not processed; re-issued on conn %llu "
             "stream %d",
             s->host->addr_str, (int)old_id, (unsigned long long)c->id, (int)s->id);
    return true;
}

/* ---- struct sk_up over HTTP/2 ---------------------------------------------------------- */

static int submit(struct h2us *s)
{
    struct h2uc *c = s->c;
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = data_read_cb};
    int32_t id = nghttp2_submit_request(c->ng, NULL, s->nva, s->nnv, s->has_body ? &dp : NULL, s);
    if (id < 0) {
        sk_debug("upstream %s: h2 submit_request: %s", c->host->addr_str, nghttp2_strerror(id));
        if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
            c->draining = true;
        return SK_ERR_INVAL;
    }
    s->id = id;
    s->submitted = true;
    s->ng_open = true;
    c->nreq++;
    queue_flush(c);
    return 0;
}

static bool conn_specific(const char *n, uint32_t l, const char *v, uint32_t vl)
{
    switch (l) {
    case 2:
        /* te: only "trailers" is allowed in HTTP/2 */
        return memcmp(n, "te", 2) == 0 && !(vl == 8 && strncasecmp(v, "trailers", 8) == 0);
    case 4:
        return memcmp(n, "host", 4) == 0;
    case 7:
        return memcmp(n, "upgrade", 7) == 0;
    case 10:
        return memcmp(n, "connection", 10) == 0 || memcmp(n, "keep-alive", 10) == 0;
    case 14:
        return memcmp(n, "content-length", 14) == 0; /* we add our own */
    case 16:
        return memcmp(n, "proxy-connection", 16) == 0;
    case 17:
        return memcmp(n, "transfer-encoding", 17) == 0;
    }
    return false;
}

/* Fields whose value is new on every request (ids, spans): indexing them in
 * the HPACK dynamic table would only evict fields that do repeat (and cost
 * an insertion plus an eviction at both ends per request). */
static bool unique_per_request(const uint8_t *n, size_t l)
{
    switch (l) {
    case 2:
        return memcmp(n, "b3", 2) == 0;
    case 11:
        return memcmp(n, "traceparent", 11) == 0 || memcmp(n, "x-b3-spanid", 11) == 0;
    case 12:
        return memcmp(n, "x-request-id", 12) == 0 || memcmp(n, "x-b3-traceid", 12) == 0;
    case 17:
        return memcmp(n, "x-b3-parentspanid", 17) == 0;
    }
    return false;
}

static bool nv_add(struct h2us *s, nghttp2_nv *nva, size_t *n, const char *name, size_t nl,
                   const char *value, size_t vl)
{
    /* lower-cased name and value in one allocation, each NUL-terminated */
    char *dn = sk_arena_alloc_nz(&s->arena, nl + vl + 2);
    if (!dn)
        return false;
    sk_ascii_lower_copy(dn, name, nl);
    dn[nl] = 0;
    char *dv = dn + nl + 1;
    if (vl)
        memcpy(dv, value, vl);
    dv[vl] = 0;
    nva[(*n)++] = (nghttp2_nv){(uint8_t *)dn, (uint8_t *)dv, nl, vl, NGHTTP2_NV_FLAG_NONE};
    return true;
}

/* A field whose name is a string literal (static storage, lower case): only
 * the value is copied into the stream's arena. */
static bool nv_add_lit(struct h2us *s, nghttp2_nv *nva, size_t *n, const char *name, size_t nl,
                       const char *value, size_t vl)
{
    char *dv = sk_arena_strndup(&s->arena, value ? value : "", vl);
    if (!dv)
        return false;
    nva[(*n)++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)dv, nl, vl, NGHTTP2_NV_FLAG_NONE};
    return true;
}

static int h2_send_head(struct sk_up *u, const struct sk_req_head *h)
{
    struct h2us *s = US(u);
    struct h2uc *c = s->c;
    if (s->user_done || s->submitted || !c || c->state == C_CLOSED)
        return SK_ERR_CLOSED;
    if (h->upgrade || (h->method_len == 7 && memcmp(h->method, "CONNECT", 7) == 0)) {
        sk_debug("upstream %s: upgrade / CONNECT over an h2 upstream is not supported",
                 c->host->addr_str);
        return SK_ERR_INVAL;
    }
    size_t max = 6 + (h->hdrs ? h->hdrs->n : 0);
    nghttp2_nv *nva = sk_arena_alloc_nz(&s->arena, sizeof(*nva) * max);
    if (!nva)
        return SK_ERR_NOMEM;
    size_t n = 0;
    const struct sk_cluster *cfg = cfg_of(s->host);
    bool ok = nv_add_lit(s, nva, &n, ":method", 7, h->method, h->method_len);
    if (cfg && cfg->tls)
        nva[n++] = (nghttp2_nv){(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, NGHTTP2_NV_FLAG_NONE};
    else
        nva[n++] = (nghttp2_nv){(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE};
    if (h->authority && h->authority_len)
        ok = ok && nv_add_lit(s, nva, &n, ":authority", 10, h->authority, h->authority_len);
    if (h->path && h->path_len)
        ok = ok && nv_add_lit(s, nva, &n, ":path", 5, h->path, h->path_len);
    else if (ok)
        nva[n++] = (nghttp2_nv){(uint8_t *)":path", (uint8_t *)"/", 5, 1, NGHTTP2_NV_FLAG_NONE};
    for (uint32_t i = 0; ok && h->hdrs && i < h->hdrs->n; i++) {
        const struct sk_hdr *x = &h->hdrs->v[i];
        if (x->nlen == 0 || x->name[0] == ':' || conn_specific(x->name, x->nlen, x->value, x->vlen))
            continue;
        ok = nv_add(s, nva, &n, x->name, x->nlen, x->value, x->vlen);
        if (ok && unique_per_request(nva[n - 1].name, nva[n - 1].namelen))
            nva[n - 1].flags = NGHTTP2_NV_FLAG_NO_INDEX;
    }
    if (ok && (h->body_kind == SK_H1_BODY_LENGTH || h->send_zero_cl)) {
        char cl[24];
        size_t cll = sk_fmt_u64(cl, (unsigned long long)h->content_length);
        ok = nv_add_lit(s, nva, &n, "content-length", 14, cl, cll);
    }
    if (!ok)
        return SK_ERR_NOMEM;
    s->nva = nva;
    s->nnv = n;
    s->has_body = h->body_kind != SK_H1_BODY_NONE;
    return submit(s);
}

static void resume(struct h2us *s)
{
    struct h2uc *c = s->c;
    if (!c || c->state == C_CLOSED)
        return;
    if (s->deferred && s->ng_open) {
        s->deferred = false;
        nghttp2_session_resume_data(c->ng, s->id);
    }
    queue_flush(c);
}

static int h2_send_data(struct sk_up *u, const char *p, size_t n)
{
    struct h2us *s = US(u);
    if (s->user_done || !s->has_body || s->req_eof || n == 0)
        return 0;
    if (sk_buf_append(&s->body, p, n) < 0)
        return SK_ERR_TOO_LARGE;
    if (s->replayable && sk_buf_used(&s->body) > UC_REPLAY_CAP) {
        /* too big to keep for a re-issue: from now on sent bytes are dropped */
        s->replayable = false;
        sk_buf_consume(&s->body, s->body_sent);
        s->body_sent = 0;
    }
    resume(s);
    return 0;
}

static int h2_send_end(struct sk_up *u, const struct sk_hdrs *t)
{
    struct h2us *s = US(u);
    if (s->user_done || s->req_eof)
        return 0;
    s->req_eof = true;
    if (!s->has_body)
        return 0;
    if (t && t->n) {
        nghttp2_nv *nva = sk_arena_alloc(&s->arena, sizeof(*nva) * t->n);
        if (!nva)
            return SK_ERR_NOMEM;
        size_t n = 0;
        for (uint32_t i = 0; i < t->n; i++) {
            const struct sk_hdr *x = &t->v[i];
            if (x->nlen == 0 || x->name[0] == ':' ||
                conn_specific(x->name, x->nlen, x->value, x->vlen) ||
                (x->nlen == 2 && memcmp(x->name, "te", 2) == 0))
                continue;
            if (!nv_add(s, nva, &n, x->name, x->nlen, x->value, x->vlen))
                return SK_ERR_NOMEM;
        }
        s->tnva = nva;
        s->ntnv = n;
    }
    resume(s);
    return 0;
}

static int h2_send_raw(struct sk_up *u, const char *p, size_t n)
{
    (void)u;
    (void)p;
    (void)n;
    return SK_ERR_INVAL; /* no tunnels (extended CONNECT) over h2 upstreams */
}

static bool h2_congested(const struct sk_up *u)
{
    struct h2us *s = US(u);
    if (unsent(s) > UC_BODY_HIGH) {
        s->want_drained = true;
        return true;
    }
    return false;
}

static void h2_pause_read(struct sk_up *u, bool pause)
{
    struct h2us *s = US(u);
    if (s->paused == pause)
        return;
    s->paused = pause;
    if (!pause && (sk_buf_used(&s->hold) || s->hold_end) && s->c)
        queue_flush(s->c); /* delivered from flush_cb, outside the caller's stack */
}

static void h2_release(struct sk_up *u)
{
    struct h2us *s = US(u);
    if (s->user_done)
        return;
    s->user_done = true;
    s->cbs = NULL;
    s->ctx = NULL;
    drop_hold(s);
    /* response complete but our side still open: nothing more is wanted */
    if (s->ng_open && !s->end_sent)
        rst(s, NGHTTP2_NO_ERROR);
    maybe_free(s);
}

static void h2_abort(struct sk_up *u)
{
    struct h2us *s = US(u);
    if (s->user_done)
        return;
    s->user_done = true;
    s->cbs = NULL;
    s->ctx = NULL;
    drop_hold(s);
    if (s->submitted)
        rst(s, s->resp_done ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
    else
        s->ng_open = false;
    maybe_free(s);
}

static void h2_set_tunnel(struct sk_up *u)
{
    (void)u;
}

static void h2_shutdown_write(struct sk_up *u)
{
    (void)u;
}

static const struct sk_up_vt h2_vt = {
    h2_send_head,  h2_send_data, h2_send_end, h2_send_raw,   h2_congested,
    h2_pause_read, h2_release,   h2_abort,    h2_set_tunnel, h2_shutdown_write,
};

static struct sk_up *h2_acquire(struct sk_host *h, const struct sk_upconn_cbs *cbs, void *ctx,
                                unsigned req_flags, int *err)
{
    struct h2uc *c = conn_pick(h, NULL, err);
    if (!c)
        return NULL;
    struct h2us *s = stream_new(h, cbs, ctx, req_flags);
    if (!s) {
        *err = SK_TERM_OVERFLOW;
        if (c->nstreams == 0)
            queue_flush(c);
        return NULL;
    }
    stream_link(c, s);
    s->base.connecting = c->state == C_CONNECTING;
    s->base.reused = c->state == C_OPEN && c->nreq > 0;
    s->base.toxic = c->toxic;
    return &s->base;
}

void sk_h2_client_init(void)
{
    sk_up_h2_acquire = h2_acquire;
}
