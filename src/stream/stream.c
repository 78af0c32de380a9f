/* Stream helpers: termination causes, header lists, local replies. */
#include "skiff/ascii.h"
#include "skiff/stream.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "skiff/accesslog.h"
#include "skiff/err.h"
#include "skiff/http1.h"
#include "skiff/hoststate.h"
#include "skiff/log.h"
#include "skiff/scope.h"
#include "skiff/stats.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

static const struct {
    const char *flag;
    int status;
    const char *reason;
} terms[SK_TERM__COUNT] = {
    [SK_TERM_NONE] = {"-", 200, "ok"},
    [SK_TERM_NO_ROUTE] = {"NR", 404, "no route matched the request"},
    [SK_TERM_NO_HEALTHY] = {"UH", 503, "no healthy upstream"},
    [SK_TERM_CONNECT_FAIL] = {"UF", 503, "upstream connect failure"},
    [SK_TERM_UPSTREAM_RESET] = {"UC", 502, "upstream connection closed before the response was complete"},
    [SK_TERM_UPSTREAM_TIMEOUT] = {"UT", 504, "upstream request timeout"},
    [SK_TERM_OVERFLOW] = {"UO", 503, "upstream overflow (limit reached)"},
    [SK_TERM_DOWNSTREAM_PROTO] = {"DPE", 400, "malformed request"},
    [SK_TERM_UPSTREAM_PROTO] = {"UPE", 502, "malformed upstream response"},
    [SK_TERM_CLIENT_RESET] = {"DC", 499, "client disconnected"},
    [SK_TERM_DIRECT_RESPONSE] = {"-", 200, "direct response"},
    [SK_TERM_FAULT_ABORT] = {"FI", 503, "fault injected"},
    [SK_TERM_NO_CLUSTER] = {"NC", 503, "cluster not found"},
    [SK_TERM_UPGRADE_REFUSED] = {"UPG", 403, "upgrade or CONNECT not enabled on this listener"},
    [SK_TERM_STREAM_IDLE] = {"SI", 408, "stream idle timeout"},
    [SK_TERM_DRAINING] = {"DR", 503, "proxy is draining"},
    [SK_TERM_RETRY_LIMIT] = {"URX", 503, "upstream retry limit exceeded"},
    [SK_TERM_RBAC_DENIED] = {"RBAC", 403, "RBAC: access denied"},
    [SK_TERM_REQUEST_TIMEOUT] = {"RQT", 408, "request timeout"},
    [SK_TERM_DURATION_TIMEOUT] = {"DT", 408, "max stream duration reached"},
    [SK_TERM_FAULT_MIDSTREAM] = {"MF", 200, "mid-stream fault injected"},
    [SK_TERM_IDLE_TIMEOUT] = {"IT", 0, "connection idle timeout"},
};

const char *sk_term_flag(int c)
{
    return (c >= 0 && c < SK_TERM__COUNT) ? terms[c].flag : "-";
}
int sk_term_status(int c)
{
    return (c >= 0 && c < SK_TERM__COUNT) ? terms[c].status : 500;
}
const char *sk_term_reason(int c)
{
    return (c >= 0 && c < SK_TERM__COUNT) ? terms[c].reason : "internal error";
}

static int hdrs_grow(struct sk_hdrs *h, struct sk_arena *a)
{
    if (h->n < h->cap)
        return 0;
    uint32_t nc = h->cap ? h->cap * 2 : 16;
    struct sk_hdr *v = sk_arena_alloc_nz(a, sizeof(*v) * nc); /* only [0, n) is ever read */
    if (!v)
        return SK_ERR_NOMEM;
    if (h->n)
        memcpy(v, h->v, sizeof(*v) * h->n);
    h->v = v;
    h->cap = nc;
    return 0;
}

int sk_hdrs_push(struct sk_hdrs *h, struct sk_arena *a, const struct sk_hdr *x)
{
    if (hdrs_grow(h, a) < 0)
        return SK_ERR_NOMEM;
    h->v[h->n++] = *x;
    return 0;
}

int sk_hdrs_add(struct sk_hdrs *h, struct sk_arena *a, const char *name, size_t nlen,
                const char *value, size_t vlen)
{
    if (hdrs_grow(h, a) < 0)
        return SK_ERR_NOMEM;
    char *n = sk_arena_alloc_nz(a, nlen + vlen + 2);
    if (!n)
        return SK_ERR_NOMEM;
    sk_ascii_lower_copy(n, name, nlen);
    n[nlen] = 0;
    char *v = n + nlen + 1;
    memcpy(v, value, vlen);
    v[vlen] = 0;
    h->v[h->n++] = (struct sk_hdr){n, (uint32_t)nlen, v, (uint32_t)vlen};
    return 0;
}

/* Lower-case in place the nlen bytes at n, which are followed by at least 8
 * readable bytes (the tail word is read whole and written back with only its
 * name bytes changed). */
static inline void lower_in_place(char *n, size_t nlen)
{
    size_t i = 0;
    for (; i + 8 <= nlen; i += 8) {
        uint64_t x;
        memcpy(&x, n + i, 8);
        x = sk_ascii_lower8(x);
        memcpy(n + i, &x, 8);
    }
    if (i == nlen)
        return;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t x;
    memcpy(&x, n + i, 8);
    uint64_t up = sk_ascii_upper8(x);
    up &= (1ull << (8 * (nlen - i))) - 1; /* only the name's bytes (1..7 of them) */
    x |= up >> 2;
    memcpy(n + i, &x, 8);
#else
    sk_ascii_lower_copy(n + i, n + i, nlen - i);
#endif
}

char *sk_hdrs_add_h1(struct sk_hdrs *h, struct sk_arena *a, const char *span, size_t span_len,
                     const struct sk_h1_header *f, size_t n)
{
    /* one allocation: the grown list (when needed), then the span + 8 bytes
     * of padding (the name lower-casing reads whole words) */
    uint32_t nc = h->cap;
    if (nc - h->n < n) {
        nc = nc ? nc : 16;
        while (nc - h->n < n)
            nc *= 2;
    }
    size_t vsz = nc != h->cap ? sizeof(struct sk_hdr) * nc : 0;
    char *mem = sk_arena_alloc_nz(a, vsz + span_len + 8);
    if (!mem)
        return NULL;
    if (vsz) {
        struct sk_hdr *v = (struct sk_hdr *)(void *)mem; /* only [0, n) is ever read */
        if (h->n)
            memcpy(v, h->v, sizeof(*v) * h->n);
        h->v = v;
        h->cap = nc;
    }
    char *blk = mem + vsz;
    memcpy(blk, span, span_len);
    memset(blk + span_len, 0, 8);
    struct sk_hdr *o = h->v + h->n;
    for (size_t i = 0; i < n; i++) {
        /* the byte after a name is its colon, the byte after a value its CR
         * or trailing whitespace: both inside the span, free for the NUL */
        char *nm = blk + (f[i].name - span);
        char *vl = blk + (f[i].value - span);
        lower_in_place(nm, f[i].name_len);
        nm[f[i].name_len] = 0;
        vl[f[i].value_len] = 0;
        o[i] = (struct sk_hdr){nm, (uint32_t)f[i].name_len, vl, (uint32_t)f[i].value_len};
    }
    h->n += (uint32_t)n;
    return blk;
}

int sk_buf_append_fields(struct sk_buf *b, const struct sk_hdrs *h)
{
    size_t need = 0;
    for (uint32_t i = 0; i < h->n; i++)
        need += (size_t)h->v[i].nlen + h->v[i].vlen + 4;
    size_t avail;
    char *w = sk_buf_used(b) + need <= b->cap ? sk_buf_wptr(b, need, &avail) : NULL;
    if (!w || avail < need) {
        /* over the cap or out of memory: piece by piece, up to the failure */
        for (uint32_t i = 0; i < h->n; i++) {
            int r;
            if ((r = sk_buf_append(b, h->v[i].name, h->v[i].nlen)) < 0 ||
                (r = sk_buf_append(b, ": ", 2)) < 0 ||
                (r = sk_buf_append(b, h->v[i].value, h->v[i].vlen)) < 0 ||
                (r = sk_buf_append(b, "\r\n", 2)) < 0)
                return r;
        }
        return 0;
    }
    for (uint32_t i = 0; i < h->n; i++) {
        const struct sk_hdr *x = &h->v[i];
        memcpy(w, x->name, x->nlen);
        w += x->nlen;
        memcpy(w, ": ", 2);
        w += 2;
        memcpy(w, x->value, x->vlen);
        w += x->vlen;
        memcpy(w, "\r\n", 2);
        w += 2;
    }
    sk_buf_commit(b, need);
    return 0;
}

struct sk_hdr *sk_hdrs_get(const struct sk_hdrs *h, const char *lname, size_t nlen)
{
    for (uint32_t i = 0; i < h->n; i++)
        if (h->v[i].nlen == nlen && memcmp(h->v[i].name, lname, nlen) == 0)
            return &h->v[i];
    return NULL;
}

void sk_hdrs_del(struct sk_hdrs *h, const char *lname, size_t nlen)
{
    uint32_t o = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->v[i].nlen == nlen && memcmp(h->v[i].name, lname, nlen) == 0)
            continue;
        h->v[o++] = h->v[i];
    }
    h->n = o;
}

/* HTTP status -> gRPC code (the gRPC spec's HTTP-to-gRPC mapping), with
 * the causes whose meaning is clearer mapped directly. */
static int grpc_code(int cause, int status)
{
    switch (cause) {
    case SK_TERM_UPSTREAM_TIMEOUT:
    case SK_TERM_STREAM_IDLE:
    case SK_TERM_REQUEST_TIMEOUT:
    case SK_TERM_DURATION_TIMEOUT:
        return 4; /* DEADLINE_EXCEEDED */
    case SK_TERM_NO_ROUTE:
        return 12; /* UNIMPLEMENTED */
    case SK_TERM_OVERFLOW:
        return 14; /* UNAVAILABLE (circuit breaker) */
    case SK_TERM_UPGRADE_REFUSED:
        return 7; /* PERMISSION_DENIED */
    }
    switch (status) {
    case 400: return 13; /* INTERNAL */
    case 401: return 16; /* UNAUTHENTICATED */
    case 403: return 7;  /* PERMISSION_DENIED */
    case 404: return 12; /* UNIMPLEMENTED */
    case 429:
    case 502:
    case 503:
    case 504: return 14; /* UNAVAILABLE */
    }
    return 2; /* UNKNOWN */
}

/* Trailers-only gRPC response: HTTP 200, grpc-status + grpc-message
 * (percent-encoded per the gRPC spec) in the one HEADERS block. */
static void grpc_local_reply(struct sk_stream *st, int cause, int status, const char *msg,
                             size_t ml)
{
    char code[8];
    int cl = snprintf(code, sizeof(code), "%d",
                      st->local_grpc_code ? st->local_grpc_code - 1 : grpc_code(cause, status));
    char enc[1024];
    size_t el = 0;
    static const char hx[] = "0123456789ABCDEF";
    for (size_t i = 0; i < ml && el + 3 < sizeof(enc); i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            enc[el++] = (char)c;
        } else {
            enc[el++] = '%';
            enc[el++] = hx[c >> 4];
            enc[el++] = hx[c & 15];
        }
    }
    struct sk_hdrs h = {0};
    sk_hdrs_add(&h, &st->arena, "content-type", 12, "application/grpc", 16);
    sk_hdrs_add(&h, &st->arena, "grpc-status", 11, code, (size_t)cl);
    sk_hdrs_add(&h, &st->arena, "grpc-message", 12, enc, el);
    const char *flag = sk_term_flag(cause);
    sk_hdrs_add(&h, &st->arena, "x-skiff-flags", 13, flag, strlen(flag));
    sk_warn("conn %llu stream %u: %s %.*s %.*s -> grpc-status %s (%s) %.*s",
            (unsigned long long)st->conn_id, st->stream_id, st->peer_ip, (int)st->method_len,
            st->method ? st->method : "", (int)st->path_len, st->path ? st->path : "", code, flag,
            (int)ml, msg);
    st->status = 200;
    st->resp_started = true;
    st->resp_hdrs = h;
    st->ops->send_head(st, 200, &h, 0, true);
    st->ops->send_end(st);
}

void sk_stream_local_reply(struct sk_stream *st, int cause, int status, const char *detail)
{
    if (st->cause == SK_TERM_NONE)
        st->cause = cause;
    if (status <= 0)
        status = sk_term_status(cause);
    st->status = status;
    if (st->resp_started) {
        /* too late for a reply: the client already has a head */
        st->ops->reset(st);
        return;
    }
    char body[512];
    int bl = snprintf(body, sizeof(body), "%s%s%s\n", sk_term_reason(cause), detail ? ": " : "",
                      detail ? detail : "");
    struct sk_hdr *ct = sk_hdrs_get(&st->req, "content-type", 12);
    if (ct && ct->vlen >= 16 && strncasecmp(ct->value, "application/grpc", 16) == 0) {
        grpc_local_reply(st, cause, status, body, bl > 0 ? (size_t)bl - 1 : 0);
        return;
    }
    if (bl < 0)
        bl = 0;
    if ((size_t)bl >= sizeof(body))
        bl = sizeof(body) - 1;
    struct sk_hdrs h = {0};
    sk_hdrs_add(&h, &st->arena, "content-type", 12, "text/plain", 10);
    const char *flag = sk_term_flag(cause);
    sk_hdrs_add(&h, &st->arena, "x-skiff-flags", 13, flag, strlen(flag));
    sk_warn("conn %llu stream %u: %s %.*s %.*s -> %d %s (%s)%s%s",
            (unsigned long long)st->conn_id, st->stream_id, st->peer_ip, (int)st->method_len,
            st->method ? st->method : "", (int)st->path_len, st->path ? st->path : "", status,
            flag, sk_term_reason(cause), detail ? ": " : "", detail ? detail : "");
    st->resp_started = true;
    st->resp_hdrs = h;
    bool head = st->resp_head_req;
    st->ops->send_head(st, status, &h, bl, head);
    if (!head) {
        st->bytes_tx += (uint64_t)bl;
        st->ops->send_data(st, body, (size_t)bl);
    }
    st->ops->send_end(st);
}

void sk_stream_cleanup(struct sk_stream *st)
{
    if (!st->logged && st->method) {
        st->logged = true;
        sk_hist_stream_end(&st->w->hist, ev_now(st->w->loop) - st->t_start,
                           st->t_first_byte > 0 ? st->t_first_byte - st->t_start : -1.0,
                           st->crt ? st->crt->cs : NULL,
                           st->crt && st->crt->cs ? st->crt->cs->name : NULL);
        sk_access_log_stream(st);
        if (st->hcm)
            sk_scope_stream_done(st->hcm->scope, st->vhost ? st->vhost->scope : NULL, st->w->id,
                                 st->resp_started ? st->status : 0);
    }
    if (st->up) {
        sk_up_abort(st->up);
        st->up = NULL;
    }
    if (st->host) {
        if (st->host->active_rq)
            st->host->active_rq--;
        if (st->host->hs)
            atomic_fetch_sub_explicit(&st->host->hs->active_rq, 1, memory_order_relaxed);
        sk_host_unref(st->host);
        st->host = NULL;
    }
    if (st->crt && st->crt->active_rq)
        st->crt->active_rq--;
    if (st->crt && st->crt->cs) {
        if (st->holds_rq_slot)
            atomic_fetch_sub(&st->crt->cs->rq_active, 1);
        if (st->holds_retry_slot)
            atomic_fetch_sub(&st->crt->cs->retries_active, 1);
        if (st->holds_pending_slot)
            atomic_fetch_sub(&st->crt->cs->rq_pending, 1);
    }
    st->holds_rq_slot = st->holds_retry_slot = st->holds_pending_slot = false;
    st->crt = NULL;
    for (uint8_t i = 0; i < st->nfilters; i++)
        if (st->filters[i].vt && st->filters[i].vt->on_destroy)
            st->filters[i].vt->on_destroy(st, &st->filters[i]);
    st->nfilters = 0;
    /* most of these never ran: skip the call into libev for those
     * (ev_timer_stop does nothing for a watcher neither active nor pending) */
    ev_timer *tm[] = {&st->timeout,    &st->retry_timer, &st->try_timer, &st->pace_timer,
                      &st->idle_timer, &st->req_timer,   &st->dur_timer};
    for (size_t i = 0; i < sizeof(tm) / sizeof(tm[0]); i++)
        if (ev_is_active(tm[i]) || ev_is_pending(tm[i]))
            ev_timer_stop(st->w->loop, tm[i]);
    sk_buf_free(&st->body_copy);
    sk_buf_free(&st->resp_hold);
    /* the owner may pool the stream: keep one arena block */
    sk_arena_reset(&st->arena);
}
