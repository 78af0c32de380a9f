/* L4 toxics: a stage between a connection's owner and its socket (+ TLS)
 * that delays, throttles, slices, truncates, blackholes or resets the byte
 * streams (see toxics.h for the contract).
 *
 * Each direction keeps the bytes it holds in one bounded buffer, cut into
 * segments that remember when they may go on (latency). What may go on at a
 * given moment is the head segment once due, further limited by bandwidth
 * (a virtual clock advanced by bytes/rate), the slicer (one slice per step,
 * delay_us apart) and limit_data. The write direction is pushed to the socket
 * by the stage itself (timer, then its own EV_WRITE watcher when the socket is
 * full); the read direction is pulled by the owner's sk_tp_read, and the
 * owner is woken with ev_feed_event when held bytes become due. One timer per
 * connection, armed for the earliest thing due. */
#include "skiff/toxics.h"

#include <errno.h>
#include <ev.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/transport.h"

#define TOX_BUF_CAP (256 * 1024) /* bytes held per direction */
#define TOX_SEGS 64              /* segments (reads / writes) held per direction */
#define TOX_READ_CHUNK 16384
#define TOX_LINGER_MAX 30.0 /* s a closed connection may keep flushing held bytes */
#define TOX_BW_SLICES 32.0  /* bandwidth: bytes go out in rate/32 steps */

enum { FAIL_NONE = 0, FAIL_CLOSE = 1, FAIL_RESET = 2 };

struct seg {
    uint32_t len;
    double due;
};

struct dir {
    struct sk_buf buf;
    struct seg seg[TOX_SEGS];
    unsigned sh, sn; /* ring head, count */
    double last_due;
    /* the toxics this direction got */
    bool latency;
    uint32_t lat_ms, jit_ms;
    bool bw;
    double bps, bw_next;
    bool slicer;
    uint32_t s_avg, s_var, s_delay_us;
    uint32_t slice_left;
    double slice_next;
    bool limit;
    uint64_t limit_bytes, passed;
    bool blackhole;
    bool slow_close;
    uint32_t close_ms;
    /* end of stream: read = the socket's EOF seen (or limit reached);
     * write = the owner shut down / closed */
    bool eof;
    double eof_due; /* when the EOF may go on (once the bytes are out) */
    bool eof_done;  /* read: EOF handed to the owner; write: FIN sent */
};

struct sk_toxics {
    struct ev_loop *loop;
    ev_io *owner;            /* NULL once the owner closed */
    struct sk_transport *tp; /* the owner's transport; &own while lingering */
    struct sk_transport own;
    ev_timer tm;
    ev_io wio; /* socket writability while held bytes wait for room */
    struct dir rd, wr;
    int fail;         /* FAIL_*: the connection was ended by a toxic */
    int fail_errno;   /* errno the owner sees */
    int pending_fail; /* FAIL_* due at fail_at (timeout, reset_peer) */
    double fail_at;
    bool rd_waiting; /* the owner waits for readable bytes */
    bool wr_waiting; /* the owner waits for room to write */
    bool lingering;
    double linger_end;
    unsigned kinds;
    unsigned rng_stream;
    unsigned long long id;
    char what[24];
    struct sk_toxics *lnext, *lprev; /* this thread's lingering stages */
};

static void arm(struct sk_toxics *x);
static void flush_wr(struct sk_toxics *x);
static bool linger_done(struct sk_toxics *x);

/* ---- counters, names ------------------------------------------------------- */

static _Atomic unsigned long long c_injected[SK_TOXIC__COUNT];

void sk_toxics_stats(struct sk_buf *out, bool prometheus)
{
    if (prometheus)
        sk_buf_appendf(out, "# TYPE skiff_toxics_injected counter\n");
    for (int k = 0; k < SK_TOXIC__COUNT; k++) {
        unsigned long long v = atomic_load(&c_injected[k]);
        if (prometheus)
            sk_buf_appendf(out, "skiff_toxics_injected{kind=\"%s\"} %llu\n", sk_toxic_kind_name(k), v);
        else
            sk_buf_appendf(out, "toxics.%s_injected: %llu\n", sk_toxic_kind_name(k), v);
    }
}

/* ---- random: per thread, SKIFF_FAULT_SEED makes it reproducible -------------- */

static pthread_once_t seed_once = PTHREAD_ONCE_INIT;
static uint64_t seed_base;
static __thread uint64_t rng_state;
static __thread bool rng_ready;

static void seed_init(void)
{
    const char *e = getenv("SKIFF_FAULT_SEED");
    if (e && *e) {
        seed_base = strtoull(e, NULL, 0) ^ 0x746f786963735eull; /* not the fault filter's */
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed_base = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                ((uint64_t)getpid() << 32);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd(unsigned stream)
{
    if (!rng_ready) {
        pthread_once(&seed_once, seed_init);
        uint64_t s = seed_base ^ (0x5851f42d4c957f2dull * (uint64_t)(stream + 1));
        rng_state = splitmix(&s);
        rng_ready = true;
    }
    return splitmix(&rng_state);
}

static double rnd01(unsigned stream)
{
    return (double)(rnd(stream) >> 11) * 0x1.0p-53;
}

/* ---- lingering stages of this thread (freed at thread exit) ------------------- */

static __thread struct sk_toxics *linger_head;
static pthread_key_t linger_key;
static pthread_once_t linger_once = PTHREAD_ONCE_INIT;

static void stage_free(struct sk_toxics *x)
{
    ev_timer_stop(x->loop, &x->tm);
    ev_io_stop(x->loop, &x->wio);
    sk_buf_free(&x->rd.buf);
    sk_buf_free(&x->wr.buf);
    free(x);
}

static void linger_unlink(struct sk_toxics *x)
{
    if (x->lprev)
        x->lprev->lnext = x->lnext;
    else if (linger_head == x)
        linger_head = x->lnext;
    if (x->lnext)
        x->lnext->lprev = x->lprev;
    x->lnext = x->lprev = NULL;
}

/* Thread exit (worker stopped): close what still lingers. */
static void linger_thread_exit(void *arg)
{
    struct sk_toxics **head = arg;
    while (*head) {
        struct sk_toxics *x = *head;
        *head = x->lnext;
        sk_tp_raw_close(&x->own);
        stage_free(x);
    }
}

static void linger_key_init(void)
{
    pthread_key_create(&linger_key, linger_thread_exit);
}

static void linger_link(struct sk_toxics *x)
{
    pthread_once(&linger_once, linger_key_init);
    pthread_setspecific(linger_key, &linger_head);
    x->lprev = NULL;
    x->lnext = linger_head;
    if (linger_head)
        linger_head->lprev = x;
    linger_head = x;
}

/* ---- direction helpers -------------------------------------------------------- */

static size_t dir_room(const struct dir *d)
{
    if (d->sn >= TOX_SEGS)
        return 0;
    return sk_buf_room(&d->buf);
}

static double seg_delay(struct sk_toxics *x, const struct dir *d)
{
    if (!d->latency)
        return 0;
    double ms = d->lat_ms;
    if (d->jit_ms) {
        /* uniform in [-jitter, +jitter] like Toxiproxy */
        uint64_t span = 2ull * d->jit_ms + 1;
        ms += (double)(rnd(x->rng_stream) % span) - (double)d->jit_ms;
        if (ms < 0)
            ms = 0;
    }
    return ms / 1000.0;
}

/* n bytes just appended to d->buf: one more segment, due in order. */
static void seg_push(struct sk_toxics *x, struct dir *d, size_t n, double now)
{
    double due = now + seg_delay(x, d);
    if (due < d->last_due)
        due = d->last_due; /* jitter never reorders bytes */
    d->last_due = due;
    unsigned i = (d->sh + d->sn) % TOX_SEGS;
    d->seg[i].len = (uint32_t)n;
    d->seg[i].due = due;
    d->sn++;
}

static void dir_drop(struct dir *d)
{
    sk_buf_consume(&d->buf, sk_buf_used(&d->buf));
    sk_buf_shrink(&d->buf);
    d->sh = d->sn = 0;
}

/* How many bytes of d may go on at `now` (0 = none: *next says when). */
static size_t allowance(struct sk_toxics *x, struct dir *d, double now, double *next)
{
    *next = INFINITY;
    if (!sk_buf_used(&d->buf) || !d->sn)
        return 0;
    const struct seg *s = &d->seg[d->sh];
    double t = s->due;
    if (d->bw && d->bw_next > t)
        t = d->bw_next;
    if (d->slicer && d->slice_next > t)
        t = d->slice_next;
    if (t > now) {
        *next = t;
        return 0;
    }
    size_t n = s->len;
    if (d->bw) {
        double c = d->bps / TOX_BW_SLICES;
        size_t cn = c < 1 ? 1 : (size_t)c;
        if (n > cn)
            n = cn;
    }
    if (d->slicer) {
        if (!d->slice_left) {
            int64_t sz = (int64_t)d->s_avg;
            if (d->s_var)
                sz += (int64_t)(rnd(x->rng_stream) % (2ull * d->s_var + 1)) - (int64_t)d->s_var;
            d->slice_left = sz < 1 ? 1 : (uint32_t)sz;
        }
        if (n > d->slice_left)
            n = d->slice_left;
    }
    return n;
}

/* n bytes of the head went on at `now`. */
static void consumed(struct dir *d, size_t n, double now)
{
    sk_buf_consume(&d->buf, n);
    struct seg *s = &d->seg[d->sh];
    s->len -= (uint32_t)n;
    if (s->len == 0) {
        d->sh = (d->sh + 1) % TOX_SEGS;
        d->sn--;
    }
    if (!sk_buf_used(&d->buf))
        sk_buf_shrink(&d->buf);
    d->passed += n;
    if (d->bw) {
        if (d->bw_next < now - 0.05)
            d->bw_next = now; /* idle: no credit saved up beyond 50 ms */
        d->bw_next += (double)n / d->bps;
    }
    if (d->slicer) {
        d->slice_left -= (uint32_t)n;
        if (!d->slice_left)
            d->slice_next = now + d->s_delay_us / 1e6;
    }
}

/* ---- ending the connection --------------------------------------------------- */

static const char *fail_name(int f)
{
    return f == FAIL_RESET ? "reset" : "closed";
}

static void finish_linger(struct sk_toxics *x)
{
    linger_unlink(x);
    sk_tp_raw_close(&x->own);
    stage_free(x);
}

static void set_linger0(int fd)
{
    struct linger lg = {1, 0};
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

/* A toxic ends the connection: no more bytes either way; the owner learns it
 * from its next read/write (SK_ERR_IO), which we make happen now. */
static void fail_now(struct sk_toxics *x, int mode, int eno, const char *why)
{
    x->pending_fail = FAIL_NONE;
    if (x->fail)
        return;
    x->fail = mode;
    x->fail_errno = eno;
    dir_drop(&x->rd);
    dir_drop(&x->wr);
    ev_io_stop(x->loop, &x->wio);
    sk_info("toxics: %s conn %llu: connection %s by a toxic (%s)", x->what, x->id,
            fail_name(mode), why);
    if (mode == FAIL_RESET)
        set_linger0(x->tp->fd);
    if (x->lingering) {
        finish_linger(x);
        return;
    }
    /* the socket itself reads EOF from now on (nothing goes on the wire): an
     * owner watching it (an idle pooled connection) wakes up too */
    if (x->tp->fd >= 0)
        shutdown(x->tp->fd, SHUT_RD);
    if (x->owner)
        ev_feed_event(x->loop, x->owner, EV_READ | EV_WRITE);
    arm(x);
}

static ssize_t fail_ret(const struct sk_toxics *x)
{
    errno = x->fail_errno;
    return SK_ERR_IO;
}

/* ---- timer, socket writability --------------------------------------------- */

static void arm(struct sk_toxics *x)
{
    double now = ev_now(x->loop), at = INFINITY, n;
    if (x->pending_fail && x->fail_at < at)
        at = x->fail_at;
    if (!x->fail) {
        struct dir *w = &x->wr, *r = &x->rd;
        if (!ev_is_active(&x->wio)) {
            if (allowance(x, w, now, &n))
                n = now;
            if (n < at)
                at = n;
            if (w->eof && !w->eof_done && !sk_buf_used(&w->buf) && w->eof_due < at)
                at = w->eof_due;
        }
        if (x->rd_waiting && x->owner) {
            if (allowance(x, r, now, &n))
                n = now;
            if (n < at)
                at = n;
            if (r->eof && !r->eof_done && !sk_buf_used(&r->buf) && r->eof_due < at)
                at = r->eof_due;
        }
    }
    if (x->lingering && x->linger_end < at)
        at = x->linger_end;
    ev_timer_stop(x->loop, &x->tm);
    if (at < INFINITY) {
        double in = at - now;
        ev_timer_set(&x->tm, in > 0 ? in : 0., 0.);
        ev_timer_start(x->loop, &x->tm);
    }
}

static bool rd_ready(struct sk_toxics *x, double now)
{
    double n;
    if (allowance(x, &x->rd, now, &n))
        return true;
    return x->rd.eof && !x->rd.eof_done && !sk_buf_used(&x->rd.buf) && now >= x->rd.eof_due;
}

static void tm_cb(struct ev_loop *loop, ev_timer *tm, int revents)
{
    (void)revents;
    struct sk_toxics *x = tm->data;
    double now = ev_now(loop);
    if (x->pending_fail && now >= x->fail_at) {
        bool lingering = x->lingering;
        fail_now(x, x->pending_fail, x->pending_fail == FAIL_RESET ? ECONNRESET : ETIMEDOUT,
                 x->pending_fail == FAIL_RESET ? "reset_peer" : "timeout");
        if (lingering)
            return; /* freed */
    }
    if (x->lingering && now >= x->linger_end) {
        sk_info("toxics: %s conn %llu: closed after %.0f s with bytes still held", x->what,
                x->id, TOX_LINGER_MAX);
        finish_linger(x);
        return;
    }
    flush_wr(x);
    if (x->lingering && linger_done(x))
        return;
    if (x->rd_waiting && x->owner && !x->fail && rd_ready(x, now)) {
        x->rd_waiting = false;
        ev_feed_event(loop, x->owner, EV_READ);
    }
    arm(x);
}

static void wio_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct sk_toxics *x = io->data;
    ev_io_stop(loop, io);
    flush_wr(x);
    if (x->lingering && linger_done(x))
        return;
    arm(x);
}

/* Push what is due of the write direction to the socket; FIN when asked and
 * everything went; wake an owner waiting for room. */
static void flush_wr(struct sk_toxics *x)
{
    if (x->fail || ev_is_active(&x->wio))
        return;
    struct dir *d = &x->wr;
    double now = ev_now(x->loop), next;
    bool freed = false;
    for (;;) {
        size_t n = allowance(x, d, now, &next);
        if (!n)
            break;
        ssize_t r = sk_tp_raw_send(x->tp, sk_buf_rptr(&d->buf), n);
        if (r == SK_ERR_AGAIN) {
            int ev = sk_tp_raw_events_for_write(x->tp);
            ev_io_set(&x->wio, x->tp->fd, ev);
            ev_io_start(x->loop, &x->wio);
            break;
        }
        if (r < 0) {
            /* the socket broke: the owner sees it on its next call */
            int e = errno ? errno : EPIPE;
            dir_drop(d);
            x->fail = FAIL_CLOSE;
            x->fail_errno = e;
            if (x->owner)
                ev_feed_event(x->loop, x->owner, EV_READ | EV_WRITE);
            return;
        }
        consumed(d, (size_t)r, now);
        freed = true;
        if (d->limit && d->passed >= d->limit_bytes) {
            if (x->lingering) { /* closing anyway: linger_done() closes it now */
                dir_drop(d);
                d->eof_done = true;
                return;
            }
            fail_now(x, FAIL_CLOSE, ECONNABORTED, "limit_data");
            return;
        }
        if (d->slicer && d->s_delay_us)
            break; /* next slice later */
    }
    if (!sk_buf_used(&d->buf) && d->eof && !d->eof_done && now >= d->eof_due) {
        sk_tp_raw_shutdown_write(x->tp);
        d->eof_done = true;
    }
    if (freed && x->wr_waiting && x->owner && dir_room(d) > 0) {
        x->wr_waiting = false;
        ev_feed_event(x->loop, x->owner, EV_WRITE);
    }
}

/* Lingering after the owner's close: done once the bytes and the FIN went. */
static bool linger_done(struct sk_toxics *x)
{
    if (!x->fail && (sk_buf_used(&x->wr.buf) || !x->wr.eof_done))
        return false;
    finish_linger(x);
    return true;
}

/* ---- attach -------------------------------------------------------------------- */

unsigned sk_tp_set_toxics(struct sk_transport *t, struct ev_loop *loop, struct ev_io *owner,
                          const struct sk_toxics_cfg *cfg, int side, unsigned rng_stream,
                          const char *what, unsigned long long conn_id)
{
    if (!cfg || !cfg->n || t->tox || t->fd < 0)
        return 0;
    bool pick[SK_TOXICS_MAX] = {false};
    size_t n = cfg->n < SK_TOXICS_MAX ? cfg->n : SK_TOXICS_MAX;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        double p = cfg->v[i].toxicity;
        pick[i] = p >= 1.0 || (p > 0 && rnd01(rng_stream) < p);
        any = any || pick[i];
    }
    if (!any)
        return 0;
    struct sk_toxics *x = calloc(1, sizeof(*x));
    if (!x) {
        sk_warn("toxics: %s conn %llu: out of memory, toxics not applied", what, conn_id);
        return 0;
    }
    x->loop = loop;
    x->owner = owner;
    x->tp = t;
    x->id = conn_id;
    x->rng_stream = rng_stream;
    snprintf(x->what, sizeof(x->what), "%s", what ? what : "?");
    x->own.fd = -1;
    sk_buf_init(&x->rd.buf, TOX_BUF_CAP);
    sk_buf_init(&x->wr.buf, TOX_BUF_CAP);
    ev_init(&x->tm, tm_cb);
    x->tm.data = x;
    ev_io_init(&x->wio, wio_cb, t->fd, EV_WRITE);
    x->wio.data = x;
    double now = ev_now(loop);
    char list[256];
    size_t ll = 0;
    list[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (!pick[i])
            continue;
        const struct sk_toxic *c = &cfg->v[i];
        /* the read direction of a client's connection is the upstream stream */
        bool reads = (c->stream == SK_TOXIC_UPSTREAM) == (side == SK_TOX_SIDE_DOWNSTREAM);
        struct dir *d = reads ? &x->rd : &x->wr;
        switch (c->kind) {
        case SK_TOXIC_LATENCY:
            d->latency = true;
            d->lat_ms = c->latency_ms;
            d->jit_ms = c->jitter_ms;
            break;
        case SK_TOXIC_BANDWIDTH:
            d->bw = true;
            d->bps = (double)c->rate_kbps * 1024.0;
            d->bw_next = now;
            break;
        case SK_TOXIC_SLOW_CLOSE:
            d->slow_close = true;
            d->close_ms = c->delay_ms;
            break;
        case SK_TOXIC_TIMEOUT:
            d->blackhole = true;
            if (c->timeout_ms) {
                double at = now + c->timeout_ms / 1000.0;
                if (!x->pending_fail || at < x->fail_at) {
                    x->pending_fail = FAIL_CLOSE;
                    x->fail_at = at;
                }
            }
            break;
        case SK_TOXIC_RESET_PEER: {
            double at = now + c->timeout_ms / 1000.0;
            if (!x->pending_fail || at <= x->fail_at) {
                x->pending_fail = FAIL_RESET;
                x->fail_at = at;
            }
            break;
        }
        case SK_TOXIC_SLICER:
            d->slicer = true;
            d->s_avg = c->average_size;
            d->s_var = c->size_variation;
            d->s_delay_us = c->delay_us;
            break;
        case SK_TOXIC_LIMIT_DATA:
            d->limit = true;
            d->limit_bytes = c->bytes;
            if (reads && c->bytes == 0) {
                d->eof = true;
                d->eof_due = now;
            }
            break;
        default:
            continue;
        }
        x->kinds |= 1u << c->kind;
        atomic_fetch_add_explicit(&c_injected[c->kind], 1, memory_order_relaxed);
        int w = snprintf(list + ll, sizeof(list) - ll, "%s%s(%s%s%s)", ll ? " " : "",
                         sk_toxic_kind_name(c->kind), c->stream == SK_TOXIC_UPSTREAM ? "upstream" : "downstream",
                         c->name && c->name[0] ? " " : "", c->name ? c->name : "");
        if (w > 0 && (size_t)w < sizeof(list) - ll)
            ll += (size_t)w;
    }
    t->tox = x;
    sk_info("toxics: %s conn %llu: %s", x->what, conn_id, list);
    if (x->pending_fail == FAIL_RESET && x->fail_at <= now) {
        /* reset_peer at once: before a single byte goes either way */
        fail_now(x, FAIL_RESET, ECONNRESET, "reset_peer");
        return x->kinds;
    }
    if (x->wr.limit && x->wr.limit_bytes == 0) {
        fail_now(x, FAIL_CLOSE, ECONNABORTED, "limit_data");
        return x->kinds;
    }
    arm(x);
    return x->kinds;
}

/* ---- the transport operations ------------------------------------------------------ */

ssize_t sk_tox_read(struct sk_transport *t, struct sk_buf *b, size_t max)
{
    struct sk_toxics *x = t->tox;
    if (x->fail)
        return fail_ret(x);
    struct dir *d = &x->rd;
    if (d->eof_done)
        return 0;
    double now = ev_now(x->loop);
    /* pull from the socket into the held bytes */
    size_t room = dir_room(d);
    if (!d->eof && room > 0) {
        size_t before = sk_buf_used(&d->buf);
        size_t want = max ? max : TOX_READ_CHUNK;
        if (want > room)
            want = room;
        ssize_t r = sk_tp_raw_read(t, &d->buf, want);
        if (r > 0) {
            size_t got = (size_t)r;
            if (d->blackhole) {
                sk_buf_consume(&d->buf, got); /* a blackholed stream holds nothing */
                got = 0;
            } else if (d->limit) {
                uint64_t left = d->limit_bytes - d->passed - before;
                if (got >= left) {
                    d->buf.len -= got - (size_t)left; /* bytes past the limit never exist */
                    got = (size_t)left;
                    d->eof = true;
                    d->eof_due = now;
                }
            }
            if (got)
                seg_push(x, d, got, now);
        } else if (r == 0) {
            d->eof = true;
            /* the FIN travels like the bytes (latency), then slow_close */
            double due = now + (d->latency ? d->lat_ms / 1000.0 : 0);
            if (due < d->last_due)
                due = d->last_due;
            d->eof_due = due + (d->slow_close ? d->close_ms / 1000.0 : 0);
        } else if (r == SK_ERR_IO) {
            return r; /* errno from the socket */
        }
    }
    /* hand over what is due */
    size_t out = 0;
    double next;
    for (;;) {
        size_t n = allowance(x, d, now, &next);
        if (!n)
            break;
        size_t broom = sk_buf_room(b);
        if (max && max - out < broom)
            broom = max - out;
        if (n > broom)
            n = broom;
        if (!n)
            break;
        size_t avail;
        char *w = sk_buf_wptr(b, n, &avail);
        if (!w)
            break;
        if (n > avail)
            n = avail;
        memcpy(w, sk_buf_rptr(&d->buf), n);
        sk_buf_commit(b, n);
        consumed(d, n, now);
        out += n;
        if (d->slicer)
            break; /* one slice per read: the receiver sees it on its own */
    }
    if (out) {
        x->rd_waiting = false;
        arm(x);
        return (ssize_t)out;
    }
    if (d->eof && !sk_buf_used(&d->buf) && now >= d->eof_due) {
        d->eof_done = true;
        arm(x);
        return 0;
    }
    if (sk_buf_room(b) == 0)
        return SK_ERR_TOO_LARGE;
    x->rd_waiting = true;
    arm(x);
    return SK_ERR_AGAIN;
}

ssize_t sk_tox_write(struct sk_transport *t, struct sk_buf *b)
{
    struct sk_toxics *x = t->tox;
    if (x->fail)
        return fail_ret(x);
    size_t n = sk_buf_used(b);
    if (n == 0)
        return 0;
    struct dir *d = &x->wr;
    if (d->blackhole || d->eof) {
        sk_buf_consume(b, n); /* dropped (timeout toxic) */
        return (ssize_t)n;
    }
    size_t keep = n;
    bool drop_rest = false; /* bytes past limit_data: accepted, never sent */
    if (d->limit) {
        uint64_t left = d->limit_bytes - d->passed - sk_buf_used(&d->buf);
        if (keep > left) {
            keep = (size_t)left;
            drop_rest = true;
        }
    }
    if (keep) {
        size_t room = dir_room(d);
        if (keep > room) {
            keep = room;
            drop_rest = false;
        }
        if (keep == 0 || sk_buf_append(&d->buf, sk_buf_rptr(b), keep) < 0) {
            x->wr_waiting = true;
            arm(x);
            return SK_ERR_AGAIN;
        }
        seg_push(x, d, keep, ev_now(x->loop));
    }
    size_t took = drop_rest ? n : keep;
    sk_buf_consume(b, took);
    flush_wr(x);
    if (!x->fail)
        arm(x);
    return (ssize_t)took;
}

void sk_tox_shutdown_write(struct sk_transport *t)
{
    struct sk_toxics *x = t->tox;
    struct dir *d = &x->wr;
    if (x->fail || d->eof)
        return;
    d->eof = true;
    d->eof_due = ev_now(x->loop) + (d->slow_close ? d->close_ms / 1000.0 : 0);
    flush_wr(x);
    if (!x->fail)
        arm(x);
}

void sk_tox_close(struct sk_transport *t)
{
    struct sk_toxics *x = t->tox;
    t->tox = NULL;
    x->owner = NULL;
    x->rd_waiting = x->wr_waiting = false;
    dir_drop(&x->rd);
    struct dir *d = &x->wr;
    bool hold = !x->fail && (sk_buf_used(&d->buf) || (d->slow_close && !d->eof_done));
    if (!hold) {
        if (x->fail == FAIL_RESET)
            set_linger0(t->fd);
        sk_tp_raw_close(t);
        stage_free(x);
        return;
    }
    /* keep the socket until the held bytes and the (slow) FIN went out */
    x->own = *t;
    x->own.tox = NULL;
    x->tp = &x->own;
    t->fd = -1;
    t->ssl = NULL;
    double now = ev_now(x->loop);
    if (!d->eof) {
        d->eof = true;
        d->eof_due = now + (d->slow_close ? d->close_ms / 1000.0 : 0);
    }
    x->lingering = true;
    x->linger_end = now + TOX_LINGER_MAX;
    linger_link(x);
    flush_wr(x);
    if (x->fail) { /* the socket broke while flushing */
        finish_linger(x);
        return;
    }
    if (linger_done(x))
        return;
    arm(x);
}

bool sk_tox_has_buffered(const struct sk_transport *t)
{
    struct sk_toxics *x = t->tox;
    if (x->fail)
        return true;
    struct dir *d = &x->rd;
    if (d->eof_done)
        return false;
    double now = ev_now(x->loop);
    if (rd_ready(x, now))
        return true;
    return !d->eof && dir_room(d) > 0 && sk_tp_raw_has_buffered(t);
}

int sk_tox_events_for_read(const struct sk_transport *t)
{
    struct sk_toxics *x = t->tox;
    if (x->fail)
        return EV_READ; /* the socket reads EOF (shut down): wakes the owner */
    x->rd_waiting = true;
    arm(x);
    if (x->rd.eof || dir_room(&x->rd) == 0)
        return 0; /* nothing to wait for on the socket: the timer wakes the owner */
    return sk_tp_raw_events_for_read(t);
}

int sk_tox_events_for_write(const struct sk_transport *t)
{
    struct sk_toxics *x = t->tox;
    if (x->fail)
        return EV_WRITE;
    x->wr_waiting = true;
    if (dir_room(&x->wr) == 0)
        return 0; /* the stage wakes the owner when it has room */
    return EV_WRITE;
}
