/* Active health checking on the main loop. See skiff/health.h for the
 * contract; comments here say why.
 *
 * Objects: hc_cluster (one per health-checked cluster name) -> hc_host (one
 * per host address, with its hc_check[] in the same allocation: one per
 * health_checks[] entry). A check owns one ev_timer: the interval timer while
 * idle and the timeout while a check is in flight, so a checker never has two
 * timers to keep consistent. What a check needs only while in flight (fd,
 * ev_io, buffers: struct hc_io) is allocated when it starts and freed when it
 * finishes, so the thousands of idle checkers of a large cluster hold ~72
 * bytes each (issue 5: state per host under 1 KB). Nothing but that hc_io is
 * freed from inside a watcher callback: callbacks only finish a check and
 * re-arm the timer; hosts and clusters die in apply / set_hosts / stop_all,
 * which main calls from its own callbacks. */
#include "skiff/health.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "skiff/buf.h"
#include "skiff/err.h"
#include "skiff/hoststate.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/net.h"

#define HC_HTTP_MAX_HEAD (32 * 1024)
#define HC_TCP_MAX_RECV (64 * 1024)
#define HC_MAX_REQ (64 * 1024)
#define HC_MAX_HDRS 100
#define HC_READ_CHUNK 4096

/* ---- state machine ------------------------------------------------------- */

enum hc_state { HC_S_IDLE = 0, HC_S_CONNECTING, HC_S_SENDING, HC_S_READING, HC_S_NSTATES };
static const char *const hc_state_name[HC_S_NSTATES] = {"idle", "connecting", "sending", "reading"};

enum hc_verdict { V_UNKNOWN = 0, V_HEALTHY, V_UNHEALTHY };

enum hc_result {
    R_PASS = 0,
    R_FAIL_NET,    /* counts toward unhealthy_threshold */
    R_FAIL_ACTIVE, /* unexpected HTTP status: unhealthy at once (Envoy) */
};

struct hc_host;

/* A check in flight: exists from check_start to check_cancel. */
struct hc_io {
    ev_io io; /* io.data = the hc_check */
    int fd;
    int state; /* enum hc_state, never HC_S_IDLE */
    struct sk_buf out;
    struct sk_buf in;
    size_t rx_block, rx_pos; /* TCP receive matching progress */
};

struct hc_check {
    ev_timer timer;         /* timer.data = the hc_host (holds this check) */
    struct hc_io *x;        /* NULL while idle */
    uint32_t passes, fails; /* consecutive */
    int verdict;            /* enum hc_verdict, this checker's opinion */
};

struct hc_cluster;

struct hc_host {
    struct hc_host *next;
    struct hc_cluster *cl;
    struct sk_host_state *hs; /* process lifetime; holds the address (and its text) */
    uint32_t nchecks;         /* checks[] entries in use (0: out of memory) */
    bool seen;
    struct hc_check checks[]; /* one per health_checks[] entry, room for >= nchecks */
};

struct hc_cluster {
    struct hc_cluster *next;
    const char *name;             /* the cluster state's */
    const struct sk_cluster *cfg; /* in cur_snap */
    struct sk_cluster_state *cs;
    struct hc_host *hosts;
    bool dns;
    bool connect_only; /* TLS cluster: we cannot speak its protocol */
    bool seen;
};

static struct hc_host *ck_host(const struct hc_check *ck)
{
    return ck->timer.data;
}

/* The check's config: health_checks[] entry i for checks[i] (a changed
 * health_checks[] restarts every check, so indexes always match). */
static const struct sk_health_check *ck_cfg(const struct hc_check *ck)
{
    const struct hc_host *h = ck_host(ck);
    return &h->cl->cfg->health_checks->v[ck - h->checks];
}

static int ck_state(const struct hc_check *ck)
{
    return ck->x ? ck->x->state : HC_S_IDLE;
}

struct dns_set {
    struct dns_set *next;
    char *name;
    struct sk_sockaddr *addrs;
    size_t n;
};

static struct ev_loop *hc_loop;
static struct sk_snapshot *cur_snap;
static struct hc_cluster *clusters;
static struct dns_set *dns_sets;
static uint64_t rng;

/* ---- small helpers ----------------------------------------------------- */

static uint64_t rnd(void)
{
    if (rng == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
              0x9e3779b97f4a7c15ull;
    }
    /* xorshift64*: jitter only, no need for quality or secrecy */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1dull;
}

static uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static uint64_t ms_or(uint64_t v, uint64_t dflt)
{
    return (v == 0 || v == SK_DUR_NONE) ? dflt : v;
}

static uint64_t cfg_interval(const struct sk_health_check *c)
{
    return ms_or(c->interval_ms, 5000);
}

static uint64_t cfg_timeout(const struct sk_health_check *c)
{
    return ms_or(c->timeout_ms, 5000);
}

static uint32_t cfg_unhealthy_threshold(const struct sk_health_check *c)
{
    return c->unhealthy_threshold ? c->unhealthy_threshold : 1;
}

static uint32_t cfg_healthy_threshold(const struct sk_health_check *c)
{
    return c->healthy_threshold ? c->healthy_threshold : 1;
}

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool mem_eq(const void *a, size_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static bool hdr_ops_eq(const struct sk_hdr_ops *a, const struct sk_hdr_ops *b)
{
    if (a->nadd != b->nadd || a->nremove != b->nremove)
        return false;
    for (size_t i = 0; i < a->nadd; i++) {
        const struct sk_hdr_op *x = &a->add[i], *y = &b->add[i];
        if (!mem_eq(x->key, x->key_len, y->key, y->key_len) ||
            !mem_eq(x->value, x->value_len, y->value, y->value_len) || x->action != y->action ||
            x->keep_empty_value != y->keep_empty_value)
            return false;
    }
    for (size_t i = 0; i < a->nremove; i++)
        if (!str_eq(a->remove[i], b->remove[i]))
            return false;
    return true;
}

static bool check_cfg_eq(const struct sk_health_check *a, const struct sk_health_check *b)
{
    if (a->kind != b->kind || a->timeout_ms != b->timeout_ms || a->interval_ms != b->interval_ms ||
        a->initial_jitter_ms != b->initial_jitter_ms ||
        a->interval_jitter_ms != b->interval_jitter_ms ||
        a->interval_jitter_percent != b->interval_jitter_percent ||
        a->unhealthy_threshold != b->unhealthy_threshold ||
        a->healthy_threshold != b->healthy_threshold ||
        a->no_traffic_interval_ms != b->no_traffic_interval_ms ||
        a->no_traffic_healthy_interval_ms != b->no_traffic_healthy_interval_ms ||
        a->unhealthy_edge_interval_ms != b->unhealthy_edge_interval_ms ||
        a->unhealthy_interval_ms != b->unhealthy_interval_ms ||
        a->healthy_edge_interval_ms != b->healthy_edge_interval_ms || !str_eq(a->path, b->path) ||
        !str_eq(a->host, b->host) || a->nexpected != b->nexpected ||
        !mem_eq(a->expected_statuses, a->nexpected * 2 * sizeof(int64_t), b->expected_statuses,
                b->nexpected * 2 * sizeof(int64_t)) ||
        !hdr_ops_eq(&a->req_hdrs, &b->req_hdrs) ||
        !mem_eq(a->send, a->send_len, b->send, b->send_len) || a->nreceive != b->nreceive)
        return false;
    for (size_t i = 0; i < a->nreceive; i++)
        if (!mem_eq(a->receive[i], a->receive_len[i], b->receive[i], b->receive_len[i]))
            return false;
    return true;
}

static bool checks_eq(const struct sk_health_checks *a, const struct sk_health_checks *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (!check_cfg_eq(&a->v[i], &b->v[i]))
            return false;
    return true;
}

static bool has_health_checks(const struct sk_cluster *c)
{
    return c->health_checks && c->health_checks->n > 0;
}

static bool is_dns(const struct sk_cluster *c)
{
    return c->type == SK_CLUSTER_STRICT_DNS || c->type == SK_CLUSTER_LOGICAL_DNS;
}

static const char *verdict_name(int v)
{
    return v == V_HEALTHY ? "HEALTHY" : v == V_UNHEALTHY ? "UNHEALTHY" : "UNKNOWN";
}

/* ---- one check ------------------------------------------------------------ */

static void check_start(struct hc_check *ck);
static void check_finish(struct hc_check *ck, int result, const char *why);

/* In-flight states only (a check is idle exactly while it has no hc_io). */
static void set_state(struct hc_check *ck, int to)
{
    /* legal edges: (start)->connecting->sending->reading, (cancel: any->idle) */
    int from = ck_state(ck);
    bool ok = ck->x && ((from == HC_S_CONNECTING && to == HC_S_SENDING) ||
                        (from == HC_S_SENDING && to == HC_S_READING));
    if (!ok) {
        sk_error("health: illegal state change %s -> %s (host %s of cluster %s)",
                 hc_state_name[from], hc_state_name[to], ck_host(ck)->hs->addr_str,
                 ck_host(ck)->cl->name);
        return;
    }
    ck->x->state = to;
}

static void timer_arm(struct hc_check *ck, uint64_t ms)
{
    ev_timer_stop(hc_loop, &ck->timer);
    ev_timer_set(&ck->timer, (double)ms / 1000.0, 0.);
    ev_timer_start(hc_loop, &ck->timer);
}

static void io_watch(struct hc_check *ck, int events)
{
    struct hc_io *x = ck->x;
    ev_io_stop(hc_loop, &x->io);
    ev_io_set(&x->io, x->fd, events);
    ev_io_start(hc_loop, &x->io);
}

/* Drop whatever the in-flight check holds (its hc_io); leaves the check idle
 * with no watcher running. Safe on an idle check. */
static void check_cancel(struct hc_check *ck)
{
    ev_timer_stop(hc_loop, &ck->timer);
    struct hc_io *x = ck->x;
    if (!x)
        return;
    ev_io_stop(hc_loop, &x->io);
    if (x->fd >= 0)
        close(x->fd);
    sk_buf_free(&x->out);
    sk_buf_free(&x->in);
    free(x);
    ck->x = NULL;
}

static bool kind_is_connect_only(const struct hc_check *ck)
{
    return ck_host(ck)->cl->connect_only;
}

/* Header lines of the HTTP check after Host: user-agent then
 * request_headers_to_add, with request_headers_to_remove applied first and
 * each add's append action applied against what is already there. */
struct hline {
    const char *k, *v;
    size_t klen, vlen;
};

static bool hdr_forbidden(const char *k, size_t klen)
{
    static const char *const no[] = {
        "host",       "connection", "content-length", "transfer-encoding",
        ":authority", ":path",      ":method"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (strlen(no[i]) == klen && strncasecmp(no[i], k, klen) == 0)
            return true;
    return false;
}

static bool field_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return false;
    return true;
}

static int build_http_request(struct hc_check *ck)
{
    const struct sk_health_check *c = ck_cfg(ck);
    const struct sk_hdr_ops *ops = &c->req_hdrs;
    const char *path = c->path && c->path[0] ? c->path : "/";
    const char *host = c->host && c->host[0] ? c->host : ck_host(ck)->cl->name;
    if (!field_ok(path, strlen(path)) || strchr(path, ' ') || !field_ok(host, strlen(host)))
        return SK_ERR_INVAL;

    struct hline *lines = calloc(ops->nadd + 1, sizeof(*lines));
    if (!lines)
        return SK_ERR_NOMEM;
    size_t n = 0;
    bool ua_removed = false;
    for (size_t i = 0; i < ops->nremove; i++)
        if (ops->remove[i] && strcasecmp(ops->remove[i], "user-agent") == 0)
            ua_removed = true;
    if (!ua_removed)
        lines[n++] = (struct hline){"User-Agent", "skiff-health-check", 10, 18};
    for (size_t i = 0; i < ops->nadd; i++) {
        const struct sk_hdr_op *op = &ops->add[i];
        if (!op->key || op->key_len == 0 || hdr_forbidden(op->key, op->key_len) ||
            !field_ok(op->key, op->key_len) || !field_ok(op->value, op->value_len) ||
            (op->value_len == 0 && !op->keep_empty_value))
            continue;
        bool exists = false;
        for (size_t j = 0; j < n; j++)
            if (lines[j].klen == op->key_len && strncasecmp(lines[j].k, op->key, op->key_len) == 0)
                exists = true;
        bool drop_old = false, add = false;
        switch (op->action) {
        case SK_HDR_ADD_IF_ABSENT:
            add = !exists;
            break;
        case SK_HDR_OVERWRITE_IF_EXISTS_OR_ADD:
            drop_old = add = true;
            break;
        case SK_HDR_OVERWRITE_IF_EXISTS:
            drop_old = add = exists;
            break;
        default: /* APPEND_IF_EXISTS_OR_ADD: another field line */
            add = true;
            break;
        }
        if (drop_old) {
            size_t w = 0;
            for (size_t j = 0; j < n; j++)
                if (!(lines[j].klen == op->key_len &&
                      strncasecmp(lines[j].k, op->key, op->key_len) == 0))
                    lines[w++] = lines[j];
            n = w;
        }
        if (add)
            lines[n++] =
                (struct hline){op->key, op->value ? op->value : "", op->key_len, op->value_len};
    }

    sk_buf_init(&ck->x->out, HC_MAX_REQ);
    int r = sk_buf_appendf(&ck->x->out, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, host);
    for (size_t j = 0; j < n && r == 0; j++) {
        r = sk_buf_append(&ck->x->out, lines[j].k, lines[j].klen);
        if (r == 0)
            r = sk_buf_append(&ck->x->out, ": ", 2);
        if (r == 0)
            r = sk_buf_append(&ck->x->out, lines[j].v, lines[j].vlen);
        if (r == 0)
            r = sk_buf_append(&ck->x->out, "\r\n", 2);
    }
    if (r == 0)
        r = sk_buf_appendf(&ck->x->out, "Connection: close\r\n\r\n");
    free(lines);
    return r;
}

static const char *errno_reason(int e, char *buf, size_t len)
{
    switch (e) {
    case ECONNREFUSED:
        return "connection refused";
    case ECONNRESET:
        return "connection reset";
    case ETIMEDOUT:
        return "connect timed out";
    case EHOSTUNREACH:
        return "host unreachable";
    case ENETUNREACH:
        return "network unreachable";
    default:
        snprintf(buf, len, "socket error: %s", strerror(e));
        return buf;
    }
}

static bool status_expected(const struct sk_health_check *c, int status)
{
    if (c->nexpected == 0 || !c->expected_statuses)
        return status >= 200 && status < 201;
    for (size_t i = 0; i < c->nexpected; i++)
        if (status >= c->expected_statuses[2 * i] && status < c->expected_statuses[2 * i + 1])
            return true;
    return false;
}

/* Look at what has been read. Returns true when the check finished. */
static bool http_evaluate(struct hc_check *ck, bool eof)
{
    for (;;) {
        struct sk_h1_header hdrs[HC_MAX_HDRS];
        struct sk_h1_msg m = {.hdrs = hdrs, .hdrs_cap = HC_MAX_HDRS};
        struct sk_h1_limits lim = {HC_HTTP_MAX_HEAD, HC_MAX_HDRS};
        ssize_t r =
            sk_h1_parse_response(sk_buf_rptr(&ck->x->in), sk_buf_used(&ck->x->in), &m, &lim, 0);
        if (r == SK_ERR_AGAIN) {
            if (eof) {
                check_finish(ck, R_FAIL_NET,
                             sk_buf_used(&ck->x->in) ? "connection closed in the response head"
                                                     : "connection closed before a response");
                return true;
            }
            if (sk_buf_room(&ck->x->in) == 0) {
                check_finish(ck, R_FAIL_NET, "response head too large");
                return true;
            }
            return false;
        }
        if (r < 0) {
            char why[96];
            snprintf(why, sizeof(why), "malformed response: %s", sk_strerror((int)r));
            check_finish(ck, R_FAIL_NET, why);
            return true;
        }
        if (m.status >= 100 && m.status < 200 && m.status != 101) {
            sk_buf_consume(&ck->x->in, (size_t)r); /* interim response: the real one follows */
            continue;
        }
        if (status_expected(ck_cfg(ck), m.status)) {
            check_finish(ck, R_PASS, NULL);
        } else {
            char why[64];
            snprintf(why, sizeof(why), "unexpected HTTP status %d", m.status);
            check_finish(ck, R_FAIL_ACTIVE, why);
        }
        return true;
    }
}

static bool tcp_evaluate(struct hc_check *ck, bool eof)
{
    const struct sk_health_check *c = ck_cfg(ck);
    struct hc_io *x = ck->x;
    const char *d = sk_buf_rptr(&x->in);
    size_t used = sk_buf_used(&x->in);
    /* each block in order, not necessarily contiguous (Envoy's fuzzy match) */
    while (x->rx_block < c->nreceive) {
        size_t bl = c->receive_len[x->rx_block];
        if (bl == 0) {
            x->rx_block++;
            continue;
        }
        if (used - x->rx_pos < bl)
            break;
        const char *f = memmem(d + x->rx_pos, used - x->rx_pos, c->receive[x->rx_block], bl);
        if (!f)
            break;
        x->rx_pos = (size_t)(f - d) + bl;
        x->rx_block++;
    }
    if (x->rx_block == c->nreceive) {
        check_finish(ck, R_PASS, NULL);
        return true;
    }
    if (eof) {
        check_finish(ck, R_FAIL_NET, "connection closed before the expected payload");
        return true;
    }
    if (sk_buf_room(&x->in) == 0) {
        check_finish(ck, R_FAIL_NET, "expected payload not found in 64 KiB");
        return true;
    }
    return false;
}

static bool expects_response(const struct hc_check *ck)
{
    if (kind_is_connect_only(ck))
        return false;
    return ck_cfg(ck)->kind == SK_HC_HTTP || ck_cfg(ck)->nreceive > 0;
}

static void on_writable(struct hc_check *ck)
{
    struct hc_io *x = ck->x;
    while (sk_buf_used(&x->out) > 0) {
        ssize_t w = send(x->fd, sk_buf_rptr(&x->out), sk_buf_used(&x->out), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return; /* EV_WRITE stays armed */
            char b[96];
            check_finish(ck, R_FAIL_NET, errno_reason(errno, b, sizeof(b)));
            return;
        }
        sk_buf_consume(&x->out, (size_t)w);
    }
    sk_buf_free(&x->out);
    if (!expects_response(ck)) {
        check_finish(ck, R_PASS, NULL);
        return;
    }
    set_state(ck, HC_S_READING);
    sk_buf_init(&x->in, ck_cfg(ck)->kind == SK_HC_HTTP ? HC_HTTP_MAX_HEAD : HC_TCP_MAX_RECV);
    io_watch(ck, EV_READ);
}

static void on_readable(struct hc_check *ck)
{
    /* bounded per callback so one chatty host cannot monopolise the loop */
    for (int round = 0; round < 16; round++) {
        size_t avail;
        char *w = sk_buf_wptr(&ck->x->in, HC_READ_CHUNK, &avail);
        bool full = w == NULL || sk_buf_room(&ck->x->in) == 0;
        if (full) {
            /* at the cap: the evaluators report the overflow */
            if (ck_cfg(ck)->kind == SK_HC_HTTP && !kind_is_connect_only(ck))
                http_evaluate(ck, false);
            else
                tcp_evaluate(ck, false);
            if (ck->x) /* nothing else to do: cannot happen, be safe */
                check_finish(ck, R_FAIL_NET, "response too large");
            return;
        }
        if (avail > sk_buf_room(&ck->x->in))
            avail = sk_buf_room(&ck->x->in);
        ssize_t r = read(ck->x->fd, w, avail);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            char b[96];
            check_finish(ck, R_FAIL_NET, errno_reason(errno, b, sizeof(b)));
            return;
        }
        sk_buf_commit(&ck->x->in, (size_t)r);
        bool eof = r == 0;
        bool http = ck_cfg(ck)->kind == SK_HC_HTTP;
        bool done = http ? http_evaluate(ck, eof) : tcp_evaluate(ck, eof);
        if (done || eof)
            return;
    }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct hc_check *ck = w->data;
    switch (ck_state(ck)) {
    case HC_S_CONNECTING: {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(ck->x->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err) {
            char b[96];
            check_finish(ck, R_FAIL_NET, errno_reason(err, b, sizeof(b)));
            return;
        }
        set_state(ck, HC_S_SENDING);
        on_writable(ck);
        return;
    }
    case HC_S_SENDING:
        on_writable(ck);
        return;
    case HC_S_READING:
        on_readable(ck);
        return;
    default:
        ev_io_stop(hc_loop, w); /* stray event on an idle check (cannot happen: freed) */
        return;
    }
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct hc_check *ck = (struct hc_check *)t; /* the timer is its first member */
    if (!ck->x) {
        check_start(ck);
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "timeout while %s", hc_state_name[ck->x->state]);
    check_finish(ck, R_FAIL_NET, why);
}

static void check_start(struct hc_check *ck)
{
    struct hc_host *h = ck_host(ck);
    const struct sk_health_check *cfg = ck_cfg(ck);
    struct hc_io *x = calloc(1, sizeof(*x));
    if (!x) {
        /* not the host's fault: skip this round, try again an interval later */
        sk_error("health: out of memory starting a check of host %s of cluster %s", h->hs->addr_str,
                 h->cl->name);
        timer_arm(ck, cfg_interval(cfg));
        return;
    }
    atomic_fetch_add_explicit(&h->cl->cs->health_check_attempt, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->hs->hc_checks, 1, memory_order_relaxed);
    x->fd = -1;
    x->state = HC_S_CONNECTING; /* an attempt from here on, whatever happens */
    sk_buf_init(&x->out, HC_MAX_REQ);
    sk_buf_init(&x->in, 0);
    ev_init(&x->io, io_cb);
    x->io.data = ck;
    ck->x = x;
    if (!kind_is_connect_only(ck)) {
        int r = 0;
        if (cfg->kind == SK_HC_HTTP)
            r = build_http_request(ck);
        else if (cfg->send_len)
            r = sk_buf_append(&x->out, cfg->send, cfg->send_len);
        if (r < 0) {
            char why[80];
            snprintf(why, sizeof(why), "cannot build the request: %s", sk_strerror(r));
            check_finish(ck, R_FAIL_NET, why);
            return;
        }
    }
    struct sk_sockaddr addr;
    sk_hstate_addr(h->hs, &addr);
    int fd = sk_connect_socket(&addr);
    if (fd < 0) {
        char b[96];
        check_finish(ck, R_FAIL_NET, errno_reason(-fd, b, sizeof(b)));
        return;
    }
    x->fd = fd;
    io_watch(ck, EV_WRITE);
    timer_arm(ck, cfg_timeout(cfg));
}

/* Envoy's HealthCheckerImplBase::interval(), minus no_traffic_interval. */
static uint64_t next_interval(const struct hc_check *ck, int result)
{
    const struct sk_health_check *c = ck_cfg(ck);
    uint64_t iv = cfg_interval(c);
    uint64_t base;
    uint64_t uiv = ms_or(c->unhealthy_interval_ms, iv);
    if (result != R_PASS && ck->verdict != V_UNHEALTHY) /* failing, not unhealthy yet */
        base = ms_or(c->unhealthy_edge_interval_ms, uiv);
    else if (result != R_PASS)
        base = uiv;
    else if (ck->verdict == V_UNHEALTHY) /* passing, but not healthy yet */
        base = ms_or(c->healthy_edge_interval_ms, iv);
    else
        base = iv;
    uint64_t add = 0;
    if (c->interval_jitter_percent > 0)
        add += rnd_below((uint64_t)c->interval_jitter_percent * base / 100);
    if (c->interval_jitter_ms > 0 && c->interval_jitter_ms != SK_DUR_NONE)
        add += rnd_below(c->interval_jitter_ms);
    return base + add;
}

/* Fold the checkers' opinions into the host's hc_status and log a change. */
static void host_update(struct hc_host *h, const char *detail)
{
    int agg = V_UNKNOWN;
    for (size_t i = 0; i < h->nchecks; i++) {
        if (h->checks[i].verdict == V_UNHEALTHY) {
            agg = V_UNHEALTHY;
            break;
        }
        if (h->checks[i].verdict == V_HEALTHY)
            agg = V_HEALTHY;
    }
    if (agg == V_UNKNOWN)
        return;
    int want = agg == V_HEALTHY ? SK_HC_HEALTHY : SK_HC_UNHEALTHY;
    int old = atomic_exchange_explicit(&h->hs->hc_status, want, memory_order_acq_rel);
    if (old != want)
        sk_info("health: host %s of cluster %s is now %s (%s)", h->hs->addr_str, h->cl->name,
                verdict_name(agg), detail);
}

static void check_finish(struct hc_check *ck, int result, const char *why)
{
    struct hc_host *h = ck_host(ck);
    const struct sk_health_check *c = ck_cfg(ck);
    check_cancel(ck);
    char detail[192] = "";
    int before = ck->verdict;
    if (result == R_PASS) {
        atomic_fetch_add_explicit(&h->cl->cs->health_check_success, 1, memory_order_relaxed);
        ck->fails = 0;
        if (ck->passes < UINT32_MAX)
            ck->passes++;
        if (before != V_UNHEALTHY) {
            ck->verdict = V_HEALTHY; /* first pass of an unchecked host is enough */
            snprintf(detail, sizeof(detail), "check passed");
        } else if (ck->passes >= cfg_healthy_threshold(c)) {
            ck->verdict = V_HEALTHY;
            snprintf(detail, sizeof(detail), "%u consecutive passes", ck->passes);
        }
        sk_debug("health: host %s of cluster %s: check passed", h->hs->addr_str, h->cl->name);
    } else {
        atomic_fetch_add_explicit(&h->cl->cs->health_check_failure, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->hs->hc_failures, 1, memory_order_relaxed);
        ck->passes = 0;
        if (ck->fails < UINT32_MAX)
            ck->fails++;
        if (before != V_UNHEALTHY) {
            if (result == R_FAIL_ACTIVE) {
                ck->verdict = V_UNHEALTHY;
                snprintf(detail, sizeof(detail), "%s", why);
            } else if (ck->fails >= cfg_unhealthy_threshold(c)) {
                ck->verdict = V_UNHEALTHY;
                if (ck->fails == 1)
                    snprintf(detail, sizeof(detail), "check failed: %s", why);
                else
                    snprintf(detail, sizeof(detail), "%u consecutive failures: %s", ck->fails, why);
            }
        }
        sk_debug("health: host %s of cluster %s: check failed: %s", h->hs->addr_str, h->cl->name,
                 why);
    }
    if (ck->verdict != before)
        host_update(h, detail);
    timer_arm(ck, next_interval(ck, result));
}

static void check_init(struct hc_check *ck, struct hc_host *h, const struct sk_health_check *cfg)
{
    memset(ck, 0, sizeof(*ck));
    /* a host already failing (state kept across a reconfiguration) must earn
     * healthy_threshold passes again */
    ck->verdict = atomic_load(&h->hs->hc_status) == SK_HC_UNHEALTHY ? V_UNHEALTHY : V_UNKNOWN;
    ev_init(&ck->timer, timer_cb);
    ck->timer.data = h;
    uint64_t j = cfg->initial_jitter_ms == SK_DUR_NONE ? 0 : cfg->initial_jitter_ms;
    timer_arm(ck, rnd_below(j + 1));
}

/* ---- hosts ----------------------------------------------------------------- */

static size_t host_size(size_t nchecks)
{
    return sizeof(struct hc_host) + nchecks * sizeof(struct hc_check);
}

static void host_stop_checks(struct hc_host *h)
{
    for (size_t i = 0; i < h->nchecks; i++)
        check_cancel(&h->checks[i]);
    h->nchecks = 0;
}

/* Start one check per health_checks[] entry; `h` has room for them. */
static void host_start_checks(struct hc_host *h)
{
    const struct sk_health_checks *hcs = h->cl->cfg->health_checks;
    h->nchecks = (uint32_t)hcs->n;
    for (size_t i = 0; i < hcs->n; i++)
        check_init(&h->checks[i], h, &hcs->v[i]);
}

/* Checks restart (settings changed): the host may need room for a different
 * number of them, so it may move; *pp is its link in the cluster's list. */
static void host_restart_checks(struct hc_host **pp)
{
    struct hc_host *h = *pp;
    host_stop_checks(h); /* no watcher points into h any more */
    size_t n = h->cl->cfg->health_checks->n;
    struct hc_host *nh = realloc(h, host_size(n));
    if (!nh) {
        sk_error("health: out of memory starting checks for host %s of cluster %s", h->hs->addr_str,
                 h->cl->name);
        return; /* h stays, with no checks */
    }
    *pp = nh;
    host_start_checks(nh);
}

static struct hc_host *host_new(struct hc_cluster *cl, struct sk_host_state *hs)
{
    struct hc_host *h = calloc(1, host_size(cl->cfg->health_checks->n));
    bool checks = h != NULL;
    if (!h) {
        h = calloc(1, host_size(0));
        if (!h)
            return NULL;
        sk_error("health: out of memory starting checks for host %s of cluster %s", hs->addr_str,
                 cl->name);
    }
    h->cl = cl;
    h->hs = hs;
    if (checks)
        host_start_checks(h);
    return h;
}

static void host_free(struct hc_host *h, bool reset_state)
{
    host_stop_checks(h);
    /* the host leaves health checking: its verdict no longer means anything */
    if (reset_state && h->hs)
        atomic_store(&h->hs->hc_status, SK_HC_UNKNOWN);
    free(h);
}

static void sync_hosts(struct hc_cluster *cl, const struct sk_sockaddr *addrs, size_t n)
{
    for (struct hc_host *h = cl->hosts; h; h = h->next)
        h->seen = false;
    for (size_t i = 0; i < n; i++) {
        if (addrs[i].len == 0)
            continue;
        struct hc_host *h;
        for (h = cl->hosts; h; h = h->next)
            if (sk_hstate_addr_eq(h->hs, &addrs[i]))
                break;
        if (h) {
            h->seen = true;
            continue;
        }
        struct sk_host_state *hs = sk_hstate_get(cl->cs, &addrs[i]);
        h = hs ? host_new(cl, hs) : NULL;
        if (!h) {
            sk_error("health: out of memory adding a host to cluster %s", cl->name);
            continue;
        }
        h->seen = true;
        h->next = cl->hosts;
        cl->hosts = h;
        sk_debug("health: checking host %s of cluster %s", h->hs->addr_str, cl->name);
    }
    for (struct hc_host **pp = &cl->hosts; *pp;) {
        struct hc_host *h = *pp;
        if (h->seen) {
            pp = &h->next;
            continue;
        }
        *pp = h->next;
        sk_debug("health: host %s left cluster %s", h->hs->addr_str, cl->name);
        host_free(h, true);
    }
}

/* ---- clusters -------------------------------------------------------------- */

static struct dns_set *dns_find(const char *name)
{
    for (struct dns_set *d = dns_sets; d; d = d->next)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}

static struct hc_cluster *cluster_find(const char *name)
{
    for (struct hc_cluster *c = clusters; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void cluster_free(struct hc_cluster *c, bool reset_state)
{
    while (c->hosts) {
        struct hc_host *h = c->hosts;
        c->hosts = h->next;
        host_free(h, reset_state);
    }
    free(c);
}

static void cluster_sync_hosts(struct hc_cluster *cl)
{
    const struct sk_cluster *c = cl->cfg;
    if (cl->dns) {
        struct dns_set *d = dns_find(cl->name);
        sync_hosts(cl, d ? d->addrs : NULL, d ? d->n : 0);
        return;
    }
    struct sk_sockaddr *a = calloc(c->nendpoints ? c->nendpoints : 1, sizeof(*a));
    if (!a) {
        sk_error("health: out of memory syncing hosts of cluster %s", cl->name);
        return;
    }
    for (size_t i = 0; i < c->nendpoints; i++)
        sk_endpoint_addr(&c->endpoints[i], &a[i]);
    sync_hosts(cl, a, c->nendpoints);
    free(a);
}

void sk_health_apply(struct ev_loop *loop, const struct sk_snapshot *snap)
{
    hc_loop = loop;
    struct sk_snapshot *old = cur_snap;
    /* the checkers point into the snapshot: keep it alive while they do */
    cur_snap = sk_snapshot_ref((struct sk_snapshot *)snap);
    for (struct hc_cluster *c = clusters; c; c = c->next)
        c->seen = false;

    for (size_t i = 0; snap && i < snap->nclusters; i++) {
        const struct sk_cluster *c = &snap->clusters[i];
        if (!has_health_checks(c))
            continue;
        struct hc_cluster *cl = cluster_find(c->name);
        bool restart = false;
        bool connect_only = c->tls != NULL;
        if (!cl) {
            cl = calloc(1, sizeof(*cl));
            struct sk_cluster_state *cs = cl ? sk_cstate_get(c->name) : NULL;
            if (!cs) {
                free(cl);
                sk_error("health: out of memory: cluster %s not health checked", c->name);
                continue;
            }
            cl->name = cs->name; /* process lifetime */
            cl->cs = cs;
            cl->next = clusters;
            clusters = cl;
        } else {
            restart = !checks_eq(cl->cfg->health_checks, c->health_checks) ||
                      cl->connect_only != connect_only;
        }
        if (connect_only && (!cl->cfg || !cl->connect_only))
            sk_warn("health: cluster %s uses TLS, which health checks do not speak yet: "
                    "its checks only test that a connection can be opened",
                    c->name);
        cl->cfg = c;
        cl->seen = true;
        cl->dns = is_dns(c);
        cl->connect_only = connect_only;
        /* unchanged settings: the checks find theirs through cl->cfg */
        for (struct hc_host **pp = &cl->hosts; restart && *pp; pp = &(*pp)->next)
            host_restart_checks(pp);
        if (restart)
            sk_info("health: cluster %s: health check settings changed, checks restarted", c->name);
        cluster_sync_hosts(cl);
    }

    for (struct hc_cluster **pp = &clusters; *pp;) {
        struct hc_cluster *c = *pp;
        if (c->seen) {
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        sk_debug("health: cluster %s no longer health checked", c->name);
        cluster_free(c, true);
    }
    for (struct dns_set **pp = &dns_sets; *pp;) {
        struct dns_set *d = *pp;
        if (snap && sk_snapshot_find_cluster(snap, d->name)) {
            pp = &d->next;
            continue;
        }
        *pp = d->next;
        free(d->name);
        free(d->addrs);
        free(d);
    }
    sk_snapshot_unref(old);
}

void sk_health_set_hosts(const char *cluster, const struct sk_sockaddr *addrs, size_t n)
{
    struct dns_set *d = dns_find(cluster);
    struct sk_sockaddr *copy = calloc(n ? n : 1, sizeof(*copy));
    if (!copy) {
        sk_error("health: out of memory storing the hosts of cluster %s", cluster);
        return;
    }
    if (n)
        memcpy(copy, addrs, n * sizeof(*copy));
    if (!d) {
        d = calloc(1, sizeof(*d));
        char *name = d ? strdup(cluster) : NULL;
        if (!name) {
            free(d);
            free(copy);
            sk_error("health: out of memory storing the hosts of cluster %s", cluster);
            return;
        }
        d->name = name;
        d->next = dns_sets;
        dns_sets = d;
    }
    free(d->addrs);
    d->addrs = copy;
    d->n = n;
    struct hc_cluster *cl = cluster_find(cluster);
    if (cl && cl->dns && hc_loop)
        sync_hosts(cl, d->addrs, d->n);
}

void sk_health_stop_all(void)
{
    while (clusters) {
        struct hc_cluster *c = clusters;
        clusters = c->next;
        cluster_free(c, false);
    }
    while (dns_sets) {
        struct dns_set *d = dns_sets;
        dns_sets = d->next;
        free(d->name);
        free(d->addrs);
        free(d);
    }
    sk_snapshot_unref(cur_snap);
    cur_snap = NULL;
}
