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

/* ---- rendering -------------------------------------------------------------------- */

static void put(struct sk_buf *o, const char *p, size_t n, size_t max)
{
    if (max && n > max)
        n = max;
    sk_buf_append(o, p, n);
}

static void put_u64(struct sk_buf *o, unsigned long long v, size_t max)
{
    char t[24];
    size_t n = sk_fmt_u64(t, v);
    put(o, t, n, max);
}

static const char *hdr_val(const struct sk_hdrs *h, const char *name, size_t *len)
{
    if (!h || !name)
        return NULL;
    struct sk_hdr *x = sk_hdrs_get(h, name, strlen(name));
    if (!x)
        return NULL;
    *len = x->vlen;
    return x->value;
}

/* REQ(): pseudo-headers map to the stream's request line */
static const char *req_val(const struct sk_stream *st, const char *name, size_t *len)
{
    if (!name)
        return NULL;
    if (name[0] == ':') {
        if (strcmp(name, ":method") == 0 && st->method) {
            *len = st->method_len;
            return st->method;
        }
        if (strcmp(name, ":path") == 0 && st->path) {
            *len = st->path_len;
            return st->path;
        }
        if (strcmp(name, ":authority") == 0 && st->authority) {
            *len = st->authority_len;
            return st->authority;
        }
        if (strcmp(name, ":scheme") == 0 && st->scheme) {
            *len = strlen(st->scheme);
            return st->scheme;
        }
        return NULL;
    }
    if (strcmp(name, "host") == 0 && st->authority) {
        *len = st->authority_len;
        return st->authority;
    }
    return hdr_val(&st->req, name, len);
}

static void piece(const struct sk_al_piece *p, const struct sk_stream *st, double now,
                  struct sk_buf *o, bool *empty)
{
    const char *v = NULL;
    size_t vl = 0;
    char tmp[128];
    *empty = false;
    switch (p->op) {
    case SK_AL_LITERAL:
        put(o, p->text, p->text_len, 0);
        return;
    case SK_AL_START_TIME: {
        /* the date part changes once a second: keep it per thread */
        static __thread time_t last_sec = -1;
        static __thread char last_date[32];
        static __thread size_t last_len;
        time_t sec = (time_t)st->t_start;
        int ms = (int)((st->t_start - (double)sec) * 1000);
        if (sec != last_sec) {
            struct tm tm;
            gmtime_r(&sec, &tm);
            last_len = strftime(last_date, sizeof(last_date), "%Y-%m-%dT%H:%M:%S", &tm);
            last_sec = sec;
        }
        memcpy(tmp, last_date, last_len);
        size_t n = last_len;
        tmp[n++] = '.';
        tmp[n++] = (char)('0' + ms / 100 % 10);
        tmp[n++] = (char)('0' + ms / 10 % 10);
        tmp[n++] = (char)('0' + ms % 10);
        tmp[n++] = 'Z';
        put(o, tmp, n, p->max_len);
        return;
    }
    case SK_AL_REQ:
        v = req_val(st, p->text, &vl);
        if (!v && p->alt)
            v = req_val(st, p->alt, &vl);
        break;
    case SK_AL_RESP:
        v = hdr_val(&st->resp_hdrs, p->text, &vl);
        if (!v && p->alt)
            v = hdr_val(&st->resp_hdrs, p->alt, &vl);
        break;
    case SK_AL_TRAILER:
        break; /* response trailers are not kept */
    case SK_AL_PROTOCOL:
        if (!st->method)
            break; /* a TCP connection: "-" */
        v = st->downstream_h2 ? "HTTP/2" : "HTTP/1.1";
        vl = strlen(v);
        break;
    case SK_AL_RESPONSE_CODE:
        put_u64(o, (unsigned long long)(st->status > 0 ? st->status : 0), p->max_len);
        return;
    case SK_AL_RESPONSE_FLAGS: {
        const char *f = st->cause ? sk_term_flag(st->cause) : "-";
        if (st->cause == SK_TERM_DIRECT_RESPONSE)
            f = "-";
        const char *pre = st->fault_delayed ? "DI" : st->toxic ? "TX" : NULL;
        if (pre && (!st->cause || st->cause == SK_TERM_DIRECT_RESPONSE))
            f = pre;
        else if (pre) {
            size_t n = (size_t)snprintf(tmp, sizeof(tmp), "%s,%s", pre, f);
            put(o, tmp, n, p->max_len);
            return;
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
        put_u64(o, (unsigned long long)st->bytes_rx, p->max_len);
        return;
    case SK_AL_BYTES_SENT:
        put_u64(o, (unsigned long long)st->bytes_tx, p->max_len);
        return;
    case SK_AL_DURATION:
        put_u64(o, (unsigned long long)((now - st->t_start) * 1000.0 + 0.5), p->max_len);
        return;
    case SK_AL_RESPONSE_DURATION:
        if (st->t_first_byte > 0) {
            put_u64(o, (unsigned long long)((st->t_first_byte - st->t_start) * 1000.0 + 0.5),
                    p->max_len);
            return;
        }
        break;
    case SK_AL_UPSTREAM_HOST:
        if (st->upstream_host[0]) {
            v = st->upstream_host;
            vl = strlen(v);
        }
        break;
    case SK_AL_UPSTREAM_CLUSTER:
        if (st->cluster) {
            v = st->cluster->name;
            vl = strlen(v);
        }
        break;
    case SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT:
        put_u64(o, st->attempt, p->max_len);
        return;
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS:
        vl = (size_t)snprintf(tmp, sizeof(tmp), strchr(st->peer_ip, ':') ? "[%s]:%u" : "%s:%u",
                              st->peer_ip, st->peer_port);
        v = tmp;
        break;
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
        v = st->peer_ip;
        vl = strlen(v);
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
        put_u64(o, (unsigned long long)st->conn_id, p->max_len);
        return;
    case SK_AL_STREAM_ID:
        put_u64(o, st->stream_id, p->max_len);
        return;
    case SK_AL_GRPC_STATUS:
        v = hdr_val(&st->resp_hdrs, "grpc-status", &vl);
        break;
    case SK_AL_HOSTNAME:
        if (gethostname(tmp, sizeof(tmp)) == 0) {
            tmp[sizeof(tmp) - 1] = 0;
            v = tmp;
            vl = strlen(tmp);
        }
        break;
    case SK_AL_TRACE_ID: {
        const char *tp = req_val(st, "traceparent", &vl);
        if (tp && vl >= 35) { /* 00-<32 hex trace id>-... */
            v = tp + 3;
            vl = 32;
        }
        break;
    }
    }
    if (!v) {
        *empty = true;
        put(o, "-", 1, 0);
        return;
    }
    put(o, v, vl, p->max_len);
}

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    if (c < 0xc2 || c > 0xf4 || n < len)
        return 0;
    for (size_t k = 1; k < len; k++)
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] > 0x8f))
        return 0;
    return len;
}

/* JSON string content: '"' and '\' escaped, control bytes and DEL as \u00XX,
 * valid UTF-8 kept, any other byte (not UTF-8: header values may be Latin-1)
 * as \u00XX so every line stays valid JSON. */
static void json_escape(struct sk_buf *o, const char *p, size_t n)
{
    static const char hx[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)p;
    size_t run = 0; /* start of the pending run of bytes that go out as they are */
    for (size_t i = 0; i < n;) {
        /* skip 8 plain ASCII bytes at a time (SWAR: no byte < 0x20, '"', '\\',
         * 0x7f, or with the high bit set) */
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
            uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\'), d = v ^ (ones * 0x7f);
            uint64_t hit = (v - ones * 0x20) | ((q - ones) & ~q) | ((b - ones) & ~b) |
                           ((d - ones) & ~d) | v;
            if (hit & highs)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t l = utf8_len(u + i, n - i);
            if (l) {
                i += l;
                continue;
            }
        }
        if (i > run)
            sk_buf_append(o, p + run, i - run);
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sk_buf_append(o, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hx[c >> 4], hx[c & 15]};
            sk_buf_append(o, e, 6);
        }
        i++;
        run = i;
    }
    if (n > run)
        sk_buf_append(o, p + run, n - run);
}

/* Operators whose output never needs a JSON escape (digits, addresses, fixed
 * words, flags, the request method: a token, checked by both codecs). */
static bool json_safe_op(const struct sk_al_piece *p)
{
    switch (p->op) {
    case SK_AL_START_TIME:
    case SK_AL_PROTOCOL:
    case SK_AL_RESPONSE_CODE:
    case SK_AL_RESPONSE_FLAGS:
    case SK_AL_BYTES_RECEIVED:
    case SK_AL_BYTES_SENT:
    case SK_AL_DURATION:
    case SK_AL_RESPONSE_DURATION:
    case SK_AL_UPSTREAM_HOST:
    case SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT:
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS:
    case SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
    case SK_AL_DOWNSTREAM_LOCAL_ADDRESS:
    case SK_AL_DOWNSTREAM_TLS_VERSION:
    case SK_AL_CONNECTION_ID:
    case SK_AL_STREAM_ID:
    case SK_AL_TRACE_ID:
        return true;
    case SK_AL_REQ:
        return !p->alt && p->text && strcmp(p->text, ":method") == 0;
    }
    return false;
}

/* "key": (translate escaped the key once) */
static void json_key(struct sk_buf *out, const char *key)
{
    sk_buf_append(out, "\"", 1);
    sk_buf_append(out, key, strlen(key));
    sk_buf_append(out, "\":", 2);
}

void sk_access_log_render(const struct sk_al_format *f, const struct sk_stream *st, double now,
                          struct sk_buf *out)
{
    if (!f->json) {
        bool empty;
        for (size_t i = 0; i < f->npieces; i++)
            piece(&f->pieces[i], st, now, out, &empty);
        /* a text format without a trailing newline still gives one line */
        if (sk_buf_used(out) == 0 || sk_buf_rptr(out)[sk_buf_used(out) - 1] != '\n')
            sk_buf_append(out, "\n", 1);
        return;
    }
    struct sk_buf tmp;
    sk_buf_init(&tmp, 64 * 1024);
    sk_buf_append(out, "{", 1);
    bool first = true;
    for (size_t k = 0; k < f->njson; k++) {
        const struct sk_al_format *vf = &f->json_vals[k];
        bool single_num = vf->npieces == 1 &&
                          (vf->pieces[0].op == SK_AL_RESPONSE_CODE ||
                           vf->pieces[0].op == SK_AL_BYTES_RECEIVED ||
                           vf->pieces[0].op == SK_AL_BYTES_SENT ||
                           vf->pieces[0].op == SK_AL_DURATION ||
                           vf->pieces[0].op == SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT);
        bool safe = vf->npieces > 0;
        for (size_t i = 0; i < vf->npieces && safe; i++)
            safe = json_safe_op(&vf->pieces[i]);
        if (safe && !f->omit_empty) {
            /* no character of these values needs an escape: write them in place */
            if (!first)
                sk_buf_append(out, ",", 1);
            first = false;
            json_key(out, f->json_keys[k]);
            size_t at = sk_buf_used(out);
            if (!single_num)
                sk_buf_append(out, "\"", 1);
            bool all_empty = true;
            for (size_t i = 0; i < vf->npieces; i++) {
                bool empty = false;
                piece(&vf->pieces[i], st, now, out, &empty);
                if (!empty || vf->pieces[i].op == SK_AL_LITERAL)
                    all_empty = false;
            }
            if (all_empty) {
                out->len = out->off + at; /* take the value back: null */
                sk_buf_append(out, "null", 4);
            } else if (!single_num) {
                sk_buf_append(out, "\"", 1);
            }
            continue;
        }
        bool all_empty = vf->npieces > 0;
        sk_buf_consume(&tmp, sk_buf_used(&tmp));
        for (size_t i = 0; i < vf->npieces; i++) {
            bool empty = false;
            piece(&vf->pieces[i], st, now, &tmp, &empty);
            if (vf->pieces[i].op != SK_AL_LITERAL && !empty)
                all_empty = false;
            if (vf->pieces[i].op == SK_AL_LITERAL)
                all_empty = false;
        }
        if (all_empty && f->omit_empty)
            continue;
        if (!first)
            sk_buf_append(out, ",", 1);
        first = false;
        json_key(out, f->json_keys[k]);
        if (all_empty) {
            sk_buf_append(out, "null", 4);
        } else if (single_num) {
            sk_buf_append(out, sk_buf_rptr(&tmp), sk_buf_used(&tmp));
        } else {
            sk_buf_append(out, "\"", 1);
            json_escape(out, sk_buf_rptr(&tmp), sk_buf_used(&tmp));
            sk_buf_append(out, "\"", 1);
        }
    }
    sk_buf_append(out, "}\n", 2);
    sk_buf_free(&tmp);
}

/* ---- filters ------------------------------------------------------------------------ */

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

static void writer_flush(struct al_writer *wr)
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
    if (!sk_buf_used(&wr->buf))
        sk_buf_shrink(&wr->buf);
}

static void flush_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    writer_flush(t->data);
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
            if (sk_buf_append(&wr->buf, sk_buf_rptr(&line), sk_buf_used(&line)) < 0)
                sk_stat_add(&st->w->stats, SK_ST_access_log_dropped, 1);
            else
                sk_stat_add(&st->w->stats, SK_ST_access_log_written, 1);
            sk_buf_free(&line);
        }
        if (sk_buf_used(&wr->buf) > AL_FLUSH_AT) {
            ev_timer_stop(st->w->loop, &wr->timer);
            writer_flush(wr);
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
        writer_flush(wr);
        if (wr->own_fd && wr->fd >= 0)
            close(wr->fd);
        sk_buf_free(&wr->buf);
        free(wr->path);
        free(wr);
        wr = n;
    }
}
