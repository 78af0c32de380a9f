/* Access log rendering and per-worker non-blocking sinks. */
#include "skiff/accesslog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "skiff/log.h"
#include "skiff/stream.h"
#include "skiff/tls.h"
#include "skiff/worker.h"

#define AL_BUF_MAX (1 << 20) /* per sink per worker; beyond it lines are dropped */
#define AL_FLUSH_AT (64 * 1024)
#define AL_LINE_MAX (64 * 1024) /* a rendered line never exceeds this */
/* Lines are written in batches: when 64 KiB are pending, else at most this
 * long after the first pending line (Envoy flushes file logs every 1 s).
 * One write() per batch instead of one per loop iteration. */
#define AL_FLUSH_INTERVAL_S 0.1

struct al_writer {
    struct al_writer *next;
    int sink;
    char *path;
    int fd;
    bool own_fd;
    bool failed;
    struct sk_buf buf;
    ev_timer timer; /* flushes pending lines AL_FLUSH_INTERVAL_S after the first */
    struct sk_worker *w;
};

/* ---- rendering ---------------------------------------------------------------------
 * The compiled format (sk_al_compile) is run top to bottom, writing straight
 * into the output buffer through a cursor: room for the whole line is made
 * once up front (constant text + a typical size per field), each write checks
 * the room left and only a long value grows the buffer. */

struct alw {
    struct sk_buf *b;
    char *p;   /* write cursor */
    char *end; /* end of the buffer's memory */
};

/* Room for n more bytes (the buffer may move: positions are kept relative to
 * sk_buf_rptr, which compaction and growth preserve). */
static bool alw_grow(struct alw *w, size_t n)
{
    w->b->len = (size_t)(w->p - w->b->data);
    size_t avail = 0;
    char *q = sk_buf_wptr(w->b, n, &avail);
    if (!q || avail < n)
        return false;
    w->p = q;
    w->end = q + avail;
    return true;
}

static inline bool need(struct alw *w, size_t n)
{
    return (size_t)(w->end - w->p) >= n || alw_grow(w, n);
}

static inline size_t alw_pos(const struct alw *w)
{
    return (size_t)(w->p - sk_buf_rptr(w->b));
}

static const char digits2[201] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                                 "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                                 "8081828384858687888990919293949596979899";

/* decimal of v at o (room for 20 bytes); returns its length */
static inline size_t fmt_u64(char *o, uint64_t v)
{
    size_t n = 1;
    for (uint64_t t = v; t >= 10; t /= 10)
        n++;
    char *q = o + n;
    while (v >= 100) {
        unsigned d = (unsigned)(v % 100) * 2;
        v /= 100;
        *--q = digits2[d + 1];
        *--q = digits2[d];
    }
    if (v >= 10) {
        *--q = digits2[v * 2 + 1];
        *--q = digits2[v * 2];
    } else {
        *--q = (char)('0' + v);
    }
    return n;
}

static const char *hdr_get(const struct sk_hdrs *h, const char *name, size_t nlen, size_t *len)
{
    struct sk_hdr *x = sk_hdrs_get(h, name, nlen);
    if (!x)
        return NULL;
    *len = x->vlen;
    return x->value;
}

static const char *src_val(const struct sk_al_src *s, const struct sk_stream *st, size_t *len)
{
    switch (s->kind) {
    case SK_ALS_METHOD:
        *len = st->method_len;
        return st->method;
    case SK_ALS_PATH:
        *len = st->path_len;
        return st->path;
    case SK_ALS_AUTHORITY:
        *len = st->authority_len;
        return st->authority;
    case SK_ALS_SCHEME:
        if (!st->scheme)
            return NULL;
        *len = strlen(st->scheme);
        return st->scheme;
    case SK_ALS_HOST:
        if (st->authority) {
            *len = st->authority_len;
            return st->authority;
        }
        return hdr_get(&st->req, s->name, s->nlen, len);
    case SK_ALS_REQ_HDR:
        return hdr_get(&st->req, s->name, s->nlen, len);
    case SK_ALS_RESP_HDR:
        return hdr_get(&st->resp_hdrs, s->name, s->nlen, len);
    }
    return NULL;
}

/* "2026-11-23T10:00:00.123Z" (24 bytes): the part up to the seconds changes
 * once a second, kept per thread */
static size_t fmt_start(char *o, double t)
{
    static __thread time_t last_sec = -1;
    static __thread char last_date[32];
    static __thread size_t last_len;
    time_t sec = (time_t)t;
    int ms = (int)((t - (double)sec) * 1000);
    if (sec != last_sec) {
        struct tm tm;
        gmtime_r(&sec, &tm);
        last_len = strftime(last_date, sizeof(last_date), "%Y-%m-%dT%H:%M:%S", &tm);
        last_sec = sec;
    }
    memcpy(o, last_date, last_len);
    size_t n = last_len;
    o[n++] = '.';
    o[n++] = (char)('0' + ms / 100 % 10);
    o[n++] = (char)('0' + ms / 10 % 10);
    o[n++] = (char)('0' + ms % 10);
    o[n++] = 'Z';
    return n;
}

/* One operator. Returns 1 when it wrote a value, 0 when it was empty ("-"),
 * -1 when the line cannot grow. */
static int field(struct alw *w, const struct sk_al_insn *in, const struct sk_stream *st, double now)
{
    const char *v = NULL;
    size_t vl = 0;
    uint64_t num;
    char tmp[128];
    switch (in->op) {
    case SK_AL_START_TIME: {
        size_t n = fmt_start(w->p, st->t_start); /* room: in the tail before */
        if (in->max_len && n > in->max_len)
            n = in->max_len;
        w->p += n;
        return 1;
    }
    case SK_AL_REQ:
    case SK_AL_RESP:
    case SK_AL_TRACE_ID:
    case SK_AL_GRPC_STATUS:
        if (in->src[0].set)
            v = src_val(&in->src[0], st, &vl);
        if (!v && in->src[1].set)
            v = src_val(&in->src[1], st, &vl);
        if (in->op == SK_AL_TRACE_ID) {
            if (v && vl >= 35) { /* 00-<32 hex trace id>-... */
                v += 3;
                vl = 32;
            } else {
                v = NULL;
            }
        }
        break;
    case SK_AL_TRAILER:
        break; /* response trailers are not kept */
    case SK_AL_PROTOCOL:
        if (!st->method)
            break; /* a TCP connection: "-" */
        if (st->downstream_h2) {
            v = "HTTP/2";
            vl = 6;
        } else {
            v = "HTTP/1.1";
            vl = 8;
        }
        break;
    case SK_AL_RESPONSE_CODE:
        num = (uint64_t)(st->status > 0 ? st->status : 0);
        goto number;
    case SK_AL_RESPONSE_FLAGS: {
        const char *f = st->cause ? sk_term_flag(st->cause) : "-";
        if (st->cause == SK_TERM_DIRECT_RESPONSE)
            f = "-";
        const char *pre = st->fault_delayed ? "DI" : st->toxic ? "TX" : NULL;
        if (pre && (!st->cause || st->cause == SK_TERM_DIRECT_RESPONSE)) {
            f = pre;
        } else if (pre) {
            size_t fl = strlen(f);
            if (fl > sizeof(tmp) - 4)
                fl = sizeof(tmp) - 4;
            memcpy(tmp, pre, 2);
            tmp[2] = ',';
            memcpy(tmp + 3, f, fl);
            v = tmp;
            vl = fl + 3;
            break;
        }
        v = f;
        vl = strlen(f);
        break;
    }
    case SK_AL_RESPONSE_CODE_DETAILS:
        v = st->cause ? sk_term_reason(st->cause) : "via_upstream";
        vl = strlen(v);
        break;
    case SK_AL_BYTES_RECEIVED:
        num = st->bytes_rx;
        goto number;
    case SK_AL_BYTES_SENT:
        num = st->bytes_tx;
        goto number;
    case SK_AL_DURATION:
        num = (uint64_t)((now - st->t_start) * 1000.0 + 0.5);
        goto number;
    case SK_AL_RESPONSE_DURATION:
        if (st->t_first_byte > 0) {
            num = (uint64_t)((st->t_first_byte - st->t_start) * 1000.0 + 0.5);
            goto number;
        }
        break;
    case SK_AL_UPSTREAM_HOST:
        if (st->upstream_host[0]) {
            v = st->upstream_host;
            vl = strnlen(v, sizeof(st->upstream_host));
        }
        break;
    case SK_AL_UPSTREAM_CLUSTER:
        if (st->cluster) {
            v = st->cluster->name;
            vl = strlen(v);
        }
        break;
    case SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT:
        num = st->attempt;
        goto number;
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS: {
        size_t il = strnlen(st->peer_ip, sizeof(st->peer_ip));
        bool v6 = memchr(st->peer_ip, ':', il) != NULL;
        size_t n = 0;
        if (v6)
            tmp[n++] = '[';
        memcpy(tmp + n, st->peer_ip, il);
        n += il;
        if (v6)
            tmp[n++] = ']';
        tmp[n++] = ':';
        n += fmt_u64(tmp + n, st->peer_port);
        v = tmp;
        vl = n;
        break;
    }
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
        v = st->peer_ip;
        vl = strnlen(v, sizeof(st->peer_ip));
        break;
    case SK_AL_DOWNSTREAM_LOCAL_ADDRESS:
        if (st->listener && st->listener->addr_str) {
            v = st->listener->addr_str;
            vl = strlen(v);
        }
        break;
    case SK_AL_DOWNSTREAM_PEER_URI_SAN:
        if (st->tls) {
            vl = sk_tls_peer_uri_san(st->tls, tmp, sizeof(tmp));
            v = vl ? tmp : NULL;
        }
        break;
    case SK_AL_DOWNSTREAM_TLS_VERSION:
        if (st->tls) {
            v = SSL_get_version(st->tls);
            vl = strlen(v);
        }
        break;
    case SK_AL_REQUESTED_SERVER_NAME:
        if (st->tls) {
            v = SSL_get_servername(st->tls, TLSEXT_NAMETYPE_host_name);
            vl = v ? strlen(v) : 0;
        }
        break;
    case SK_AL_ROUTE_NAME:
        if (st->route && st->route->name) {
            v = st->route->name;
            vl = strlen(v);
        }
        break;
    case SK_AL_CONNECTION_ID:
        num = st->conn_id;
        goto number;
    case SK_AL_STREAM_ID:
        num = st->stream_id;
        goto number;
    case SK_AL_HOSTNAME:
        v = in->text; /* looked up at config time */
        vl = in->len;
        break;
    }
    if (!v) {
        if (!need(w, 4 + in->tail))
            return -1;
        if (in->nullq) { /* the value is null: take its opening quote back */
            memcpy(w->p - 1, "null", 4);
            w->p += 3;
        } else {
            *w->p++ = '-';
        }
        return 0;
    }
    if (in->max_len && vl > in->max_len)
        vl = in->max_len;
    if (!need(w, (in->esc ? 6 * vl : vl) + 1 + in->tail))
        return -1;
    if (in->esc && !sk_al_json_clean(v, vl)) {
        w->p += sk_al_json_escape(w->p, v, vl);
    } else {
        memcpy(w->p, v, vl);
        w->p += vl;
    }
    if (in->nullq)
        *w->p++ = '"';
    return 1;
number: { /* room: in the tail before (alformat.c bound() lists these operators) */
    size_t n = fmt_u64(w->p, num);
    if (in->max_len && n > in->max_len)
        n = in->max_len;
    w->p += n;
    if (in->nullq)
        *w->p++ = '"';
    return 1;
}
}

/* SEND: the value written raw since `from` is replaced by its escaped form */
static bool escape_since(struct alw *w, size_t from, size_t tail)
{
    size_t n = alw_pos(w) - from;
    if (n == 0)
        return true;
    char small[512];
    char *raw = n <= sizeof(small) ? small : malloc(n);
    if (!raw)
        return false;
    memcpy(raw, sk_buf_rptr(w->b) + from, n);
    w->p = sk_buf_rptr(w->b) + from;
    bool ok = need(w, 6 * n + tail);
    if (ok)
        w->p += sk_al_json_escape(w->p, raw, n);
    if (raw != small)
        free(raw);
    return ok;
}

void sk_access_log_render(const struct sk_al_format *f, const struct sk_stream *st, double now,
                          struct sk_buf *out)
{
    const struct sk_al_prog *pg = f->prog;
    size_t line = sk_buf_used(out);
    struct alw w = {.b = out};
    if (!pg)
        return; /* not compiled (translate always compiles): no line */
    size_t avail = 0;
    w.p = sk_buf_wptr(out, pg->reserve, &avail);
    if (!w.p || avail < pg->reserve)
        return;
    w.end = w.p + avail;
    size_t mark = 0, smark = 0;
    int nonempty = 0;
    bool any = false; /* omit_empty: a key was written (the next one needs a comma) */
    const struct sk_al_insn *in = pg->v, *e = pg->n ? pg->v + pg->n : pg->v; /* "": none */
    for (; in < e; in++) {
        if (in->plen) {
            /* whole 16-byte blocks: the text is padded, the room has SK_AL_SLACK */
            const char *src = in->pre;
            char *d = w.p, *e2 = w.p + in->plen;
            do {
                memcpy(d, src, 16);
                d += 16;
                src += 16;
            } while (d < e2);
            w.p = e2;
        }
        switch (in->kind) {
        case SK_ALI_LIT:
            break;
        case SK_ALI_FIELD: {
            int r = field(&w, in, st, now);
            if (r < 0)
                goto fail;
            nonempty += r;
            break;
        }
        case SK_ALI_KEY:
        case SK_ALI_VBEGIN:
            if (in->kind == SK_ALI_VBEGIN) {
                nonempty = 0;
                if (!in->omit) {
                    mark = alw_pos(&w) - 1; /* the opening quote */
                    break;
                }
                mark = alw_pos(&w);
            }
            if (any)
                *w.p++ = ',';
            memcpy(w.p, in->text, in->len);
            w.p += in->len;
            if (in->kind == SK_ALI_KEY)
                any = true;
            break;
        case SK_ALI_VEND:
            if (nonempty == 0) {
                w.p = sk_buf_rptr(out) + mark;
                if (!in->omit) {
                    memcpy(w.p, "null", 4);
                    w.p += 4;
                }
            } else {
                *w.p++ = '"';
                if (in->omit)
                    any = true;
            }
            break;
        case SK_ALI_SBEGIN:
            smark = alw_pos(&w);
            break;
        case SK_ALI_SEND:
            if (!escape_since(&w, smark, in->tail))
                goto fail;
            break;
        }
    }
    if (pg->nl_check && (alw_pos(&w) == line || w.p[-1] != '\n'))
        *w.p++ = '\n'; /* room: the last tail has it */
    out->len = (size_t)(w.p - out->data);
    return;
fail:
    out->len = out->off + line; /* the line goes whole or not at all */
}

/* ---- filters ------------------------------------------------------------------------ */

static const char *hdr_val(const struct sk_hdrs *h, const char *name, size_t *len)
{
    if (!h || !name)
        return NULL;
    return hdr_get(h, name, strlen(name), len);
}

/* REQ(): pseudo-headers map to the stream's request line */
static const char *req_val(const struct sk_stream *st, const char *name, size_t *len)
{
    if (!name)
        return NULL;
    struct sk_al_src s;
    s.kind = name[0] != ':'                     ? (strcmp(name, "host") == 0 ? SK_ALS_HOST : SK_ALS_REQ_HDR)
             : strcmp(name, ":method") == 0    ? SK_ALS_METHOD
             : strcmp(name, ":path") == 0      ? SK_ALS_PATH
             : strcmp(name, ":authority") == 0 ? SK_ALS_AUTHORITY
             : strcmp(name, ":scheme") == 0    ? SK_ALS_SCHEME
                                               : SK_ALS_NONE;
    s.name = name;
    s.nlen = (uint32_t)strlen(name);
    return src_val(&s, st, len);
}

static bool cmp(int op, uint64_t a, uint64_t b)
{
    switch (op) {
    case 1: return a >= b; /* GE */
    case 2: return a <= b; /* LE */
    case 3: return a != b; /* NE */
    default: return a == b;
    }
}

static bool filter_pass(const struct sk_al_filter *f, const struct sk_stream *st, double now)
{
    switch (f->kind) {
    case SK_ALF_STATUS:
        return cmp(f->op, (uint64_t)(st->status > 0 ? st->status : 0), f->value);
    case SK_ALF_DURATION:
        return cmp(f->op, (uint64_t)((now - st->t_start) * 1000.0), f->value);
    case SK_ALF_NOT_HEALTH_CHECK: {
        size_t l = 0;
        const char *ua = hdr_val(&st->req, "user-agent", &l);
        return !(ua && ((l >= 9 && strncmp(ua, "Envoy/HC", 8) == 0) ||
                        (l >= 18 && strncmp(ua, "skiff-health-check", 18) == 0)));
    }
    case SK_ALF_RUNTIME:
        return (sk_worker_rand(st->w) % 1000000u) < f->sample_per_million;
    case SK_ALF_AND:
        for (size_t i = 0; i < f->nsub; i++)
            if (!filter_pass(&f->sub[i], st, now))
                return false;
        return true;
    case SK_ALF_OR:
        for (size_t i = 0; i < f->nsub; i++)
            if (filter_pass(&f->sub[i], st, now))
                return true;
        return false;
    case SK_ALF_HEADER: {
        const struct sk_header_match *hm = &f->hm;
        size_t l = 0;
        const char *v = req_val(st, hm->name, &l);
        bool ok;
        if (hm->kind == SK_STR_PRESENT) {
            ok = (v != NULL) == hm->present;
        } else if (!v) {
            ok = false;
        } else {
            size_t pl = hm->value_len;
            const char *p = hm->value;
            switch (hm->kind) {
            case SK_STR_EXACT:
                ok = l == pl && (hm->ignore_case ? strncasecmp(v, p, l) == 0 : memcmp(v, p, l) == 0);
                break;
            case SK_STR_PREFIX:
                ok = l >= pl && (hm->ignore_case ? strncasecmp(v, p, pl) == 0 : memcmp(v, p, pl) == 0);
                break;
            case SK_STR_SUFFIX:
                ok = l >= pl && (hm->ignore_case ? strncasecmp(v + l - pl, p, pl) == 0
                                                 : memcmp(v + l - pl, p, pl) == 0);
                break;
            default: /* contains */
                ok = pl == 0 || (l >= pl && memmem(v, l, p, pl) != NULL);
            }
        }
        return hm->invert ? !ok : ok;
    }
    case SK_ALF_FLAGS: {
        const char *fl = st->cause ? sk_term_flag(st->cause) : NULL;
        if (f->nflags == 0)
            return fl && strcmp(fl, "-") != 0; /* any flag set */
        for (size_t i = 0; i < f->nflags; i++) {
            if (fl && strcmp(f->flags[i], fl) == 0)
                return true;
            if (st->fault_delayed && strcmp(f->flags[i], "DI") == 0)
                return true;
        }
        return false;
    }
    }
    return true;
}

/* ---- sinks --------------------------------------------------------------------------- */

/* keep: a busy sink (flushed because 64 KiB piled up) keeps its buffer for
 * the lines that follow; a quiet one (the timer) gives it back. */
static void writer_flush(struct al_writer *wr, bool keep)
{
    while (sk_buf_used(&wr->buf) && !wr->failed) {
        ssize_t r = write(wr->fd, sk_buf_rptr(&wr->buf), sk_buf_used(&wr->buf));
        if (r > 0) {
            sk_buf_consume(&wr->buf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        break; /* EAGAIN (slow pipe) or an error: keep what fits, drop beyond the cap */
    }
    if (!sk_buf_used(&wr->buf) && !keep)
        sk_buf_shrink(&wr->buf);
}

static void flush_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    writer_flush(t->data, false);
}

static struct al_writer *writer_get(struct sk_worker *w, const struct sk_access_log *l)
{
    for (struct al_writer *wr = w->al_writers; wr; wr = wr->next)
        if (wr->sink == l->sink &&
            (l->sink != SK_AL_SINK_FILE || strcmp(wr->path, l->path) == 0))
            return wr;
    struct al_writer *wr = calloc(1, sizeof(*wr));
    if (!wr)
        return NULL;
    wr->sink = l->sink;
    wr->w = w;
    ev_init(&wr->timer, flush_timer_cb);
    wr->timer.data = wr;
    sk_buf_init(&wr->buf, AL_BUF_MAX);
    if (l->sink == SK_AL_SINK_FILE) {
        wr->path = strdup(l->path);
        wr->fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0644);
        wr->own_fd = true;
        if (wr->fd < 0) {
            sk_error("access log %s: cannot open: %s (lines are dropped)", l->path,
                     strerror(errno));
            wr->failed = true;
        }
    } else {
        wr->fd = l->sink == SK_AL_SINK_STDOUT ? STDOUT_FILENO : STDERR_FILENO;
    }
    wr->next = w->al_writers;
    w->al_writers = wr;
    return wr;
}

void sk_access_log_stream(struct sk_stream *st)
{
    const struct sk_hcm *hcm = st->hcm;
    if (hcm && hcm->naccess_logs)
        sk_access_log_write(st, hcm->access_logs, hcm->naccess_logs);
}

void sk_access_log_write(struct sk_stream *st, const struct sk_access_log *logs, size_t nlogs)
{
    double now = ev_now(st->w->loop);
    for (size_t i = 0; i < nlogs; i++) {
        const struct sk_access_log *l = &logs[i];
        if (l->filter && !filter_pass(l->filter, st, now))
            continue;
        struct al_writer *wr = writer_get(st->w, l);
        if (!wr || wr->failed) {
            sk_stat_add(&st->w->stats, SK_ST_access_log_dropped, 1);
            continue;
        }
        size_t before = sk_buf_used(&wr->buf);
        if (AL_BUF_MAX - before >= 2 * AL_LINE_MAX) {
            /* room for a normal line: render in place (no copy); a line that
             * did not fit whole (it always ends in '\n') is taken back */
            sk_access_log_render(&l->fmt, st, now, &wr->buf);
            size_t after = sk_buf_used(&wr->buf);
            if (after > before && after - before <= 2 * AL_LINE_MAX &&
                sk_buf_rptr(&wr->buf)[after - 1] == '\n') {
                sk_stat_add(&st->w->stats, SK_ST_access_log_written, 1);
            } else {
                wr->buf.len = wr->buf.off + before; /* compaction keeps used bytes first */
                sk_stat_add(&st->w->stats, SK_ST_access_log_dropped, 1);
            }
        } else {
            /* nearly full (slow sink): the line goes in whole or not at all */
            struct sk_buf line;
            sk_buf_init(&line, AL_LINE_MAX);
            sk_access_log_render(&l->fmt, st, now, &line);
            if (sk_buf_used(&line) == 0 || /* longer than AL_LINE_MAX */
                sk_buf_append(&wr->buf, sk_buf_rptr(&line), sk_buf_used(&line)) < 0)
                sk_stat_add(&st->w->stats, SK_ST_access_log_dropped, 1);
            else
                sk_stat_add(&st->w->stats, SK_ST_access_log_written, 1);
            sk_buf_free(&line);
        }
        if (sk_buf_used(&wr->buf) > AL_FLUSH_AT) {
            ev_timer_stop(st->w->loop, &wr->timer);
            writer_flush(wr, true);
        } else if (!ev_is_active(&wr->timer)) {
            ev_timer_set(&wr->timer, AL_FLUSH_INTERVAL_S, 0.);
            ev_timer_start(st->w->loop, &wr->timer);
        }
    }
}

void sk_access_log_worker_close(struct sk_worker *w)
{
    struct al_writer *wr = w->al_writers;
    w->al_writers = NULL;
    while (wr) {
        struct al_writer *n = wr->next;
        ev_timer_stop(w->loop, &wr->timer);
        writer_flush(wr, false);
        if (wr->own_fd && wr->fd >= 0)
            close(wr->fd);
        sk_buf_free(&wr->buf);
        free(wr->path);
        free(wr);
        wr = n;
    }
}
