/* Downstream HTTP/2 connections (server role) on nghttp2: h2c with prior
 * knowledge. Each request becomes a struct sk_stream driven through the
 * router like an HTTP/1.1 one; the router encodes it as HTTP/1.1 upstream.
 *
 * I/O: the read side feeds socket bytes to nghttp2_session_mem_recv; the
 * write side pulls frames with nghttp2_session_mem_send into the connection's
 * output buffer and writes it (deferred to the end of the loop iteration when
 * triggered by the router, so one write covers many streams). nghttp2 is
 * never re-entered: mem_recv/mem_send are only called from the I/O, timer and
 * deferred-flush callbacks, never from inside a callback or an op.
 *
 * Flow control follows the slow side: automatic WINDOW_UPDATE is off and
 * request DATA is consumed (nghttp2_session_consume) only once the router has
 * taken it; while the router pauses us, DATA the client may still send within
 * its window is held in a per-stream buffer (bounded by the stream window).
 * Responses go through a per-stream bounded buffer read by a deferred data
 * provider; above a high mark the router pauses the upstream, and it resumes
 * once nghttp2 has sent the buffer below a low mark.
 *
 * Lifetime: a stream object is finished (sk_stream_cleanup + pool) when both
 * the router is done with it (send_end / reset / abort) and nghttp2 closed the
 * stream, whichever comes last. The connection and its stream objects are
 * freed from the worker's reap list, never inside a callback. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
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
#include "skiff/h2.h"
#include "skiff/tls.h"
#include "skiff/transport.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/ngmem.h"
#include "skiff/net.h"
#include "skiff/scope.h"
#include "skiff/stream.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

/* skiff's own defaults where the HCM holds Envoy's (effectively unbounded)
 * ones, and hard caps so that one connection's memory stays bounded. */
#define H2_DEF_MAX_STREAMS 100u
#define H2_CAP_MAX_STREAMS 1024u
#define H2_DEF_STREAM_WINDOW (64u * 1024)
#define H2_CAP_STREAM_WINDOW (16u * 1024 * 1024)
#define H2_DEF_CONN_WINDOW (1024u * 1024)
#define H2_CAP_CONN_WINDOW (64u * 1024 * 1024)
#define H2_CAP_HPACK_TABLE (64u * 1024)
#define H2_ENVOY_DEF_STREAMS 2147483647u
#define H2_ENVOY_DEF_WINDOW 268435456u

#define H2_OUT_HIGH (64 * 1024)                /* stop pulling frames above this */
#define H2_OUT_CAP (4 * 1024 * 1024)           /* hard cap of the output buffer */
#define H2_RESP_HIGH (128 * 1024)              /* per-stream response buffer: congested */
#define H2_RESP_LOW (32 * 1024)                /* ... and drained */
#define H2_BODY0_MAX 512                       /* first response chunk kept in the arena */
#define H2_SESSION_MEM_CAP (16u * 1024 * 1024) /* nghttp2's own allocations */
#define H2_READ_CHUNK (64 * 1024)
#define H2_GOAWAY_GRACE_S 1.0 /* shutdown notice -> final GOAWAY */
#define H2_DYING_S 2.0        /* bound on flushing a final GOAWAY */
#define H2_SESSION_BYTES 25000 /* about what an idle nghttp2 session holds */
#define H2_HIB_S 0.05         /* idle this long (no streams) -> hibernate the session */
#define H2_RST_BURST 1000     /* rapid reset protection (token bucket) */
#define H2_RST_RATE 33

struct h2c;

struct h2s {
    struct sk_reap reap;
    struct sk_stream st;
    struct h2c *c;
    struct h2s *prev, *next; /* c->streams */
    int32_t id;
    struct sk_buf rbody; /* response body waiting for the data provider */
    /* ... ahead of it: a small first chunk kept in the stream arena (a small
     * response body needs no buffer allocated and freed) */
    const char *body0;
    uint32_t body0_len, body0_off;
    struct sk_buf qbody; /* request body held while the router pauses us */
    struct sk_hdrs resp_trailers;
    struct sk_hdrs req_trailers;
    uint32_t hdr_bytes, hdr_count;
    uint32_t hdr_max_count; /* the HCM's limits on the request head */
    size_t hdr_max_bytes;
    bool hdr_too_large;
    bool has_cl;
    bool started;       /* sk_stream_headers called */
    bool head_sent;     /* response HEADERS submitted */
    bool has_body;      /* a data provider is attached */
    bool deferred;      /* data provider returned DEFERRED */
    bool resp_eof;      /* send_end: no more body */
    bool end_submitted; /* END_STREAM on our side is (or will be) sent */
    bool resp_done;     /* the router is done with the stream */
    bool rst;           /* we reset it */
    bool ng_closed;     /* nghttp2 closed it */
    bool finished;
    bool paused;          /* router paused the request body */
    bool req_done;        /* client sent END_STREAM */
    bool req_end_pending; /* END_STREAM arrived while body was held */
    bool want_drained;    /* router saw us congested */
    bool delivering;
    bool ext_connect;     /* RFC 8441 extended CONNECT (:protocol), e.g. WebSocket */
    bool tunneled;        /* ... and the upstream accepted: DATA frames are the tunnel */
};

struct h2c {
    struct sk_conn_base base;
    struct sk_reap reap;
    struct sk_reap flush;
    struct sk_transport tp; /* socket (+ TLS) */
    ev_io io;
    ev_timer idle;   /* idle timeout (no streams) */
    ev_timer goaway; /* shutdown notice -> final GOAWAY; bound on dying */
    ev_timer hdrt;   /* request_headers_timeout: a header block in progress */
    struct sk_snapshot *snap;
    const struct sk_listener *l;
    const struct sk_filter_chain *fc;
    nghttp2_session *ng;
    struct sk_ngmem ngm; /* nghttp2's own memory, capped */
    struct sk_buf out;
    struct h2s *streams;
    struct h2s *hs; /* the stream of the last request header block begun (on_header) */
    uint32_t nstreams;
    uint64_t id;
    uint32_t swin; /* our SETTINGS_INITIAL_WINDOW_SIZE: bounds what a stream holds */
    char peer_ip[48];
    uint16_t peer_port;
    bool closed;
    bool write_blocked;
    bool flush_queued;
    bool in_pump;
    bool draining;
    bool goaway_sent;
    bool dying; /* fatal error: flush what nghttp2 queued (GOAWAY), then close */
    bool no_read;
    /* hibernation (see try_hibernate): while idle the nghttp2 session is
     * deleted and only what a new one needs to continue the connection is
     * kept here */
    bool hib;         /* no session now (c->ng == NULL) */
    bool restoring;   /* feeding a new session its past: callbacks ignore it */
    bool hib_wanted;  /* our SETTINGS got acked while idle: try again */
    bool goaway_recv; /* the client sent GOAWAY */
    bool hblock_open; /* input tracker: inside a header block (no END_HEADERS yet) */
    uint8_t fh_n;     /* input tracker: bytes of the current frame header */
    uint8_t fh[9];
    uint8_t magic_left;     /* input tracker: client magic still to come */
    uint32_t payload_left;  /* input tracker: payload bytes of the current frame */
    uint32_t max_sid;       /* highest stream id the client opened */
    uint32_t settings_inflight; /* our SETTINGS frames not acked yet */
    uint32_t table_cfg;     /* configured SETTINGS_HEADER_TABLE_SIZE */
    uint32_t table_sent;    /* the value the client was last told */
    uint32_t max_streams, cwin, max_hdr_list;
    int32_t rcv_win;        /* hibernated: what the client may still send */
    int32_t snd_win;        /* hibernated: what we may still send */
    uint32_t rset[6];       /* hibernated: the client's SETTINGS 1..6 */
    bool client_no_prio;    /* the client sent SETTINGS_NO_RFC7540_PRIORITIES=1 */
    ev_tstamp idle_since;
};

static void conn_close(struct h2c *c);
static void queue_flush(struct h2c *c);
static void pump(struct h2c *c);
static void final_goaway(struct h2c *c);
static void start_graceful(struct h2c *c);
static void try_hibernate(struct h2c *c);
static bool wake(struct h2c *c);
static void sessions_thread_cleanup(void);

static const struct sk_downstream_ops h2_ops;

int sk_h2_preface_match(const char *p, size_t n)
{
    size_t k = n < SK_H2_PREFACE_LEN ? n : SK_H2_PREFACE_LEN;
    if (memcmp(p, SK_H2_PREFACE, k) != 0)
        return -1;
    return n >= SK_H2_PREFACE_LEN ? 1 : 0;
}

/* ---- nghttp2 memory: counted per connection, capped ------------------------ */


/* ---- stream objects ------------------------------------------------------------ */

/* Stream objects (and their arena's first block) are pooled per thread.
 * Streams finish in bursts (the reap list runs at the end of a loop
 * iteration: a connection's responses that went out in one write free their
 * streams together) and the next requests arrive in the following iteration;
 * a pool smaller than the burst sends the rest through free + calloc + a new
 * arena block. So the pool keeps up to STREAM_POOL_MAX, or up to the peak
 * number in use (at most the memory that peak already needed), and drops
 * back to STREAM_POOL_MAX once the thread has no stream in use. */
#define STREAM_POOL_MAX 128
static __thread struct h2s *stream_pool;
static __thread unsigned stream_pool_n;
static __thread unsigned stream_out;  /* handed out by stream_alloc, not back yet */
static __thread unsigned stream_peak; /* highest stream_out since it was last 0 */

static void stream_release(struct h2s *s)
{
    sk_arena_free(&s->st.arena);
    free(s);
}

static void stream_free(struct sk_reap *r)
{
    struct h2s *s = SK_CONTAINER_OF(r, struct h2s, reap);
    stream_out--;
    if (stream_pool_n < STREAM_POOL_MAX || stream_pool_n < stream_peak) {
        s->next = stream_pool;
        stream_pool = s;
        stream_pool_n++;
    } else {
        stream_release(s);
    }
    if (stream_out)
        return;
    stream_peak = 0;
    while (stream_pool_n > STREAM_POOL_MAX) {
        struct h2s *x = stream_pool;
        stream_pool = x->next;
        stream_pool_n--;
        stream_release(x);
    }
    sk_ngmem_thread_trim(); /* nghttp2's blocks of the burst, likewise */
}

void sk_h2_thread_cleanup(void)
{
    while (stream_pool) {
        struct h2s *s = stream_pool;
        stream_pool = s->next;
        stream_release(s);
    }
    stream_pool_n = 0;
    sessions_thread_cleanup();
    sk_ngmem_thread_cache_free(); /* after the sessions: their frees land there */
}

static struct h2s *stream_alloc(void)
{
    struct h2s *s = stream_pool;
    if (s) {
        stream_pool = s->next;
        stream_pool_n--;
        struct sk_arena keep = s->st.arena;
        memset(s, 0, sizeof(*s));
        s->st.arena = keep;
    } else {
        s = calloc(1, sizeof(*s));
        if (!s)
            return NULL;
        sk_arena_init(&s->st.arena, 4096); /* a proxied stream needs ~2.5 KB: one block */
    }
    if (++stream_out > stream_peak)
        stream_peak = stream_out;
    return s;
}

static struct h2s *S(struct sk_stream *st)
{
    return SK_CONTAINER_OF(st, struct h2s, st);
}

/* One timer serves the idle timeout and hibernation: it first fires after
 * H2_HIB_S (hibernate), then at the idle timeout. */
static void idle_start(struct h2c *c)
{
    struct ev_loop *loop = c->base.w->loop;
    ev_timer_stop(loop, &c->idle);
    if (c->draining || c->closed)
        return;
    uint64_t ms = c->fc->hcm->idle_timeout_ms;
    double after = H2_HIB_S;
    if (ms != SK_DUR_NONE && ms != 0 && (double)ms / 1000.0 < after)
        after = (double)ms / 1000.0;
    c->idle_since = ev_now(loop);
    ev_timer_set(&c->idle, after, 0.);
    ev_timer_start(loop, &c->idle);
}

/* Give back flow-control credit for request bytes we will never deliver. */
static void release_held(struct h2s *s)
{
    size_t n = sk_buf_used(&s->qbody);
    if (n && !s->c->closed)
        nghttp2_session_consume(s->c->ng, s->id, n);
    sk_buf_consume(&s->qbody, n);
}

static void stream_finish(struct h2s *s)
{
    if (s->finished)
        return;
    s->finished = true;
    struct h2c *c = s->c;
    struct sk_worker *w = c->base.w;
    release_held(s);
    if (!s->ng_closed && !c->closed)
        nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    if (c->hs == s)
        c->hs = NULL;
    c->nstreams--;
    sk_stream_cleanup(&s->st);
    sk_buf_free(&s->rbody);
    sk_buf_free(&s->qbody);
    if (s->st.snap)
        sk_snapshot_unref((struct sk_snapshot *)s->st.snap);
    s->st.snap = NULL;
    sk_stat_add(&w->stats, SK_ST_downstream_rq_active, -1);
    sk_worker_reap(w, &s->reap);
    if (c->nstreams == 0 && !c->closed) {
        if (c->draining)
            final_goaway(c);
        else
            idle_start(c);
    }
}

static void maybe_finish(struct h2s *s)
{
    if (!s->finished && s->resp_done && s->ng_closed)
        stream_finish(s);
}

/* ---- connection lifecycle --------------------------------------------------------- */

static void conn_free(struct sk_reap *r)
{
    struct h2c *c = SK_CONTAINER_OF(r, struct h2c, reap);
    if (c->ng)
        nghttp2_session_del(c->ng);
    sk_buf_free(&c->out);
    if (c->snap)
        sk_snapshot_unref(c->snap);
    free(c);
}

static void conn_close(struct h2c *c)
{
    if (c->closed)
        return;
    struct sk_worker *w = c->base.w;
    c->closed = true;
    /* stop everything upstream; stream objects go to the reap list */
    while (c->streams) {
        struct h2s *s = c->streams;
        s->ng_closed = true;
        if (!s->resp_done) {
            s->resp_done = true;
            sk_stream_abort(&s->st, SK_TERM_CLIENT_RESET);
        }
        stream_finish(s);
    }
    ev_io_stop(w->loop, &c->io);
    ev_timer_stop(w->loop, &c->idle);
    ev_timer_stop(w->loop, &c->goaway);
    ev_timer_stop(w->loop, &c->hdrt);
    sk_tp_close(&c->tp);
    sk_worker_conn_unlink(w, &c->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, -1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_destroy, 1);
    sk_scope_add(c->l->scope, w->id, SK_SC_downstream_cx_active, -1);
    sk_scope_add(c->l->scope, w->id, SK_SC_downstream_cx_destroy, 1);
    /* the session is deleted in conn_free: we may be below one of its callbacks */
    sk_worker_reap(w, &c->reap);
}

static void update_io(struct h2c *c)
{
    if (c->closed)
        return;
    int ev = 0;
    if (!c->no_read)
        ev |= sk_tp_events_for_read(&c->tp);
    if (c->write_blocked)
        ev |= sk_tp_events_for_write(&c->tp);
    sk_io_set(c->base.w->loop, &c->io, ev);
}

static void final_goaway(struct h2c *c)
{
    if (c->goaway_sent || c->closed || !wake(c))
        return;
    c->goaway_sent = true;
    c->draining = true;
    ev_timer_stop(c->base.w->loop, &c->idle);
    ev_timer_stop(c->base.w->loop, &c->goaway);
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    queue_flush(c);
}

/* Graceful: a GOAWAY that only announces the shutdown (last id 2^31-1), then
 * after a grace period (streams the client had in flight arrive) the final
 * one; the connection closes once the remaining streams are done. */
static void start_graceful(struct h2c *c)
{
    if (c->draining || c->closed || !wake(c))
        return;
    c->draining = true;
    ev_timer_stop(c->base.w->loop, &c->idle);
    if (c->nstreams == 0) {
        final_goaway(c);
        return;
    }
    nghttp2_submit_shutdown_notice(c->ng);
    ev_timer_stop(c->base.w->loop, &c->goaway);
    ev_timer_set(&c->goaway, H2_GOAWAY_GRACE_S, 0.);
    ev_timer_start(c->base.w->loop, &c->goaway);
    queue_flush(c);
}

static void conn_drain(struct sk_conn_base *b)
{
    struct h2c *c = (struct h2c *)b;
    if (c->closed)
        return;
    if (c->base.w->stopping) {
        conn_close(c);
        return;
    }
    start_graceful(c);
}

/* Fatal protocol error or resource limit: flush whatever nghttp2 queued
 * (normally a GOAWAY), stop reading, close soon. */
static void die(struct h2c *c, int ngerr)
{
    if (c->closed)
        return;
    sk_debug("conn %llu: h2 session error: %s", (unsigned long long)c->id, nghttp2_strerror(ngerr));
    if (c->dying) {
        conn_close(c);
        return;
    }
    c->dying = true;
    c->no_read = true;
    update_io(c);
    ev_timer_stop(c->base.w->loop, &c->idle);
    ev_timer_stop(c->base.w->loop, &c->goaway);
    ev_timer_set(&c->goaway, H2_DYING_S, 0.);
    ev_timer_start(c->base.w->loop, &c->goaway);
}

/* ---- writing ---------------------------------------------------------------------- */

/* Response bytes not yet taken by the data provider. */
static size_t resp_pending(const struct h2s *s)
{
    return (size_t)(s->body0_len - s->body0_off) + sk_buf_used(&s->rbody);
}

static void notify_drained(struct h2c *c)
{
    for (struct h2s *s = c->streams; s; s = s->next) {
        if (s->want_drained && !s->resp_done && resp_pending(s) <= H2_RESP_LOW) {
            s->want_drained = false;
            sk_stream_downstream_drained(&s->st);
        }
    }
}

static void pump(struct h2c *c)
{
    if (c->closed || c->in_pump || c->hib)
        return;
    c->in_pump = true;
    for (;;) {
        while (!c->write_blocked && sk_buf_used(&c->out) < H2_OUT_HIGH) {
            const uint8_t *d = NULL;
            ssize_t n = nghttp2_session_mem_send(c->ng, &d);
            if (n < 0) {
                c->in_pump = false;
                conn_close(c);
                return;
            }
            if (n == 0)
                break;
            if (sk_buf_append(&c->out, d, (size_t)n) < 0) {
                sk_warn("conn %llu: h2 output buffer limit reached; closing",
                        (unsigned long long)c->id);
                c->in_pump = false;
                conn_close(c);
                return;
            }
        }
        if (sk_buf_used(&c->out) == 0)
            break;
        if (c->write_blocked)
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
                c->in_pump = false;
                conn_close(c);
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
    if (!c->closed && sk_buf_used(&c->out) == 0 && !nghttp2_session_want_read(c->ng) &&
        !nghttp2_session_want_write(c->ng))
        conn_close(c);
    else if (!c->closed && c->dying && sk_buf_used(&c->out) == 0 &&
             !nghttp2_session_want_write(c->ng))
        conn_close(c);
}

static void flush_cb(struct sk_reap *r)
{
    struct h2c *c = SK_CONTAINER_OF(r, struct h2c, flush);
    c->flush_queued = false;
    if (!c->closed && !c->write_blocked)
        pump(c);
}

static void queue_flush(struct h2c *c)
{
    if (!c->flush_queued && !c->closed) {
        c->flush_queued = true;
        sk_worker_defer(c->base.w, &c->flush);
    }
}

/* ---- downstream ops (called by the router) ------------------------------------------- */

static bool resp_hop_by_hop(const char *n, uint32_t l)
{
    switch (l) {
    case 2:
        return memcmp(n, "te", 2) == 0;
    case 7:
        return memcmp(n, "upgrade", 7) == 0;
    case 10:
        return memcmp(n, "connection", 10) == 0 || memcmp(n, "keep-alive", 10) == 0;
    case 16:
        return memcmp(n, "proxy-connection", 16) == 0;
    case 17:
        return memcmp(n, "transfer-encoding", 17) == 0;
    }
    return false;
}

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct h2s *s = src->ptr;
    if (!s || s->finished)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = s->body0_len - s->body0_off;
    if (n > len)
        n = len;
    if (n) {
        memcpy(buf, s->body0 + s->body0_off, n);
        s->body0_off += (uint32_t)n;
    }
    size_t k = sk_buf_used(&s->rbody);
    if (k > len - n)
        k = len - n;
    if (k) {
        memcpy(buf + n, sk_buf_rptr(&s->rbody), k);
        sk_buf_consume(&s->rbody, k);
        n += k;
    }
    if (resp_pending(s) == 0) {
        if (s->resp_eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (s->resp_trailers.n) {
                nghttp2_nv *nva = sk_arena_alloc(&s->st.arena, sizeof(*nva) * s->resp_trailers.n);
                if (nva) {
                    for (uint32_t i = 0; i < s->resp_trailers.n; i++) {
                        const struct sk_hdr *h = &s->resp_trailers.v[i];
                        nva[i] = (nghttp2_nv){(uint8_t *)h->name, (uint8_t *)h->value, h->nlen,
                                              h->vlen, NGHTTP2_NV_FLAG_NONE};
                    }
                    if (nghttp2_submit_trailer(ng, id, nva, s->resp_trailers.n) == 0)
                        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                }
            }
        } else if (n == 0) {
            s->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
        sk_buf_shrink(&s->rbody);
    }
    return (ssize_t)n;
}

static void resume(struct h2s *s)
{
    if (s->deferred && !s->ng_closed && !s->c->closed) {
        s->deferred = false;
        nghttp2_session_resume_data(s->c->ng, s->id);
    }
    queue_flush(s->c);
}

static void op_send_head(struct sk_stream *st, int status, const struct sk_hdrs *h,
                         int64_t content_length, bool end_stream)
{
    struct h2s *s = S(st);
    struct h2c *c = s->c;
    if (c->closed || s->rst || s->head_sent || s->ng_closed)
        return;
    bool ws_accept = false;
    if (s->ext_connect && status == 101) {
        status = 200; /* RFC 8441 5: the tunnel is open */
        content_length = -1;
        end_stream = false;
        ws_accept = true;
    }
    int cls = status / 100;
    if (cls >= 1 && cls <= 5)
        sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_1xx + cls - 1, 1);
    /* nghttp2 copies the field list; the names and values need no copy (nor
     * its lower-casing pass: names are lower-case here) when they stay put
     * until the HEADERS frame is serialized. The list is st->resp_hdrs, in
     * the stream arena for the access log until sk_stream_cleanup, and
     * nghttp2 reads the strings only while the stream is open (a HEADERS
     * item of a closed stream is dropped unread), i.e. before stream_finish;
     * so are the literals and what is formatted into the arena below. */
    const uint8_t keep = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    uint8_t hkeep = h->n && h->v == st->resp_hdrs.v && h->n <= st->resp_hdrs.n
                        ? keep
                        : NGHTTP2_NV_FLAG_NONE;
    size_t nmax = (size_t)h->n + 2;
    /* one piece: the list, then :status and content-length values */
    nghttp2_nv *nva = sk_arena_alloc_nz(&st->arena, sizeof(*nva) * nmax + 48);
    if (!nva) {
        st->ops->reset(st);
        return;
    }
    char *sv = (char *)(nva + nmax);
    unsigned sc = (unsigned)status % 1000;
    size_t nvl;
    if (sc >= 100) {
        sv[0] = (char)('0' + sc / 100);
        sv[1] = (char)('0' + sc / 10 % 10);
        sv[2] = (char)('0' + sc % 10);
        nvl = 3;
    } else {
        nvl = sk_fmt_u64(sv, sc);
    }
    size_t n = 0;
    nva[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)sv, 7, nvl, keep};
    bool has_cl = false;
    for (uint32_t i = 0; i < h->n; i++) {
        const struct sk_hdr *x = &h->v[i];
        if (x->nlen == 0 || x->name[0] == ':' || resp_hop_by_hop(x->name, x->nlen))
            continue;
        if (ws_accept && x->nlen == 20 && strncasecmp(x->name, "sec-websocket-accept", 20) == 0)
            continue; /* answers the key we made up; h2 clients have no use for it */
        if (x->nlen == 14 && memcmp(x->name, "content-length", 14) == 0)
            has_cl = true;
        const char *name = x->name;
        uint8_t fl = hkeep;
        if (sk_ascii_has_upper(name, x->nlen)) {
            char *ln = sk_arena_alloc(&st->arena, x->nlen + 1);
            if (!ln)
                continue;
            sk_ascii_lower_copy(ln, x->name, x->nlen);
            name = ln;
            fl |= NGHTTP2_NV_FLAG_NO_COPY_NAME;
        }
        nva[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)x->value, x->nlen, x->vlen, fl};
    }
    bool no_body =
        end_stream || status == 204 || status == 304 || st->resp_head_req || status < 200;
    if (!has_cl && content_length >= 0 && status != 204 && status != 304 && status >= 200) {
        char *cl = sv + 24;
        size_t cll = sk_fmt_u64(cl, (unsigned long long)content_length);
        nva[n++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl, 14, cll, keep};
    }
    int rv;
    s->head_sent = true;
    if (no_body) {
        s->end_submitted = true;
        rv = nghttp2_submit_response(c->ng, s->id, nva, n, NULL);
    } else {
        const struct sk_cluster *cl = st->cluster;
        size_t upcap = cl && cl->per_connection_buffer_limit_bytes
                           ? cl->per_connection_buffer_limit_bytes
                           : 1024 * 1024;
        sk_buf_init(&s->rbody, H2_RESP_HIGH + upcap + 64 * 1024);
        s->has_body = true;
        nghttp2_data_provider dp = {.source.ptr = s, .read_callback = data_read_cb};
        rv = nghttp2_submit_response(c->ng, s->id, nva, n, &dp);
    }
    if (rv != 0) {
        sk_debug("conn %llu stream %d: submit_response: %s", (unsigned long long)c->id, s->id,
                 nghttp2_strerror(rv));
        s->has_body = false;
        s->rst = true;
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    }
    queue_flush(c);
}

static void op_send_data(struct sk_stream *st, const char *p, size_t n)
{
    struct h2s *s = S(st);
    if (s->c->closed || !s->has_body || s->rst || s->resp_eof || n == 0)
        return;
    if (s->ng_closed)
        return; /* client went away; the router hears it from on_stream_close */
    if (!s->body0 && n <= H2_BODY0_MAX && sk_buf_used(&s->rbody) == 0) {
        char *b = sk_arena_alloc_nz(&st->arena, n);
        if (b) {
            memcpy(b, p, n);
            s->body0 = b;
            s->body0_len = (uint32_t)n;
            resume(s);
            return;
        }
    }
    if (sk_buf_append(&s->rbody, p, n) < 0) {
        sk_warn("conn %llu stream %d: response buffer limit reached; resetting",
                (unsigned long long)s->c->id, s->id);
        if (st->cause == SK_TERM_NONE)
            st->cause = SK_TERM_OVERFLOW;
        st->ops->reset(st);
        return;
    }
    resume(s);
}

static void op_send_trailers(struct sk_stream *st, const struct sk_hdrs *t)
{
    struct h2s *s = S(st);
    if (!s->has_body || !t || !t->n || s->resp_eof)
        return;
    /* the list lives in the stream arena; filter what h2 forbids */
    struct sk_hdrs out = {0};
    for (uint32_t i = 0; i < t->n; i++) {
        const struct sk_hdr *x = &t->v[i];
        if (x->nlen == 0 || x->name[0] == ':' || resp_hop_by_hop(x->name, x->nlen) ||
            (x->nlen == 14 && memcmp(x->name, "content-length", 14) == 0))
            continue;
        sk_hdrs_add(&out, &st->arena, x->name, x->nlen, x->value, x->vlen);
    }
    s->resp_trailers = out;
}

static void op_send_end(struct sk_stream *st)
{
    struct h2s *s = S(st);
    struct h2c *c = s->c;
    if (s->resp_done)
        return;
    s->resp_done = true;
    if (!c->closed && !s->rst && !s->ng_closed) {
        if (s->has_body) {
            s->resp_eof = true;
            s->end_submitted = true;
            resume(s);
        } else if (!s->head_sent) {
            /* the router ended without a head: nothing sane to send */
            s->rst = true;
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
            queue_flush(c);
        }
    }
    maybe_finish(s);
}

static void op_reset(struct sk_stream *st)
{
    struct h2s *s = S(st);
    struct h2c *c = s->c;
    if (!s->rst && !s->ng_closed && !c->closed) {
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id,
                                  st->reset_code_set ? st->reset_code : NGHTTP2_INTERNAL_ERROR);
        queue_flush(c);
    }
    s->rst = true;
    if (!s->resp_done) {
        s->resp_done = true;
        maybe_finish(s);
    }
}

static bool op_congested(struct sk_stream *st)
{
    struct h2s *s = S(st);
    if (resp_pending(s) > H2_RESP_HIGH) {
        s->want_drained = true;
        return true;
    }
    return false;
}

/* Hand held request bytes to the router (and give the client its credit). */
static void deliver_held(struct h2s *s)
{
    struct h2c *c = s->c;
    if (s->delivering)
        return;
    s->delivering = true;
    while (!s->paused && !s->resp_done && sk_buf_used(&s->qbody) &&
           (!s->ext_connect || s->tunneled)) {
        size_t n = sk_buf_used(&s->qbody);
        if (s->tunneled)
            sk_stream_tunnel_data(&s->st, sk_buf_rptr(&s->qbody), n);
        else
            sk_stream_data(&s->st, sk_buf_rptr(&s->qbody), n);
        if (s->finished)
            break;
        sk_buf_consume(&s->qbody, n);
        if (!c->closed)
            nghttp2_session_consume(c->ng, s->id, n);
    }
    if (s->resp_done)
        release_held(s);
    if (!s->finished && sk_buf_used(&s->qbody) == 0) {
        sk_buf_shrink(&s->qbody);
        if (s->req_end_pending && !s->paused && (!s->ext_connect || s->tunneled)) {
            s->req_end_pending = false;
            if (s->tunneled && !s->resp_done)
                sk_stream_tunnel_eof(&s->st);
            else if (!s->resp_done)
                sk_stream_end(&s->st, s->req_trailers.n ? &s->req_trailers : NULL);
        }
    }
    s->delivering = false;
    queue_flush(c);
}

static void op_pause_read(struct sk_stream *st, bool pause)
{
    struct h2s *s = S(st);
    if (s->paused == pause)
        return;
    s->paused = pause;
    if (!pause && !s->c->closed)
        deliver_held(s);
}

static void op_tunnel(struct sk_stream *st)
{
    struct h2s *s = S(st);
    if (s->ext_connect && s->head_sent && !s->rst) {
        /* the upstream switched protocols: DATA frames carry the tunnel now */
        s->tunneled = true;
        if (!s->paused)
            deliver_held(s);
        return;
    }
    /* plain CONNECT over h2 (RFC 9113 8.5) is not supported */
    if (st->cause == SK_TERM_NONE)
        st->cause = SK_TERM_UPGRADE_REFUSED;
    if (st->up) {
        sk_up_abort(st->up);
        st->up = NULL;
    }
    op_reset(st);
}

static void op_send_1xx(struct sk_stream *st, int status)
{
    struct h2s *s = S(st);
    if (status != 100 || s->head_sent || s->rst || s->ng_closed || s->c->closed)
        return;
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
    nghttp2_submit_headers(s->c->ng, NGHTTP2_FLAG_NONE, s->id, NULL, &nv, 1, NULL);
    queue_flush(s->c);
}

static const struct sk_downstream_ops h2_ops = {
    op_send_head, op_send_data,  op_send_trailers, op_send_end, op_reset,
    op_congested, op_pause_read, op_tunnel,        op_send_1xx,
};

/* ---- request side (nghttp2 callbacks) ------------------------------------------------ */

/* Point the connection at the worker's newest snapshot (new streams use it;
 * streams in flight keep their own reference). A removed listener drains. */
static bool refresh_config(struct h2c *c)
{
    struct sk_worker *w = c->base.w;
    if (!w->snap || w->snap == c->snap)
        return true;
    const struct sk_listener *nl = sk_snapshot_find_listener(w->snap, c->l->name);
    const struct sk_filter_chain *nfc = NULL;
    if (nl) {
        size_t idx = (size_t)(c->fc - c->l->chains);
        if (c->fc == c->l->default_chain)
            nfc = nl->default_chain;
        else if (idx < nl->nchains && idx < c->l->nchains)
            nfc = &nl->chains[idx];
    }
    if (!nfc || nfc->kind != SK_CHAIN_HCM)
        return false; /* keep serving with the old one while draining */
    sk_snapshot_unref(c->snap);
    c->snap = sk_snapshot_ref(w->snap);
    c->l = nl;
    c->fc = nfc;
    return true;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct h2c *c = ud;
    if (c->restoring)
        return 0;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct sk_worker *w = c->base.w;
    bool still_there = refresh_config(c);
    struct h2s *s = stream_alloc();
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->reap.free_fn = stream_free;
    s->c = c;
    s->id = f->hd.stream_id;
    struct sk_stream *st = &s->st;
    st->w = w;
    st->ops = &h2_ops;
    st->conn = c;
    st->tls = c->tp.ssl;
    st->conn_id = c->id;
    st->stream_id = (uint32_t)f->hd.stream_id;
    st->snap = sk_snapshot_ref(c->snap);
    st->listener = c->l;
    st->hcm = c->fc->hcm;
    s->hdr_max_bytes =
        (size_t)(st->hcm->max_request_headers_kb ? st->hcm->max_request_headers_kb : 60) * 1024;
    s->hdr_max_count = st->hcm->max_headers_count ? st->hcm->max_headers_count : 100;
    st->t_start = ev_now(w->loop);
    st->scheme = c->tp.ssl ? "https" : "http"; /* the transport, not the client's claim */
    memcpy(st->peer_ip, c->peer_ip, sizeof(st->peer_ip));
    st->peer_port = c->peer_port;
    st->downstream_h2 = true;
    sk_buf_init(&s->qbody, (size_t)c->swin + 16384);
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nstreams++;
    ev_timer_stop(w->loop, &c->idle);
    uint64_t hto = c->fc->hcm->request_headers_timeout_ms;
    if (hto != SK_DUR_NONE && hto > 0) {
        /* header blocks are contiguous (RFC 9113 6.10): one at a time per connection */
        ev_timer_stop(w->loop, &c->hdrt);
        ev_timer_set(&c->hdrt, (double)hto / 1000.0, 0.);
        ev_timer_start(w->loop, &c->hdrt);
    }
    sk_stat_add(&w->stats, SK_ST_downstream_rq_active, 1);
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    c->hs = s; /* header blocks are contiguous: on_header's stream, without a lookup */
    if (!still_there)
        start_graceful(c); /* the listener is gone from the config: drain */
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
    struct h2c *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || c->restoring)
        return 0;
    struct h2s *s = c->hs;
    if (!s || s->id != f->hd.stream_id)
        s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!s || s->finished)
        return 0;
    struct sk_stream *st = &s->st;
    s->hdr_bytes += (uint32_t)(nlen + vlen + 32);
    s->hdr_count++;
    if (s->hdr_bytes > s->hdr_max_bytes ||
        s->hdr_count > (uint64_t)s->hdr_max_count + 4 /* pseudo-headers */)
        s->hdr_too_large = true;
    if (s->hdr_too_large)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* trailers (nghttp2 has rejected pseudo-headers in them) */
        if (sk_hdrs_add(&s->req_trailers, &st->arena, n, nlen, v, vlen) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return 0;
    }
    if (nlen && n[0] == ':') {
        /* :scheme is the client's claim; x-forwarded-proto uses the transport */
        if (name_is(name, nlen, ":scheme"))
            return 0;
        char *dup = sk_arena_strndup(&st->arena, v, vlen);
        if (!dup)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (name_is(name, nlen, ":method")) {
            st->method = dup;
            st->method_len = (uint32_t)vlen;
        } else if (name_is(name, nlen, ":path")) {
            st->path = dup;
            st->path_len = (uint32_t)vlen;
        } else if (name_is(name, nlen, ":authority")) {
            st->authority = dup;
            st->authority_len = (uint32_t)vlen;
        } else if (name_is(name, nlen, ":protocol")) {
            /* RFC 8441 (nghttp2 accepts it only on CONNECT, once we enabled it):
             * becomes an HTTP/1.1 Upgrade towards the upstream */
            s->ext_connect = true;
            if (sk_hdrs_add(&st->req, &st->arena, "upgrade", 7, v, vlen) < 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return 0;
    }
    if (name_is(name, nlen, "cookie")) {
        /* RFC 9113 8.2.3: crumbs are joined with "; " for HTTP/1.1 */
        struct sk_hdr *ck = sk_hdrs_get(&st->req, "cookie", 6);
        if (ck) {
            char *nv = sk_arena_alloc(&st->arena, ck->vlen + 2 + vlen + 1);
            if (!nv)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            memcpy(nv, ck->value, ck->vlen);
            memcpy(nv + ck->vlen, "; ", 2);
            memcpy(nv + ck->vlen + 2, v, vlen);
            nv[ck->vlen + 2 + vlen] = 0;
            ck->value = nv;
            ck->vlen += (uint32_t)(2 + vlen);
            return 0;
        }
    }
    if (name_is(name, nlen, "content-length")) {
        uint64_t cl = 0;
        for (size_t i = 0; i < vlen; i++)
            cl = cl * 10 + (uint64_t)(v[i] - '0'); /* nghttp2 checked: digits only */
        s->has_cl = true;
        st->req_content_length = cl;
    } else if (name_is(name, nlen, "expect")) {
        if (vlen == 12 && strncasecmp(v, "100-continue", 12) == 0)
            st->req_flags |= SK_H1_F_EXPECT_CONTINUE;
    }
    if (sk_hdrs_add(&st->req, &st->arena, n, nlen, v, vlen) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static void request_end(struct h2s *s, const struct sk_hdrs *trailers)
{
    s->req_done = true;
    if (!s->started || s->resp_done)
        return;
    if (sk_buf_used(&s->qbody) || (s->ext_connect && !s->tunneled)) {
        s->req_end_pending = true;
        return;
    }
    if (s->tunneled)
        sk_stream_tunnel_eof(&s->st); /* half-close towards the upstream */
    else
        sk_stream_end(&s->st, trailers);
}

/* Extended CONNECT (RFC 8441) -> the HTTP/1.1 Upgrade form (RFC 6455 4.1):
 * GET + Upgrade (+ Connection: upgrade, added by the upstream encoder), and a
 * Sec-WebSocket-Key, which h2 clients do not send but h1 servers require. The
 * upstream's 101 goes back as 200 (op_send_head). */
static void ext_connect_to_upgrade(struct h2s *s)
{
    struct sk_stream *st = &s->st;
    st->method = "GET";
    st->method_len = 3;
    st->req_flags |= SK_H1_F_UPGRADE;
    struct sk_hdr *u = sk_hdrs_get(&st->req, "upgrade", 7);
    bool ws = u && u->vlen == 9 && strncasecmp(u->value, "websocket", 9) == 0;
    if (ws && !sk_hdrs_get(&st->req, "sec-websocket-key", 17)) {
        static const char b64[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        uint8_t k[18];
        for (int i = 0; i < 18; i += 2) {
            uint32_t r = sk_worker_rand(st->w);
            k[i] = (uint8_t)r;
            k[i + 1] = (uint8_t)(r >> 8);
        }
        char key[25];
        for (int i = 0, o = 0; i < 18 && o < 24; i += 3) {
            uint32_t x = ((uint32_t)k[i] << 16) | ((uint32_t)k[i + 1] << 8) | k[i + 2];
            key[o++] = b64[(x >> 18) & 63];
            key[o++] = b64[(x >> 12) & 63];
            key[o++] = b64[(x >> 6) & 63];
            key[o++] = b64[x & 63];
        }
        key[22] = key[23] = '='; /* 16 bytes of nonce: 22 characters + "==" */
        key[24] = 0;
        sk_hdrs_add(&st->req, &st->arena, "sec-websocket-key", 17, key, 24);
    }
}

static void start_request(struct h2s *s, bool end_stream)
{
    struct h2c *c = s->c;
    struct sk_stream *st = &s->st;
    if (!st->authority) {
        struct sk_hdr *host = sk_hdrs_get(&st->req, "host", 4);
        if (host) {
            st->authority = host->value;
            st->authority_len = host->vlen;
        }
    }
    if (!st->path) {
        st->path = ""; /* CONNECT */
        st->path_len = 0;
    }
    if (!st->method) {
        st->method = "";
        st->method_len = 0;
    }
    if (st->method_len == 4 && memcmp(st->method, "HEAD", 4) == 0)
        st->req_flags |= SK_H1_F_HEAD;
    if (st->method_len == 7 && memcmp(st->method, "CONNECT", 7) == 0) {
        if (s->ext_connect)
            ext_connect_to_upgrade(s);
        else
            st->req_flags |= SK_H1_F_CONNECT;
    }
    st->req_flags |= SK_H1_F_KEEPALIVE | SK_H1_F_HAS_HOST;
    if (end_stream) {
        st->req_body_kind = SK_H1_BODY_NONE;
        st->req_end = true;
        s->req_done = true;
        if (s->has_cl && st->req_content_length == 0)
            st->req_flags |= SK_H1_F_HAS_CL;
    } else if (s->ext_connect && (st->req_flags & SK_H1_F_UPGRADE)) {
        st->req_body_kind = SK_H1_BODY_NONE; /* tunnel bytes are not a body */
    } else if (s->has_cl) {
        st->req_body_kind = SK_H1_BODY_LENGTH;
        st->req_flags |= SK_H1_F_HAS_CL;
    } else {
        st->req_body_kind = SK_H1_BODY_CHUNKED;
    }
    s->started = true;
    if (s->hdr_too_large) {
        st->resp_head_req = (st->req_flags & SK_H1_F_HEAD) != 0;
        sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_total, 1);
        sk_stream_local_reply(st, SK_TERM_DOWNSTREAM_PROTO, 431, "request headers too large");
        return;
    }
    if (c->goaway_sent && s->id > nghttp2_session_get_last_proc_stream_id(c->ng)) {
        op_reset(st);
        return;
    }
    sk_stream_headers(st);
    /* an extended CONNECT's request is its head (as an h1 Upgrade GET): what
     * follows is tunnel data, held until the upstream switched protocols */
    if (s->ext_connect && !s->resp_done && !s->finished)
        sk_stream_end(st, NULL);
}

static void on_control_frame(struct h2c *c, const nghttp2_frame *f)
{
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK)) {
            for (size_t i = 0; i < f->settings.niv; i++)
                if (f->settings.iv[i].settings_id == NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES)
                    c->client_no_prio = f->settings.iv[i].value == 1;
        } else if (c->settings_inflight && --c->settings_inflight == 0 && c->nstreams == 0 &&
                   ev_now(c->base.w->loop) - c->idle_since >= H2_HIB_S) {
            c->hib_wanted = true; /* idle and waiting for this ACK (e.g. the HPACK step) */
        }
        break;
    case NGHTTP2_GOAWAY:
        c->goaway_recv = true;
        break;
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct h2c *c = ud;
    if (c->restoring)
        return 0;
    ev_timer_stop(c->base.w->loop, &c->hdrt); /* any complete frame ends a header block */
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) {
        on_control_frame(c, f);
        return 0;
    }
    struct h2s *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!s || s->finished)
        return 0;
    bool es = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            start_request(s, es);
            return 0;
        }
        if (es && s->started)
            request_end(s, s->req_trailers.n ? &s->req_trailers : NULL);
        return 0;
    }
    if (es && s->started)
        request_end(s, NULL);
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                              size_t len, void *ud)
{
    struct h2s *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s || s->finished || s->resp_done || !s->started) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    s->st.bytes_rx += len;
    if (s->paused || sk_buf_used(&s->qbody) || (s->ext_connect && !s->tunneled)) {
        if (sk_buf_append(&s->qbody, data, len) < 0) {
            /* more than the window we granted: the peer broke flow control */
            nghttp2_session_consume(ng, id, len);
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_FLOW_CONTROL_ERROR);
        }
        return 0;
    }
    if (s->tunneled)
        sk_stream_tunnel_data(&s->st, (const char *)data, len);
    else
        sk_stream_data(&s->st, (const char *)data, len);
    /* the router took the bytes (possibly pausing us for what comes next) */
    nghttp2_session_consume(ng, id, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t err, void *ud)
{
    if (((struct h2c *)ud)->restoring)
        return 0;
    ev_timer_stop(((struct h2c *)ud)->base.w->loop, &((struct h2c *)ud)->hdrt);
    struct h2s *s = nghttp2_session_get_stream_user_data(ng, id);
    if (!s || s->finished)
        return 0;
    s->ng_closed = true;
    release_held(s);
    if (!s->resp_done && !(s->end_submitted && err == NGHTTP2_NO_ERROR)) {
        /* reset by the client (or by nghttp2 for a protocol violation) */
        s->resp_done = true;
        if (err != NGHTTP2_NO_ERROR || !s->req_done)
            sk_debug("conn %llu stream %d: closed by peer (%s)", (unsigned long long)s->c->id, id,
                     nghttp2_http2_strerror(err));
        sk_stream_abort(&s->st, SK_TERM_CLIENT_RESET);
    }
    maybe_finish(s);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct h2s *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!s || s->finished || s->req_done || s->rst)
        return 0;
    /* complete response to an incomplete request: the rest is not wanted
     * (RFC 9113 8.1) */
    s->rst = true;
    nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_invalid_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, int lib_err, void *ud)
{
    struct h2c *c = ud;
    sk_debug("conn %llu: invalid frame (type %u, stream %d): %s", (unsigned long long)c->id,
             f->hd.type, f->hd.stream_id, nghttp2_strerror(lib_err));
    return 0;
}

/* ---- reading ------------------------------------------------------------------------ */

/* Where the client's byte stream is: hibernation needs a frame boundary
 * outside any header block, and the highest stream id the client opened. */
static void track_input(struct h2c *c, const uint8_t *p, size_t n)
{
    while (n) {
        size_t k;
        if (c->magic_left) {
            k = n < c->magic_left ? n : c->magic_left;
            c->magic_left -= (uint8_t)k;
        } else if (c->payload_left) {
            k = n < c->payload_left ? n : c->payload_left;
            c->payload_left -= (uint32_t)k;
        } else {
            k = 9u - c->fh_n;
            if (k > n)
                k = n;
            memcpy(c->fh + c->fh_n, p, k);
            c->fh_n = (uint8_t)(c->fh_n + k);
            if (c->fh_n == 9) {
                const uint8_t *h = c->fh;
                uint8_t t = h[3];
                c->fh_n = 0;
                c->payload_left = ((uint32_t)h[0] << 16) | ((uint32_t)h[1] << 8) | h[2];
                if (t == NGHTTP2_HEADERS || t == NGHTTP2_PUSH_PROMISE || t == NGHTTP2_CONTINUATION)
                    c->hblock_open = !(h[4] & NGHTTP2_FLAG_END_HEADERS);
                if (t == NGHTTP2_HEADERS) {
                    uint32_t sid = ((uint32_t)(h[5] & 0x7f) << 24) | ((uint32_t)h[6] << 16) |
                                   ((uint32_t)h[7] << 8) | h[8];
                    if (sid > c->max_sid)
                        c->max_sid = sid;
                }
            }
        }
        p += k;
        n -= k;
    }
}

static void feed(struct h2c *c, const char *p, size_t n)
{
    track_input(c, (const uint8_t *)p, n);
    ssize_t r = nghttp2_session_mem_recv(c->ng, (const uint8_t *)p, n);
    if (r < 0) {
        sk_stat_add(&c->base.w->stats, SK_ST_downstream_cx_protocol_error, 1);
        if (r == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
            conn_close(c);
            return;
        }
        die(c, (int)r);
        if (!c->closed)
            nghttp2_session_terminate_session(c->ng, NGHTTP2_PROTOCOL_ERROR);
    }
}

static void on_readable(struct h2c *c)
{
    char buf[H2_READ_CHUNK];
    ssize_t r;
    if (c->tp.ssl) {
        int want = 0;
        c->tp.want_rd = 0;
        r = sk_tls_read(c->tp.ssl, buf, sizeof(buf), &want);
        if (r == SK_ERR_AGAIN) {
            c->tp.want_rd = (uint8_t)want;
            update_io(c);
            return;
        }
        if (r < 0) {
            conn_close(c);
            return;
        }
    } else {
        r = recv(c->tp.fd, buf, sizeof(buf), 0); /* recv: no VFS layer (see sk_buf_read_fd) */
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            conn_close(c);
            return;
        }
    }
    if (r == 0) {
        conn_close(c);
        return;
    }
    if (!wake(c))
        return;
    feed(c, buf, (size_t)r);
    pump(c);
    if (c->hib_wanted && !c->closed) {
        c->hib_wanted = false;
        if (c->nstreams == 0)
            try_hibernate(c);
    }
    /* TLS may hold more bytes (decrypted or read ahead) than one read took */
    if (c->tp.ssl && !c->closed && !c->no_read && SSL_has_pending(c->tp.ssl))
        ev_feed_event(c->base.w->loop, &c->io, EV_READ);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct h2c *c = io->data;
    if (revents & EV_WRITE) {
        c->write_blocked = false;
        update_io(c);
        pump(c);
        if (c->closed)
            return;
    }
    if (((revents & EV_READ) || (c->tp.ssl && c->tp.want_rd == SK_TLS_WANT_WRITE)) &&
        !c->no_read)
        on_readable(c);
}

/* The client's next bytes are already waiting: the connection is not idle,
 * the loop is only late to read them (an iteration slower than H2_HIB_S,
 * as under overload). Hibernating now would rebuild the session at once. */
static bool input_waiting(const struct h2c *c)
{
    if (c->tp.ssl && SSL_has_pending(c->tp.ssl))
        return true;
    char b;
    return recv(c->tp.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static void idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2c *c = t->data;
    if (c->nstreams || c->closed)
        return;
    uint64_t ms = c->fc->hcm->idle_timeout_ms;
    bool has_to = ms != SK_DUR_NONE && ms != 0;
    double left = has_to ? (double)ms / 1000.0 - (ev_now(loop) - c->idle_since) : 0;
    if (has_to && left <= 0.001) {
        sk_stat_add(&c->base.w->stats, SK_ST_downstream_cx_idle_timeout, 1);
        final_goaway(c);
        return;
    }
    if (!c->hib && input_waiting(c)) {
        /* look again after the read (it may hold no new stream) */
        ev_timer_set(&c->idle, has_to && left < H2_HIB_S ? left : H2_HIB_S, 0.);
        ev_timer_start(loop, &c->idle);
        return;
    }
    try_hibernate(c);
    if (has_to) {
        ev_timer_set(&c->idle, left, 0.);
        ev_timer_start(loop, &c->idle);
    }
}

/* A header block did not complete within request_headers_timeout. No other
 * frame may interleave with it, so the whole connection is stuck: GOAWAY and
 * close (the stream cannot be answered before its headers are decoded). */
static void hdrt_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2c *c = t->data;
    if (c->closed)
        return;
    sk_stat_add(&c->base.w->stats, SK_ST_downstream_rq_header_timeout, 1);
    sk_warn("conn %llu: %s: request headers not complete within %llu ms (RQT): closing",
            (unsigned long long)c->id, c->peer_ip,
            (unsigned long long)c->fc->hcm->request_headers_timeout_ms);
    nghttp2_session_terminate_session(c->ng, NGHTTP2_NO_ERROR);
    die(c, NGHTTP2_ERR_CALLBACK_FAILURE);
    if (!c->closed)
        queue_flush(c);
}

static void goaway_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2c *c = t->data;
    if (c->dying) {
        conn_close(c);
        return;
    }
    final_goaway(c);
}

/* ---- sessions and hibernation ------------------------------------------------------- */

/* Callbacks and options are the same for every connection of a thread. */
static __thread nghttp2_session_callbacks *tl_cbs;
static __thread nghttp2_option *tl_opt[2]; /* [1]: a resumed session (no client magic) */

static int session_new(struct h2c *c, bool resumed, nghttp2_session **out)
{
    int k = resumed ? 1 : 0;
    if (!tl_cbs) {
        nghttp2_session_callbacks *cbs;
        if (nghttp2_session_callbacks_new(&cbs) != 0)
            return NGHTTP2_ERR_NOMEM;
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame_recv);
        tl_cbs = cbs;
    }
    if (!tl_opt[k]) {
        nghttp2_option *opt;
        if (nghttp2_option_new(&opt) != 0)
            return NGHTTP2_ERR_NOMEM;
        nghttp2_option_set_no_auto_window_update(opt, 1);
        nghttp2_option_set_no_closed_streams(opt, 1);
        nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
        nghttp2_option_set_max_send_header_block_length(opt, 256 * 1024);
        nghttp2_option_set_stream_reset_rate_limit(opt, H2_RST_BURST, H2_RST_RATE);
        if (resumed)
            nghttp2_option_set_no_recv_client_magic(opt, 1);
        tl_opt[k] = opt;
    }
    nghttp2_mem mem;
    sk_ngmem_init(&mem, &c->ngm);
    return nghttp2_session_server_new3(out, tl_cbs, c, tl_opt[k], &mem);
}

static void sessions_thread_cleanup(void)
{
    if (tl_cbs)
        nghttp2_session_callbacks_del(tl_cbs);
    tl_cbs = NULL;
    for (int k = 0; k < 2; k++) {
        if (tl_opt[k])
            nghttp2_option_del(tl_opt[k]);
        tl_opt[k] = NULL;
    }
}

/* Our SETTINGS; the header table size only where asked (see wake). */
static size_t fill_settings(const struct h2c *c, nghttp2_settings_entry *iv, bool table)
{
    size_t n = 0;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->max_streams};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, c->swin};
    if (table)
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, c->table_cfg};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, c->max_hdr_list};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1};
    if (c->fc->hcm->allow_websocket) /* RFC 8441 extended CONNECT where the HCM upgrades */
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    return n;
}

/* Hibernation. An nghttp2 session costs ~25 KB (its struct, HPACK rings,
 * stream map, a 16 KB frame buffer) whether or not a stream is open. After
 * H2_HIB_S without streams, with nothing to write and the client's byte
 * stream at a frame boundary, the session is deleted; what the connection
 * needs to continue is kept in struct h2c: the client's SETTINGS, both
 * connection windows and the highest client stream id. The next read (or a
 * drain) builds a new session and replays that state into it (wake): our
 * SETTINGS and window are "sent" and the output dropped (the client has
 * them), the client's SETTINGS, a SETTINGS ACK, a WINDOW_UPDATE and a
 * HEADERS on the highest stream id (reset at once, so that old stream ids
 * stay closed) are fed as input with callbacks ignoring them.
 * HPACK: our encoder may start from an empty table (the client's decoder
 * table is a superset and entries are evicted oldest first); the client's
 * encoder table cannot be rebuilt, so a non-empty one is first emptied by
 * SETTINGS_HEADER_TABLE_SIZE 0 (hibernation follows the client's ACK) and
 * the configured size is announced again on wake.
 * A new session can only be told of window increases. Our receive window
 * must therefore be at least 65535 to hibernate. A send window below 65535
 * (a client with the default window that has not returned what it received,
 * as many idle clients do) is rebuilt on wake by "sending" the owed bytes as
 * the body of a 200 on the replayed stream and dropping them; a client whose
 * stream window is smaller than what it owes keeps its session. */
static void try_hibernate(struct h2c *c)
{
    nghttp2_session *ng = c->ng;
    if (!ng || c->closed || c->draining || c->dying || c->goaway_sent || c->goaway_recv ||
        c->nstreams || c->in_pump || c->write_blocked || c->flush_queued ||
        sk_buf_used(&c->out) || c->settings_inflight || c->magic_left || c->fh_n ||
        c->payload_left || c->hblock_open || (c->max_sid && !(c->max_sid & 1)) ||
        nghttp2_session_want_write(ng) || !nghttp2_session_want_read(ng))
        return;
    /* our receive window must be at least the initial 65535: a new session
     * starts there and can only be told of increases. A send window below it
     * (a client that has not returned what it received) is rebuilt on wake by
     * sending that many DATA bytes on the replayed stream (output dropped):
     * that needs the replayed stream and a stream window that large. */
    int32_t rw = nghttp2_session_get_local_window_size(ng);
    int32_t sw = nghttp2_session_get_remote_window_size(ng);
    if (rw < NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE || sw < 0)
        return;
    if (sw < NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE &&
        (!c->max_sid ||
         (uint32_t)(NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE - sw) >
             nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE)))
        return;
    if (c->table_sent != 0 && (c->table_sent != NGHTTP2_DEFAULT_HEADER_TABLE_SIZE ||
                               nghttp2_session_get_hd_inflate_dynamic_table_size(ng) > 0)) {
        nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0};
        if (nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, &iv, 1) == 0) {
            c->table_sent = 0;
            c->settings_inflight++;
            queue_flush(c);
        }
        return;
    }
    for (int i = 0; i < 6; i++)
        c->rset[i] = nghttp2_session_get_remote_settings(ng, (nghttp2_settings_id)(i + 1));
    c->rcv_win = rw;
    c->snd_win = sw;
    nghttp2_session_del(ng);
    c->ng = NULL;
    c->hib = true;
    sk_worker_released(c->base.w, H2_SESSION_BYTES);
    if (c->tp.ssl)
        SSL_free_buffers(c->tp.ssl); /* OpenSSL's record buffers, if empty */
}

static uint8_t *put_frame(uint8_t *p, uint32_t len, uint8_t type, uint8_t flags, uint32_t sid)
{
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    p[5] = (uint8_t)((sid >> 24) & 0x7f);
    p[6] = (uint8_t)(sid >> 16);
    p[7] = (uint8_t)(sid >> 8);
    p[8] = (uint8_t)sid;
    return p + 9;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return p + 4;
}

/* DATA source of the response that rebuilds a send window (see wake):
 * `owed` zero bytes, then END_STREAM. */
static ssize_t owed_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ng;
    (void)id;
    (void)ud;
    size_t *owed = src->ptr;
    size_t n = len < *owed ? len : *owed;
    memset(buf, 0, n);
    *owed -= n;
    if (*owed == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int drop_output(nghttp2_session *ng)
{
    const uint8_t *d;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(ng, &d)) > 0)
        ;
    return (int)n;
}

/* Give a hibernated connection a session again (see try_hibernate). False
 * if that failed and the connection was closed. */
static bool wake(struct h2c *c)
{
    if (!c->hib)
        return true;
    if (c->closed)
        return false;
    nghttp2_session *ng = NULL;
    nghttp2_settings_entry iv[8];
    uint8_t in[128], *w = in;
    int rv = session_new(c, true, &ng);
    if (rv == 0)
        rv = nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, iv, fill_settings(c, iv, false));
    if (rv == 0 && c->rcv_win != NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE)
        rv = nghttp2_session_set_local_window_size(ng, NGHTTP2_FLAG_NONE, 0, c->rcv_win);
    c->restoring = true;
    if (rv == 0)
        rv = drop_output(ng);
    if (rv == 0) {
        uint8_t *set = w;
        w += 9;
        for (int i = 0; i < 6; i++) {
            *w++ = 0;
            *w++ = (uint8_t)(i + 1);
            w = put_u32(w, c->rset[i]);
        }
        if (c->client_no_prio) {
            *w++ = 0;
            *w++ = NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES;
            w = put_u32(w, 1);
        }
        put_frame(set, (uint32_t)(w - set - 9), NGHTTP2_SETTINGS, 0, 0);
        if (c->max_sid) {
            /* GET http / :authority "x": static entries and a literal never indexed */
            static const uint8_t get_root[] = {0x82, 0x86, 0x84, 0x01, 0x01, 'x'};
            w = put_frame(w, sizeof(get_root), NGHTTP2_HEADERS,
                          NGHTTP2_FLAG_END_STREAM | NGHTTP2_FLAG_END_HEADERS, c->max_sid);
            memcpy(w, get_root, sizeof(get_root));
            w += sizeof(get_root);
        }
        w = put_frame(w, 0, NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0);
        if (c->snd_win > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
            w = put_frame(w, 4, NGHTTP2_WINDOW_UPDATE, 0, 0);
            w = put_u32(w, (uint32_t)(c->snd_win - NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE));
        }
        ssize_t r = nghttp2_session_mem_recv(ng, in, (size_t)(w - in));
        if (r != w - in)
            rv = r < 0 ? (int)r : NGHTTP2_ERR_PROTO;
    }
    if (rv == 0 && c->snd_win < NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
        /* the client still owes us window: "send" that many DATA bytes on the
         * replayed stream (a 200 whose body ends it) and drop them, so the new
         * session's send window is where the old one was. :status 200 is a
         * static-table entry: our HPACK encoder's table stays as it is. */
        static const nghttp2_nv st200 = {(uint8_t *)":status", (uint8_t *)"200", 7, 3,
                                         NGHTTP2_NV_FLAG_NONE};
        size_t owed = (size_t)(NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE - c->snd_win);
        nghttp2_data_provider dp = {.source.ptr = &owed, .read_callback = owed_read_cb};
        rv = nghttp2_submit_response(ng, (int32_t)c->max_sid, &st200, 1, &dp);
        if (rv == 0)
            rv = drop_output(ng);
        if (rv == 0 && (owed || nghttp2_session_get_remote_window_size(ng) != c->snd_win))
            rv = NGHTTP2_ERR_INVALID_STATE;
    } else if (rv == 0 && c->max_sid) {
        rv = nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, (int32_t)c->max_sid,
                                       NGHTTP2_NO_ERROR);
    }
    if (rv == 0)
        rv = drop_output(ng);
    c->restoring = false;
    if (rv == 0 && (nghttp2_session_get_local_window_size(ng) != c->rcv_win ||
                    !nghttp2_session_want_read(ng) || nghttp2_session_want_write(ng)))
        rv = NGHTTP2_ERR_INVALID_STATE;
    if (rv != 0) {
        sk_warn("conn %llu: cannot resume the HTTP/2 session: %s", (unsigned long long)c->id,
                nghttp2_strerror(rv));
        if (ng)
            nghttp2_session_del(ng);
        conn_close(c);
        return false;
    }
    c->ng = ng;
    c->hib = false;
    /* from here on what is submitted goes to the client */
    if (c->rcv_win < (int32_t)c->cwin)
        nghttp2_session_set_local_window_size(ng, NGHTTP2_FLAG_NONE, 0, (int32_t)c->cwin);
    if (c->table_sent != c->table_cfg) {
        nghttp2_settings_entry t = {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, c->table_cfg};
        if (nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, &t, 1) == 0) {
            c->table_sent = c->table_cfg;
            c->settings_inflight++;
        }
    }
    return true;
}

/* ---- accept ----------------------------------------------------------------------------- */

static uint32_t clamp_u32(uint32_t v, uint32_t envoy_def, uint32_t def, uint32_t lo, uint32_t hi)
{
    if (v == 0 || v == envoy_def)
        v = def;
    if (v < lo)
        v = lo;
    if (v > hi)
        v = hi;
    return v;
}

void sk_h2_accept(struct sk_worker *w, const struct sk_listener *l,
                  const struct sk_filter_chain *fc, int fd, SSL *ssl,
                  const struct sk_sockaddr *peer, struct sk_snapshot *snap, const char *pre,
                  size_t prelen)
{
    struct h2c *c = calloc(1, sizeof(*c));
    if (!c) {
        if (ssl)
            SSL_free(ssl);
        close(fd);
        if (snap)
            sk_snapshot_unref(snap);
        return;
    }
    c->reap.free_fn = conn_free;
    c->flush.free_fn = flush_cb;
    c->base.drain = conn_drain;
    c->tp.fd = fd;
    c->tp.ssl = ssl;
    c->snap = snap ? snap : sk_snapshot_ref(w->snap);
    c->l = l;
    c->fc = fc;
    c->id = ++w->next_conn_id;
    if (peer->ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&peer->ss)->sin6_addr, c->peer_ip,
                  sizeof(c->peer_ip));
        c->peer_port = ntohs(((const struct sockaddr_in6 *)&peer->ss)->sin6_port);
    } else {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)&peer->ss)->sin_addr, c->peer_ip,
                  sizeof(c->peer_ip));
        c->peer_port = ntohs(((const struct sockaddr_in *)&peer->ss)->sin_port);
    }
    sk_buf_init(&c->out, H2_OUT_CAP);
    c->base.w = w;

    const struct sk_hcm *hcm = fc->hcm;
    uint32_t max_streams = clamp_u32(hcm->h2_max_concurrent_streams, H2_ENVOY_DEF_STREAMS,
                                     H2_DEF_MAX_STREAMS, 1, H2_CAP_MAX_STREAMS);
    uint32_t swin = clamp_u32(hcm->h2_initial_stream_window_size, H2_ENVOY_DEF_WINDOW,
                              H2_DEF_STREAM_WINDOW, 65535, H2_CAP_STREAM_WINDOW);
    uint32_t cwin = clamp_u32(hcm->h2_initial_connection_window_size, H2_ENVOY_DEF_WINDOW,
                              H2_DEF_CONN_WINDOW, 65535, H2_CAP_CONN_WINDOW);
    c->swin = swin;
    uint32_t table = hcm->h2_hpack_table_size;
    if (table > H2_CAP_HPACK_TABLE)
        table = H2_CAP_HPACK_TABLE;
    uint32_t max_hdr_list = (hcm->max_request_headers_kb ? hcm->max_request_headers_kb : 60) * 1024;

    c->max_streams = max_streams;
    c->cwin = cwin;
    c->table_cfg = c->table_sent = table;
    c->max_hdr_list = max_hdr_list;
    c->magic_left = SK_H2_PREFACE_LEN;
    c->ngm.cap = H2_SESSION_MEM_CAP;
    int rv = session_new(c, false, &c->ng);
    if (rv == 0) {
        nghttp2_settings_entry iv[8];
        rv = nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, fill_settings(c, iv, true));
        c->settings_inflight = 1;
        if (rv == 0 && cwin > 65535)
            rv = nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)cwin);
    }
    if (rv != 0) {
        sk_warn("conn %llu: cannot start an HTTP/2 session: %s", (unsigned long long)c->id,
                nghttp2_strerror(rv));
        if (c->ng)
            nghttp2_session_del(c->ng);
        sk_buf_free(&c->out);
        sk_snapshot_unref(c->snap);
        if (ssl)
            SSL_free(ssl);
        close(fd);
        free(c);
        return;
    }

    sk_worker_conn_link(w, &c->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, 1);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_http2_total, 1);
    sk_scope_add(c->l->scope, w->id, SK_SC_downstream_cx_active, 1);
    ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
    c->io.data = c;
    ev_io_start(w->loop, &c->io);
    ev_init(&c->idle, idle_cb);
    c->idle.data = c;
    ev_init(&c->goaway, goaway_cb);
    c->goaway.data = c;
    ev_init(&c->hdrt, hdrt_cb);
    c->hdrt.data = c;
    idle_start(c);
    if (prelen)
        feed(c, pre, prelen);
    if (w->draining)
        conn_drain(&c->base);
    if (!c->closed)
        pump(c);
}
