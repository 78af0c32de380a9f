/* Admin server (main thread). */
#include "skiff/admin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "skiff/buf.h"
#include "skiff/err.h"
#include "skiff/filter.h"
#include "skiff/hoststate.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/stats.h"
#include "skiff/tls.h"
#include "skiff/worker.h"

#define ADMIN_IN_MAX 16384

struct admin_conn {
    int fd;
    ev_io io;
    ev_timer timer;
    struct sk_buf in, out;
    bool replied;
};

static struct {
    struct ev_loop *loop;
    int fd;
    ev_io io;
    struct sk_admin_hooks hooks;
    bool forced_fail;
    uint64_t reload_ok, reload_rejected;
    time_t started;
} A = {.fd = -1};

void sk_admin_count_reload(bool ok)
{
    if (ok)
        A.reload_ok++;
    else
        A.reload_rejected++;
}

static void ac_close(struct admin_conn *c)
{
    ev_io_stop(A.loop, &c->io);
    ev_timer_stop(A.loop, &c->timer);
    close(c->fd);
    sk_buf_free(&c->in);
    sk_buf_free(&c->out);
    free(c);
}

static void reply(struct admin_conn *c, int status, const char *ctype, const char *body,
                  size_t blen)
{
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" :
                         status == 405 ? "Method Not Allowed" : status == 503 ? "Service Unavailable" :
                         "Bad Request";
    sk_buf_appendf(&c->out,
                   "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                   "cache-control: no-cache, max-age=0\r\nconnection: close\r\n\r\n",
                   status, reason, ctype, blen);
    sk_buf_append(&c->out, body, blen);
    c->replied = true;
}

struct dump_ctx {
    struct sk_buf *b;
    const struct sk_snapshot *snap;
    bool prom;
};

static void cluster_counters(struct sk_cluster_state *cs, void *arg)
{
    struct dump_ctx *d = arg;
    const struct sk_snapshot *snap = d->snap;
    if (!snap || !sk_snapshot_find_cluster(snap, cs->name))
        return; /* only clusters of the serving config */
#define C(field)                                                                                   \
    do {                                                                                           \
        unsigned long long v = (unsigned long long)atomic_load(&cs->field);                       \
        if (d->prom)                                                                               \
            sk_buf_appendf(d->b, "skiff_cluster_" #field "{cluster=\"%s\"} %llu\n", cs->name, v); \
        else                                                                                       \
            sk_buf_appendf(d->b, "cluster.%s." #field ": %llu\n", cs->name, v);                    \
    } while (0)
    C(upstream_rq_total);
    C(upstream_rq_2xx);
    C(upstream_rq_3xx);
    C(upstream_rq_4xx);
    C(upstream_rq_5xx);
    C(upstream_rq_retry);
    C(upstream_rq_retry_success);
    C(upstream_rq_retry_overflow);
    C(upstream_rq_timeout);
    C(upstream_rq_per_try_timeout);
    C(upstream_rq_pending_overflow);
    C(upstream_cx_overflow);
    C(upstream_cx_connect_fail);
    C(outlier_ejections_total);
    C(outlier_ejections_consecutive_5xx);
    C(outlier_ejections_success_rate);
    C(outlier_ejections_failure_percentage);
    C(health_check_attempt);
    C(health_check_success);
    C(health_check_failure);
    C(rq_active);
    C(cx_active);
    C(rq_pending);
    C(retries_active);
    C(ejected_hosts);
#undef C
}

static void cluster_dump(struct sk_cluster_state *cs, void *arg)
{
    struct dump_ctx *d = arg;
    const struct sk_cluster *c = d->snap ? sk_snapshot_find_cluster(d->snap, cs->name) : NULL;
    if (!c)
        return;
    struct sk_buf *b = d->b;
    const struct sk_circuit_breakers *cb = &c->cb;
    long long rq = (long long)atomic_load(&cs->rq_active), cx = (long long)atomic_load(&cs->cx_active);
    long long pend = (long long)atomic_load(&cs->rq_pending),
              rt = (long long)atomic_load(&cs->retries_active);
#define REM(lim, used) ((long long)(lim) - (used) > 0 ? (long long)(lim) - (used) : 0)
    sk_buf_appendf(b, "%s::default_priority::max_connections::%u\n", cs->name, cb->max_connections);
    sk_buf_appendf(b, "%s::default_priority::max_pending_requests::%u\n", cs->name,
                   cb->max_pending_requests);
    sk_buf_appendf(b, "%s::default_priority::max_requests::%u\n", cs->name, cb->max_requests);
    sk_buf_appendf(b, "%s::default_priority::max_retries::%u\n", cs->name, cb->max_retries);
    sk_buf_appendf(b, "%s::default_priority::remaining_cx::%lld\n", cs->name,
                   REM(cb->max_connections, cx));
    sk_buf_appendf(b, "%s::default_priority::remaining_pending::%lld\n", cs->name,
                   REM(cb->max_pending_requests, pend));
    sk_buf_appendf(b, "%s::default_priority::remaining_rq::%lld\n", cs->name,
                   REM(cb->max_requests, rq));
    sk_buf_appendf(b, "%s::default_priority::remaining_retries::%lld\n", cs->name,
                   REM(cb->max_retries, rt));
#undef REM
    int64_t now = sk_now_ms();
    pthread_mutex_lock(&cs->lock);
    for (struct sk_host_state *h = cs->hosts; h; h = h->next) {
        int hc = atomic_load(&h->hc_status);
        int64_t until = atomic_load(&h->ejected_until_ms);
        bool ejected = until != 0 && until > now;
        const char *flags = hc == SK_HC_UNHEALTHY ? (ejected ? "/failed_active_hc/failed_outlier_check"
                                                              : "/failed_active_hc")
                            : ejected ? "/failed_outlier_check"
                                      : "healthy";
        uint64_t tot = atomic_load(&h->rq_total), err = atomic_load(&h->rq_errors);
        sk_buf_appendf(b, "%s::%s::health_flags::%s\n", cs->name, h->addr_str, flags);
        sk_buf_appendf(b, "%s::%s::active_hc::%s\n", cs->name, h->addr_str,
                       hc == SK_HC_HEALTHY ? "healthy" : hc == SK_HC_UNHEALTHY ? "unhealthy"
                                                                               : "unknown");
        if (ejected)
            sk_buf_appendf(b, "%s::%s::ejected_for_ms::%lld\n", cs->name, h->addr_str,
                           (long long)(until - now));
        sk_buf_appendf(b, "%s::%s::ejections::%u\n", cs->name, h->addr_str,
                       atomic_load(&h->ejection_count));
        sk_buf_appendf(b, "%s::%s::rq_active::%lld\n", cs->name, h->addr_str,
                       (long long)atomic_load(&h->active_rq));
        sk_buf_appendf(b, "%s::%s::rq_total::%llu\n", cs->name, h->addr_str,
                       (unsigned long long)tot);
        sk_buf_appendf(b, "%s::%s::rq_error::%llu\n", cs->name, h->addr_str,
                       (unsigned long long)err);
        sk_buf_appendf(b, "%s::%s::success_rate::%.1f\n", cs->name, h->addr_str,
                       tot ? 100.0 * (double)(tot - err) / (double)tot : 100.0);
        sk_buf_appendf(b, "%s::%s::ewma_latency_us::%llu\n", cs->name, h->addr_str,
                       (unsigned long long)atomic_load(&h->ewma_us));
    }
    pthread_mutex_unlock(&cs->lock);
}

static void stats_body(struct sk_buf *b, bool prom)
{
    struct dump_ctx d = {b, A.hooks.snapshot ? A.hooks.snapshot() : NULL, prom};
    for (int i = 0; i < SK_ST__COUNT; i++) {
        uint64_t v = sk_workers_stat((enum sk_stat_id)i);
        if (i == SK_ST_config_reload_ok)
            v += A.reload_ok;
        if (i == SK_ST_config_reload_rejected)
            v += A.reload_rejected;
        bool gauge = strstr(sk_stat_names[i], "_active") != NULL;
        if (prom) {
            sk_buf_appendf(b, "# TYPE skiff_%s %s\nskiff_%s %llu\n", sk_stat_names[i],
                           gauge ? "gauge" : "counter", sk_stat_names[i], (unsigned long long)v);
        } else {
            sk_buf_appendf(b, "%s: %llu\n", sk_stat_names[i], (unsigned long long)v);
        }
    }
    sk_cstate_foreach(cluster_counters, &d);
    sk_tls_stats(b, prom);
    sk_filters_stats(b, prom);
}

static void handle(struct admin_conn *c, const struct sk_h1_msg *m)
{
    const char *path = m->target;
    size_t pl = m->target_len;
    const char *q = memchr(path, '?', pl);
    if (q)
        pl = (size_t)(q - path);
    bool get = m->method_len == 3 && memcmp(m->method, "GET", 3) == 0;
    bool head = m->method_len == 4 && memcmp(m->method, "HEAD", 4) == 0;
    bool post = m->method_len == 4 && memcmp(m->method, "POST", 4) == 0;
#define IS(p) (pl == sizeof(p) - 1 && memcmp(path, p, pl) == 0)
    if (IS("/ready")) {
        bool ok = A.hooks.ready() && !A.forced_fail;
        const char *s = A.forced_fail ? "FAILED" : A.hooks.state();
        char body[64];
        int n = snprintf(body, sizeof(body), "%s\n", s);
        reply(c, ok ? 200 : 503, "text/plain", body, (size_t)n);
    } else if (IS("/stats") && (get || head)) {
        struct sk_buf b;
        sk_buf_init(&b, 1 << 20);
        stats_body(&b, false);
        reply(c, 200, "text/plain", sk_buf_rptr(&b), sk_buf_used(&b));
        sk_buf_free(&b);
    } else if (IS("/stats/prometheus") && (get || head)) {
        struct sk_buf b;
        sk_buf_init(&b, 1 << 20);
        stats_body(&b, true);
        reply(c, 200, "text/plain; version=0.0.4", sk_buf_rptr(&b), sk_buf_used(&b));
        sk_buf_free(&b);
    } else if (IS("/clusters") && (get || head)) {
        struct sk_buf b;
        sk_buf_init(&b, 8 << 20);
        struct dump_ctx d = {&b, A.hooks.snapshot ? A.hooks.snapshot() : NULL, false};
        sk_cstate_foreach(cluster_dump, &d);
        reply(c, 200, "text/plain", sk_buf_rptr(&b), sk_buf_used(&b));
        sk_buf_free(&b);
    } else if (IS("/server_info")) {
        char body[512];
        int n = snprintf(body, sizeof(body),
                         "{\"version\": \"skiff/0.1.0\", \"state\": \"%s\", "
                         "\"config_version\": %llu, \"uptime_seconds\": %lld, "
                         "\"concurrency\": %d}\n",
                         A.hooks.state(), (unsigned long long)A.hooks.config_version(),
                         (long long)(time(NULL) - A.started), sk_nworkers);
        reply(c, 200, "application/json", body, (size_t)n);
    } else if (IS("/quitquitquit")) {
        if (!post) {
            reply(c, 405, "text/plain", "use POST\n", 9);
            return;
        }
        reply(c, 200, "text/plain", "OK\n", 3);
        A.hooks.quit();
    } else if (IS("/healthcheck/fail") || IS("/healthcheck/ok")) {
        if (!post) {
            reply(c, 405, "text/plain", "use POST\n", 9);
            return;
        }
        A.forced_fail = IS("/healthcheck/fail");
        reply(c, 200, "text/plain", "OK\n", 3);
    } else if (IS("/")) {
        static const char idx[] = "skiff admin\n  /ready\n  /stats\n  /stats/prometheus\n  /clusters\n"
                                  "  /server_info\n  POST /quitquitquit\n"
                                  "  POST /healthcheck/fail | /healthcheck/ok\n";
        reply(c, 200, "text/plain", idx, sizeof(idx) - 1);
    } else {
        reply(c, 404, "text/plain", "no such admin endpoint\n", 23);
    }
#undef IS
}

static void ac_io(struct ev_loop *loop, ev_io *io, int revents)
{
    struct admin_conn *c = io->data;
    if (!c->replied) {
        ssize_t r = sk_buf_read_fd(&c->in, c->fd, 0);
        if (r == SK_ERR_AGAIN)
            return;
        if (r <= 0 && r != SK_ERR_TOO_LARGE) {
            ac_close(c);
            return;
        }
        struct sk_h1_header hdrs[64];
        struct sk_h1_msg m = {0};
        m.hdrs = hdrs;
        m.hdrs_cap = 64;
        struct sk_h1_limits lim = {ADMIN_IN_MAX, 64};
        ssize_t pr = sk_h1_parse_request(sk_buf_rptr(&c->in), sk_buf_used(&c->in), &m, &lim);
        if (pr == SK_ERR_AGAIN && r != SK_ERR_TOO_LARGE)
            return;
        if (pr < 0)
            reply(c, 400, "text/plain", "bad request\n", 12);
        else
            handle(c, &m);
        ev_io_stop(loop, &c->io);
        ev_io_set(&c->io, c->fd, EV_WRITE);
        ev_io_start(loop, &c->io);
    }
    ssize_t w = sk_buf_write_fd(&c->out, c->fd);
    if (w == SK_ERR_AGAIN)
        return;
    if (w < 0 || sk_buf_used(&c->out) == 0) {
        shutdown(c->fd, SHUT_WR);
        ac_close(c);
    }
}

static void ac_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    ac_close(t->data);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    for (int i = 0; i < 16; i++) {
        int fd = accept4(A.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct admin_conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        sk_buf_init(&c->in, ADMIN_IN_MAX);
        sk_buf_init(&c->out, 4 << 20);
        ev_io_init(&c->io, ac_io, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        ev_timer_init(&c->timer, ac_timeout, 10., 0.);
        c->timer.data = c;
        ev_timer_start(loop, &c->timer);
    }
}

int sk_admin_start(struct ev_loop *loop, const struct sk_sockaddr *addr,
                   const struct sk_admin_hooks *hooks, const char **why)
{
    A.loop = loop;
    A.hooks = *hooks;
    A.started = time(NULL);
    int fd = sk_listen_socket_exclusive(addr, 128, why);
    if (fd < 0)
        return fd;
    A.fd = fd;
    ev_io_init(&A.io, accept_cb, fd, EV_READ);
    ev_io_start(loop, &A.io);
    return 0;
}

void sk_admin_stop(void)
{
    if (A.fd >= 0) {
        ev_io_stop(A.loop, &A.io);
        close(A.fd);
        A.fd = -1;
    }
}
