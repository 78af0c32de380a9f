/* Admin server (main thread). Endpoints: see include/skiff/admin.h. */
#include "skiff/admin.h"

#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "skiff/buf.h"
#include "skiff/err.h"
#include "skiff/filter.h"
#include "skiff/histogram.h"
#include "skiff/hoststate.h"
#include "skiff/http1.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/scope.h"
#include "skiff/stats.h"
#include "skiff/tls.h"
#include "skiff/toxics.h"
#include "skiff/worker.h"
#include "skiff/xds.h"

#define ADMIN_IN_MAX 16384
#define LIT(b, s) sk_buf_append((b), s, sizeof(s) - 1)
#define ADMIN_OUT_MAX (256u << 20) /* a dump for many thousand clusters still fits */

/* the dashboard, generated from ui.html at build time (scripts/embed.py) */
extern const char sk_admin_ui_html[];
extern const size_t sk_admin_ui_html_len;

struct admin_conn {
    int fd;
    ev_io io;
    ev_timer timer;
    struct sk_buf in, out;
    bool replied;
    bool head; /* HEAD: headers only */
    bool sent_continue;  /* 100 Continue sent for an Expect: 100-continue body */
    const char *body;    /* request body (Content-Length, at most SK_ADMIN_BODY_MAX) */
    size_t body_len;
};

static struct {
    struct ev_loop *loop;
    int fd;
    ev_io io;
    struct sk_admin_hooks hooks;
    bool forced_fail;
    uint64_t reload_ok, reload_rejected;
    struct {
        const char *prefix;
        sk_admin_handler_fn fn;
    } handlers[4]; /* other modules' endpoints (sk_admin_add_handler) */
    size_t nhandlers;
    time_t started;
    double started_wall; /* unix seconds, for process_start_time_seconds */
    double started_mono;
} A = {.fd = -1};

int sk_admin_add_handler(const char *prefix, sk_admin_handler_fn fn)
{
    if (A.nhandlers >= sizeof(A.handlers) / sizeof(A.handlers[0]))
        return -1;
    A.handlers[A.nhandlers].prefix = prefix;
    A.handlers[A.nhandlers].fn = fn;
    A.nhandlers++;
    return 0;
}

void sk_admin_count_reload(bool ok)
{
    if (ok)
        A.reload_ok++;
    else
        A.reload_rejected++;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 409 ? "Conflict"
                         : status == 411 ? "Length Required"
                         : status == 413 ? "Content Too Large"
                         : status == 500 ? "Internal Server Error"
                         : status == 503 ? "Service Unavailable"
                                         : "Bad Request";
    sk_buf_appendf(&c->out,
                   "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                   "cache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n"
                   "%sconnection: close\r\n\r\n",
                   status, reason, ctype, blen, status == 405 ? "allow: POST\r\n" : "");
    if (!c->head && sk_buf_append(&c->out, body, blen) < 0) {
        /* too big even for the admin cap: say so rather than truncate silently */
        sk_buf_consume(&c->out, sk_buf_used(&c->out));
        static const char msg[] = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 20\r\n"
                                  "connection: close\r\n\r\nresponse too large\r\n";
        sk_buf_append(&c->out, msg, sizeof(msg) - 1);
    }
    c->replied = true;
}

static void reply_buf(struct admin_conn *c, int status, const char *ctype, struct sk_buf *b)
{
    reply(c, status, ctype, sk_buf_rptr(b), sk_buf_used(b));
    sk_buf_free(b);
}

/* ---- small writers ---------------------------------------------------------------- */

static void json_str(struct sk_buf *b, const char *s)
{
    static const char hx[] = "0123456789abcdef";
    LIT(b, "\"");
    if (s) {
        const char *run = s;
        for (const char *p = s; *p; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch >= 0x20 && ch != '"' && ch != '\\')
                continue;
            sk_buf_append(b, run, (size_t)(p - run));
            char e[6] = {'\\', 'u', '0', '0', hx[ch >> 4], hx[ch & 15]};
            if (ch == '"' || ch == '\\') {
                e[1] = (char)ch;
                sk_buf_append(b, e, 2);
            } else if (ch == '\n') {
                LIT(b, "\\n");
            } else {
                sk_buf_append(b, e, 6);
            }
            run = p + 1;
        }
        sk_buf_append(b, run, strlen(run));
    }
    LIT(b, "\"");
}

/* Prometheus label value: escape backslash, double quote and newline. */
static void prom_label(struct sk_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\' || *p == '"')
            sk_buf_appendf(b, "\\%c", *p);
        else if (*p == '\n')
            LIT(b, "\\n");
        else
            sk_buf_append(b, p, 1);
    }
}

/* Value of `key` in a query string (no percent-decoding: admin values are plain). */
static const char *qparam(const char *q, size_t ql, const char *key, size_t *vl)
{
    size_t kl = strlen(key);
    const char *p = q, *end = q + ql;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) >= kl && memcmp(p, key, kl) == 0 &&
            ((size_t)(e - p) == kl || p[kl] == '=')) {
            const char *v = (size_t)(e - p) == kl ? e : p + kl + 1;
            *vl = (size_t)(e - v);
            return v;
        }
        p = e + 1;
    }
    return NULL;
}

static bool qis(const char *q, size_t ql, const char *key, const char *val)
{
    size_t vl;
    const char *v = qparam(q, ql, key, &vl);
    return v && vl == strlen(val) && memcmp(v, val, vl) == 0;
}

/* ---- process ------------------------------------------------------------------------ */

struct proc_info {
    uint64_t rss, vsz, hwm;
    double cpu_s;
    long open_fds, max_fds;
};

static void proc_info(struct proc_info *p)
{
    memset(p, 0, sizeof(*p));
    long page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long long vsz = 0, rss = 0;
        if (fscanf(f, "%llu %llu", &vsz, &rss) == 2) {
            p->vsz = vsz * (uint64_t)page;
            p->rss = rss * (uint64_t)page;
        }
        fclose(f);
    }
    f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof(line), f)) {
            unsigned long long kb;
            if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
                p->hwm = kb * 1024;
        }
        fclose(f);
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        p->cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                p->open_fds++;
        closedir(d);
        p->open_fds--; /* the directory stream itself */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        p->max_fds = rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
}

/* ---- clusters of the serving snapshot ---------------------------------------------- */

struct cl_list {
    struct sk_cluster_state **v;
    const struct sk_cluster **cfg;
    size_t n, cap;
    const struct sk_snapshot *snap;
};

static void cl_collect_cb(struct sk_cluster_state *cs, void *arg)
{
    struct cl_list *l = arg;
    const struct sk_cluster *c = l->snap ? sk_snapshot_find_cluster(l->snap, cs->name) : NULL;
    if (!c)
        return; /* only clusters of the serving config */
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        void *nv = realloc(l->v, nc * sizeof(*l->v));
        if (!nv)
            return;
        l->v = nv;
        void *ncf = realloc(l->cfg, nc * sizeof(*l->cfg));
        if (!ncf)
            return;
        l->cfg = ncf;
        l->cap = nc;
    }
    l->v[l->n] = cs;
    l->cfg[l->n] = c;
    l->n++;
}

static int cl_cmp(const void *a, const void *b)
{
    const struct sk_cluster_state *x = *(struct sk_cluster_state *const *)a,
                                  *y = *(struct sk_cluster_state *const *)b;
    return strcmp(x->name, y->name);
}

static void cl_collect(struct cl_list *l)
{
    memset(l, 0, sizeof(*l));
    l->snap = A.hooks.snapshot ? A.hooks.snapshot() : NULL;
    sk_cstate_foreach(cl_collect_cb, l);
    /* stable, sorted output; cfg follows its state through a lookup */
    if (l->n) /* qsort(NULL, 0) is undefined */
        qsort(l->v, l->n, sizeof(*l->v), cl_cmp);
    for (size_t i = 0; i < l->n; i++)
        l->cfg[i] = sk_snapshot_find_cluster(l->snap, l->v[i]->name);
}

static void cl_free(struct cl_list *l)
{
    free(l->v);
    free(l->cfg);
}

static size_t cfg_hosts(const struct sk_cluster *c,
                        void (*fn)(struct sk_buf *b, const char *cl, const char *addr, bool first),
                        struct sk_buf *b);

/* ---- histograms, merged over workers --------------------------------------------- */

struct hists {
    struct sk_hist_snap down, up;
    struct sk_hist_snap *cl; /* parallel to cl_list.v */
    size_t ncl;
    const struct cl_list *cls;
    uint64_t skipped;
};

static void hist_cluster_cb(const void *key, const char *name, const struct sk_hist *h, void *arg)
{
    struct hists *H = arg;
    /* cl_list is sorted by name; names are unique per cluster state */
    size_t lo = 0, hi = H->cls->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(H->cls->v[mid]->name, name);
        if (c == 0) {
            if ((const void *)H->cls->v[mid] == key)
                sk_hist_merge(&H->cl[mid], h);
            return;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
}

static void hists_collect(struct hists *H, const struct cl_list *cls)
{
    memset(H, 0, sizeof(*H));
    H->cls = cls;
    H->cl = calloc(cls->n ? cls->n : 1, sizeof(*H->cl));
    H->ncl = H->cl ? cls->n : 0;
    for (int i = 0; i < sk_nworkers; i++) {
        struct sk_worker *w = &sk_workers[i];
        sk_hist_merge(&H->down, &w->hist.downstream_rq_time);
        sk_hist_merge(&H->up, &w->hist.upstream_rq_time);
        H->skipped += atomic_load_explicit(&w->hist.cluster_skipped, memory_order_relaxed);
        if (H->cl)
            sk_hist_foreach_cluster(&w->hist, hist_cluster_cb, H);
    }
}

static void hists_free(struct hists *H)
{
    free(H->cl);
}

/* ---- counters -------------------------------------------------------------------- */

static uint64_t stat_total(int i)
{
    uint64_t v = sk_workers_stat((enum sk_stat_id)i);
    if (i == SK_ST_config_reload_ok)
        v += A.reload_ok;
    if (i == SK_ST_config_reload_rejected)
        v += A.reload_rejected;
    return v;
}

static bool stat_is_gauge(const char *name)
{
    return strstr(name, "_active") != NULL;
}

/* the per-class counters are one labelled family in Prometheus */
static int stat_code_class(int i)
{
    switch (i) {
    case SK_ST_downstream_rq_1xx:
    case SK_ST_upstream_rq_1xx: return 1;
    case SK_ST_downstream_rq_2xx:
    case SK_ST_upstream_rq_2xx: return 2;
    case SK_ST_downstream_rq_3xx:
    case SK_ST_upstream_rq_3xx: return 3;
    case SK_ST_downstream_rq_4xx:
    case SK_ST_upstream_rq_4xx: return 4;
    case SK_ST_downstream_rq_5xx:
    case SK_ST_upstream_rq_5xx: return 5;
    }
    return 0;
}

static const struct {
    const char *name, *help;
} stat_help[] = {
    {"downstream_cx_total", "Downstream connections accepted."},
    {"downstream_cx_active", "Downstream connections open now."},
    {"downstream_cx_destroy", "Downstream connections closed."},
    {"downstream_cx_http1_total", "Downstream HTTP/1 connections."},
    {"downstream_cx_http2_total", "Downstream HTTP/2 connections."},
    {"downstream_cx_tcp_total", "Downstream connections on TCP proxy listeners."},
    {"downstream_cx_protocol_error", "Downstream connections closed on a protocol error."},
    {"downstream_cx_idle_timeout", "Downstream connections closed by the idle timeout."},
    {"downstream_rq_total", "Downstream requests (request heads routed)."},
    {"downstream_rq_active", "Downstream requests in flight."},
    {"downstream_rq_rejected_smuggling", "Requests rejected as ambiguous (request smuggling)."},
    {"downstream_rq_idle_timeout", "Requests closed by the stream idle timeout (SI)."},
    {"downstream_rq_timeout", "Requests not fully received within the HCM request_timeout."},
    {"downstream_rq_header_timeout", "Requests whose headers did not arrive within request_headers_timeout."},
    {"downstream_rq_max_duration_reached", "Requests that reached max_stream_duration (DT)."},
    {"upstream_cx_total", "Upstream connections opened."},
    {"upstream_cx_active", "Upstream connections open now."},
    {"upstream_cx_connect_fail", "Upstream connection attempts that failed."},
    {"upstream_cx_connect_timeout", "Upstream connection attempts that timed out."},
    {"upstream_cx_destroy", "Upstream connections closed."},
    {"upstream_cx_reused", "Upstream requests sent on a reused connection."},
    {"upstream_rq_total", "Upstream requests (attempts)."},
    {"upstream_rq_timeout", "Upstream requests that hit the route timeout."},
    {"upstream_rq_reset", "Upstream requests reset before a full response."},
    {"rq_no_route", "Requests that matched no route (NR)."},
    {"rq_no_healthy_upstream", "Requests with no healthy upstream host (UH)."},
    {"rq_direct_response", "Requests answered by a direct_response route."},
    {"tcp_bytes_rx", "Bytes received by TCP proxy connections."},
    {"tcp_bytes_tx", "Bytes sent by TCP proxy connections."},
    {"access_log_written", "Access log lines written."},
    {"access_log_dropped", "Access log lines dropped (sink full or unavailable)."},
    {"config_reload_ok", "Configuration updates applied."},
    {"config_reload_rejected", "Configuration updates rejected."},
};

static const char *help_for(const char *name)
{
    for (size_t i = 0; i < sizeof(stat_help) / sizeof(stat_help[0]); i++)
        if (strcmp(stat_help[i].name, name) == 0)
            return stat_help[i].help;
    return NULL;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && memcmp(s + a - b, suf, b) == 0;
}

/* per-cluster counters and gauges (struct sk_cluster_state) */
#define CL_FIELDS(X)                                                                               \
    X(upstream_rq_total, 0, "Requests sent to the cluster (attempts).")                            \
    X(upstream_rq_retry, 0, "Retries.")                                                            \
    X(upstream_rq_retry_success, 0, "Retries that succeeded.")                                     \
    X(upstream_rq_retry_overflow, 0, "Retries refused by the retry circuit breaker / budget.")     \
    X(upstream_rq_timeout, 0, "Requests that hit the route timeout.")                              \
    X(upstream_rq_per_try_timeout, 0, "Attempts that hit the per-try timeout.")                    \
    X(upstream_rq_pending_overflow, 0, "Requests refused by the pending/requests breaker.")        \
    X(upstream_cx_overflow, 0, "Connections refused by the max_connections breaker.")              \
    X(upstream_cx_connect_fail, 0, "Connection attempts that failed.")                             \
    X(outlier_ejections_total, 0, "Hosts ejected by outlier detection.")                           \
    X(outlier_ejections_consecutive_5xx, 0, "Ejections for consecutive 5xx.")                      \
    X(outlier_ejections_success_rate, 0, "Ejections for low success rate.")                        \
    X(outlier_ejections_failure_percentage, 0, "Ejections for failure percentage.")                \
    X(health_check_attempt, 0, "Active health checks sent.")                                       \
    X(health_check_success, 0, "Active health checks that passed.")                                \
    X(health_check_failure, 0, "Active health checks that failed.")                                \
    X(rq_active, 1, "Requests in flight (max_requests breaker usage).")                            \
    X(cx_active, 1, "Connections open (max_connections breaker usage).")                           \
    X(rq_pending, 1, "Requests waiting for a connection (max_pending_requests usage).")            \
    X(retries_active, 1, "Retries in flight (max_retries breaker usage).")                         \
    X(ejected_hosts, 1, "Hosts currently ejected.")

/* Plain "name: value" counters (no histograms), the base of /stats and its JSON. */
static void counters_plain(struct sk_buf *b, const struct cl_list *cls)
{
    for (int i = 0; i < SK_ST__COUNT; i++)
        sk_buf_appendf(b, "%s: %llu\n", sk_stat_names[i], (unsigned long long)stat_total(i));
    for (size_t k = 0; k < cls->n; k++) {
        struct sk_cluster_state *cs = cls->v[k];
#define C(field, gauge, help)                                                                      \
    sk_buf_appendf(b, "cluster.%s." #field ": %lld\n", cs->name, (long long)atomic_load(&cs->field));
        C(upstream_rq_2xx, 0, "")
        C(upstream_rq_3xx, 0, "")
        C(upstream_rq_4xx, 0, "")
        C(upstream_rq_5xx, 0, "")
        CL_FIELDS(C)
#undef C
    }
    sk_tls_stats(b, false);
    sk_filters_stats(b, false);
    sk_toxics_stats(b, false);
    sk_scopes_plain(b);
    sk_xds_stats(b, false);
}

static void hist_plain(struct sk_buf *b, const char *prefix, const char *name,
                       const struct sk_hist_snap *s)
{
    sk_buf_appendf(b, "%s%s.count: %llu\n", prefix, name, (unsigned long long)s->count);
    sk_buf_appendf(b, "%s%s.sum_us: %llu\n", prefix, name, (unsigned long long)s->sum_us);
    static const struct {
        const char *n;
        double q;
    } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}};
    for (size_t i = 0; i < 3; i++)
        sk_buf_appendf(b, "%s%s.%s_us: %.0f\n", prefix, name, qs[i].n,
                       sk_hist_quantile_us(s, qs[i].q));
}

/* buckets: also the non-empty buckets as [lower_us, upper_us|null, count], so a
 * client (the dashboard) can compute quantiles over an interval from deltas */
static void hist_json(struct sk_buf *b, const struct sk_hist_snap *s, bool buckets)
{
    sk_buf_appendf(b, "{\"count\": %llu, \"sum_us\": %llu, \"p50_us\": %.0f, \"p90_us\": %.0f, "
                      "\"p99_us\": %.0f",
                   (unsigned long long)s->count, (unsigned long long)s->sum_us,
                   sk_hist_quantile_us(s, 0.5), sk_hist_quantile_us(s, 0.9),
                   sk_hist_quantile_us(s, 0.99));
    if (buckets) {
        LIT(b, ", \"buckets\": [");
        bool first = true;
        for (unsigned i = 0; i < SK_HIST_NB; i++) {
            if (!s->b[i])
                continue;
            if (i == SK_HIST_OVERFLOW)
                sk_buf_appendf(b, "%s[%llu, null, %llu]", first ? "" : ", ",
                               (unsigned long long)sk_hist_lower(i), (unsigned long long)s->b[i]);
            else
                sk_buf_appendf(b, "%s[%llu, %llu, %llu]", first ? "" : ", ",
                               (unsigned long long)sk_hist_lower(i),
                               (unsigned long long)sk_hist_upper(i), (unsigned long long)s->b[i]);
            first = false;
        }
        LIT(b, "]");
    }
    LIT(b, "}");
}

static void server_plain(struct sk_buf *b)
{
    struct proc_info p;
    proc_info(&p);
    sk_buf_appendf(b, "server.uptime_seconds: %lld\n", (long long)(mono_now() - A.started_mono));
    sk_buf_appendf(b, "server.config_version: %llu\n",
                   (unsigned long long)(A.hooks.config_version ? A.hooks.config_version() : 0));
    sk_buf_appendf(b, "server.concurrency: %d\n", sk_nworkers);
    sk_buf_appendf(b, "server.memory_resident: %llu\n", (unsigned long long)p.rss);
    sk_buf_appendf(b, "server.open_fds: %ld\n", p.open_fds);
    sk_buf_appendf(b, "server.live: %d\n", A.hooks.ready && A.hooks.ready() ? 1 : 0);
}

static void stats_plain(struct sk_buf *b)
{
    struct cl_list cls;
    cl_collect(&cls);
    counters_plain(b, &cls);
    server_plain(b);
    struct hists H;
    hists_collect(&H, &cls);
    hist_plain(b, "", "downstream_rq_time", &H.down);
    hist_plain(b, "", "upstream_rq_time", &H.up);
    char pre[512];
    for (size_t k = 0; k < H.ncl; k++) {
        if (!H.cl[k].count)
            continue;
        snprintf(pre, sizeof(pre), "cluster.%s.", cls.v[k]->name);
        hist_plain(b, pre, "upstream_rq_time", &H.cl[k]);
    }
    hists_free(&H);
    cl_free(&cls);
}

/* Convert "name: value" lines into JSON members (numbers stay numbers). */
static void plain_to_json(struct sk_buf *out, const char *p, size_t n)
{
    const char *end = p + n;
    bool first = true;
    char key[1024];
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *sep = NULL;
        for (const char *s = le - 1; s > p; s--)
            if (s[0] == ' ' && s[-1] == ':') {
                sep = s - 1;
                break;
            }
        if (sep && (size_t)(sep - p) < sizeof(key)) {
            memcpy(key, p, (size_t)(sep - p));
            key[sep - p] = 0;
            const char *v = sep + 2;
            size_t vl = (size_t)(le - v);
            bool num = vl > 0 && vl < 24;
            for (size_t i = 0; i < vl && num; i++)
                num = (v[i] >= '0' && v[i] <= '9') || (i == 0 && v[i] == '-' && vl > 1);
            if (!first)
                LIT(out, ",\n");
            first = false;
            json_str(out, key);
            LIT(out, ": ");
            if (num) {
                sk_buf_append(out, v, vl);
            } else {
                char val[1024];
                size_t m = vl < sizeof(val) - 1 ? vl : sizeof(val) - 1;
                memcpy(val, v, m);
                val[m] = 0;
                json_str(out, val);
            }
        }
        p = le + 1;
    }
}

static void stats_json(struct sk_buf *b)
{
    struct cl_list cls;
    cl_collect(&cls);
    struct sk_buf tmp;
    sk_buf_init(&tmp, ADMIN_OUT_MAX);
    counters_plain(&tmp, &cls);
    server_plain(&tmp);
    LIT(b, "{\"stats\": {\n");
    plain_to_json(b, sk_buf_rptr(&tmp), sk_buf_used(&tmp));
    sk_buf_free(&tmp);
    struct hists H;
    hists_collect(&H, &cls);
    LIT(b, "},\n\"histograms\": {\"downstream_rq_time\": ");
    hist_json(b, &H.down, true);
    LIT(b, ",\n\"upstream_rq_time\": ");
    hist_json(b, &H.up, true);
    LIT(b, ",\n\"clusters\": {");
    bool firstcl = true;
    for (size_t k = 0; k < H.ncl; k++) {
        if (!H.cl[k].count)
            continue;
        if (!firstcl)
            LIT(b, ",\n");
        firstcl = false;
        json_str(b, cls.v[k]->name);
        LIT(b, ": {\"upstream_rq_time\": ");
        hist_json(b, &H.cl[k], false);
        LIT(b, "}");
    }
    LIT(b, "}},\n");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sk_buf_appendf(b, "\"server\": {\"state\": ");
    json_str(b, A.hooks.state ? A.hooks.state() : "");
    sk_buf_appendf(b, ", \"version\": \"skiff/0.1.0\", \"time_ms\": %lld, \"workers\": %d}}\n",
                   (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, sk_nworkers);
    hists_free(&H);
    cl_free(&cls);
}

/* ---- Prometheus -------------------------------------------------------------------- */

static void prom_family(struct sk_buf *b, const char *name, const char *type, const char *help)
{
    sk_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* le edges in microseconds, and their text in seconds */
static const struct {
    uint64_t us;
    const char *s;
} le_edges[] = {
    {100, "0.0001"}, {250, "0.00025"}, {500, "0.0005"},    {1000, "0.001"},   {2500, "0.0025"},
    {5000, "0.005"}, {10000, "0.01"},  {25000, "0.025"},   {50000, "0.05"},   {100000, "0.1"},
    {250000, "0.25"}, {500000, "0.5"}, {1000000, "1"},     {2500000, "2.5"},  {5000000, "5"},
    {10000000, "10"}, {30000000, "30"}, {60000000, "60"},
};

static void prom_hist(struct sk_buf *b, const char *name, const char *cluster,
                      const struct sk_hist_snap *s)
{
    /* cumulative counts at every edge in one pass over the buckets */
    uint64_t cum[sizeof(le_edges) / sizeof(le_edges[0])];
    uint64_t acc = 0;
    size_t e = 0;
    for (unsigned i = 0; i < SK_HIST_NB && e < sizeof(cum) / sizeof(cum[0]); i++) {
        uint64_t lo = sk_hist_lower(i);
        while (e < sizeof(cum) / sizeof(cum[0]) && le_edges[e].us <= lo)
            cum[e++] = acc;
        acc += s->b[i];
    }
    while (e < sizeof(cum) / sizeof(cum[0]))
        cum[e++] = acc;
    for (size_t i = 0; i < sizeof(le_edges) / sizeof(le_edges[0]); i++) {
        sk_buf_appendf(b, "%s_bucket{", name);
        if (cluster) {
            LIT(b, "cluster=\"");
            prom_label(b, cluster);
            LIT(b, "\",");
        }
        sk_buf_appendf(b, "le=\"%s\"} %llu\n", le_edges[i].s, (unsigned long long)cum[i]);
    }
    sk_buf_appendf(b, "%s_bucket{", name);
    if (cluster) {
        LIT(b, "cluster=\"");
        prom_label(b, cluster);
        LIT(b, "\",");
    }
    sk_buf_appendf(b, "le=\"+Inf\"} %llu\n", (unsigned long long)s->count);
    const char *suffix[2] = {"_sum", "_count"};
    for (int k = 0; k < 2; k++) {
        sk_buf_appendf(b, "%s%s", name, suffix[k]);
        if (cluster) {
            LIT(b, "{cluster=\"");
            prom_label(b, cluster);
            LIT(b, "\"}");
        }
        if (k == 0)
            sk_buf_appendf(b, " %.6f\n", (double)s->sum_us / 1e6);
        else
            sk_buf_appendf(b, " %llu\n", (unsigned long long)s->count);
    }
}

/* Other modules render "# TYPE x counter" + samples: give each family a HELP
 * line and the _total suffix counters should have. */
static void prom_rewrite(struct sk_buf *out, const char *p, size_t n)
{
    const char *end = p + n;
    char fam[256] = "", ren[300] = "";
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t ll = (size_t)(le - p);
        if (ll > 7 && memcmp(p, "# TYPE ", 7) == 0) {
            const char *nm = p + 7;
            const char *sp = memchr(nm, ' ', (size_t)(le - nm));
            if (sp && (size_t)(sp - nm) < sizeof(fam)) {
                memcpy(fam, nm, (size_t)(sp - nm));
                fam[sp - nm] = 0;
                const char *type = sp + 1;
                bool counter = (size_t)(le - type) == 7 && memcmp(type, "counter", 7) == 0;
                snprintf(ren, sizeof(ren), "%s%s", fam,
                         counter && !ends_with(fam, "_total") ? "_total" : "");
                sk_buf_appendf(out, "# HELP %s skiff %s\n# TYPE %s %.*s\n", ren, fam + 6, ren,
                               (int)(le - type), type);
            }
        } else if (ll && p[0] != '#') {
            size_t fl = strlen(fam);
            if (fl && ll > fl && memcmp(p, fam, fl) == 0 && (p[fl] == '{' || p[fl] == ' ')) {
                sk_buf_append(out, ren, strlen(ren));
                sk_buf_append(out, p + fl, ll - fl);
            } else {
                sk_buf_append(out, p, ll);
            }
            LIT(out, "\n");
        }
        p = le + 1;
    }
}

static void stats_prom(struct sk_buf *b)
{
    struct cl_list cls;
    cl_collect(&cls);
    char name[256];
    /* worker counters */
    for (int i = 0; i < SK_ST__COUNT; i++) {
        if (stat_code_class(i))
            continue;
        const char *n = sk_stat_names[i];
        bool gauge = stat_is_gauge(n);
        snprintf(name, sizeof(name), "skiff_%s%s", n, gauge || ends_with(n, "_total") ? "" : "_total");
        const char *h = help_for(n);
        char hb[300];
        if (!h) {
            snprintf(hb, sizeof(hb), "skiff %s.", n);
            h = hb;
        }
        prom_family(b, name, gauge ? "gauge" : "counter", h);
        sk_buf_appendf(b, "%s %llu\n", name, (unsigned long long)stat_total(i));
    }
    static const char *const classes[] = {"", "1xx", "2xx", "3xx", "4xx", "5xx"};
    prom_family(b, "skiff_downstream_rq_xx_total", "counter",
                "Downstream responses by status class.");
    for (int i = 0; i < SK_ST__COUNT; i++)
        if (stat_code_class(i) && strncmp(sk_stat_names[i], "downstream", 10) == 0)
            sk_buf_appendf(b, "skiff_downstream_rq_xx_total{code_class=\"%s\"} %llu\n",
                           classes[stat_code_class(i)], (unsigned long long)stat_total(i));
    prom_family(b, "skiff_upstream_rq_xx_total", "counter", "Upstream responses by status class.");
    for (int i = 0; i < SK_ST__COUNT; i++)
        if (stat_code_class(i) && strncmp(sk_stat_names[i], "upstream", 8) == 0)
            sk_buf_appendf(b, "skiff_upstream_rq_xx_total{code_class=\"%s\"} %llu\n",
                           classes[stat_code_class(i)], (unsigned long long)stat_total(i));

    /* per cluster: one family per field, every cluster inside it */
    prom_family(b, "skiff_cluster_upstream_rq_xx_total", "counter",
                "Upstream responses by cluster and status class.");
    for (size_t k = 0; k < cls.n; k++) {
        struct sk_cluster_state *cs = cls.v[k];
        uint64_t v[4] = {atomic_load(&cs->upstream_rq_2xx), atomic_load(&cs->upstream_rq_3xx),
                         atomic_load(&cs->upstream_rq_4xx), atomic_load(&cs->upstream_rq_5xx)};
        for (int c = 0; c < 4; c++) {
            LIT(b, "skiff_cluster_upstream_rq_xx_total{cluster=\"");
            prom_label(b, cs->name);
            sk_buf_appendf(b, "\",code_class=\"%s\"} %llu\n", classes[c + 2],
                           (unsigned long long)v[c]);
        }
    }
#define C(field, gauge, help)                                                                      \
    do {                                                                                           \
        snprintf(name, sizeof(name), "skiff_cluster_%s%s", #field,                                 \
                 (gauge) || ends_with(#field, "_total") ? "" : "_total");                          \
        prom_family(b, name, (gauge) ? "gauge" : "counter", help);                                 \
        for (size_t k = 0; k < cls.n; k++) {                                                       \
            sk_buf_appendf(b, "%s{cluster=\"", name);                                              \
            prom_label(b, cls.v[k]->name);                                                         \
            sk_buf_appendf(b, "\"} %lld\n", (long long)atomic_load(&cls.v[k]->field));             \
        }                                                                                          \
    } while (0);
    CL_FIELDS(C)
#undef C
    sk_scopes_prom(b); /* listener / http / vhost scopes */
    /* membership and breaker headroom */
    int64_t now = sk_now_ms();
    prom_family(b, "skiff_cluster_hosts", "gauge", "Hosts known for the cluster.");
    struct {
        size_t total, healthy;
    } *mem = calloc(cls.n ? cls.n : 1, sizeof(*mem));
    for (size_t k = 0; k < cls.n && mem; k++) {
        struct sk_cluster_state *cs = cls.v[k];
        sk_cstate_lock_hosts(cs);
        for (struct sk_host_state *h = cs->hosts; h; h = h->next) {
            mem[k].total++;
            mem[k].healthy += sk_hstate_usable(h, now);
        }
        sk_cstate_unlock_hosts(cs);
        if (mem[k].total == 0) /* no host states yet: the configured hosts, all usable */
            mem[k].total = mem[k].healthy = cfg_hosts(cls.cfg[k], NULL, NULL);
        LIT(b, "skiff_cluster_hosts{cluster=\"");
        prom_label(b, cs->name);
        sk_buf_appendf(b, "\"} %zu\n", mem[k].total);
    }
    prom_family(b, "skiff_cluster_hosts_healthy", "gauge",
                "Hosts usable now (not ejected, not failing active health checks).");
    for (size_t k = 0; k < cls.n && mem; k++) {
        LIT(b, "skiff_cluster_hosts_healthy{cluster=\"");
        prom_label(b, cls.v[k]->name);
        sk_buf_appendf(b, "\"} %zu\n", mem[k].healthy);
    }
    free(mem);
    prom_family(b, "skiff_cluster_circuit_breaker_remaining_rq", "gauge",
                "Requests the max_requests breaker still admits.");
    for (size_t k = 0; k < cls.n; k++) {
        long long rem = (long long)cls.cfg[k]->cb.max_requests -
                        (long long)atomic_load(&cls.v[k]->rq_active);
        LIT(b, "skiff_cluster_circuit_breaker_remaining_rq{cluster=\"");
        prom_label(b, cls.v[k]->name);
        sk_buf_appendf(b, "\"} %lld\n", rem > 0 ? rem : 0);
    }

    /* histograms */
    struct hists H;
    hists_collect(&H, &cls);
    prom_family(b, "skiff_downstream_rq_time_seconds", "histogram",
                "Downstream request duration, request start to stream end.");
    prom_hist(b, "skiff_downstream_rq_time_seconds", NULL, &H.down);
    prom_family(b, "skiff_upstream_rq_time_seconds", "histogram",
                "Upstream time to the response head, by cluster (includes retries).");
    for (size_t k = 0; k < H.ncl; k++) /* clusters that never answered have no series yet */
        if (H.cl[k].count)
            prom_hist(b, "skiff_upstream_rq_time_seconds", cls.v[k]->name, &H.cl[k]);
    prom_family(b, "skiff_upstream_rq_time_untracked_total", "counter",
                "Upstream timings not kept per cluster (per-worker cluster table full).");
    sk_buf_appendf(b, "skiff_upstream_rq_time_untracked_total %llu\n",
                   (unsigned long long)H.skipped);
    hists_free(&H);
    cl_free(&cls);

    /* modules that render their own families */
    struct sk_buf tmp;
    sk_buf_init(&tmp, ADMIN_OUT_MAX);
    sk_tls_stats(&tmp, true);
    sk_filters_stats(&tmp, true);
    sk_toxics_stats(&tmp, true);
    sk_xds_stats(&tmp, true);
    prom_rewrite(b, sk_buf_rptr(&tmp), sk_buf_used(&tmp));
    sk_buf_free(&tmp);

    /* process and server */
    struct proc_info p;
    proc_info(&p);
    prom_family(b, "skiff_process_resident_memory_bytes", "gauge", "Resident set size.");
    sk_buf_appendf(b, "skiff_process_resident_memory_bytes %llu\n", (unsigned long long)p.rss);
    prom_family(b, "skiff_process_virtual_memory_bytes", "gauge", "Virtual memory size.");
    sk_buf_appendf(b, "skiff_process_virtual_memory_bytes %llu\n", (unsigned long long)p.vsz);
    prom_family(b, "skiff_process_cpu_seconds_total", "counter", "User and system CPU time.");
    sk_buf_appendf(b, "skiff_process_cpu_seconds_total %.3f\n", p.cpu_s);
    prom_family(b, "skiff_process_open_fds", "gauge", "Open file descriptors.");
    sk_buf_appendf(b, "skiff_process_open_fds %ld\n", p.open_fds);
    if (p.max_fds > 0) {
        prom_family(b, "skiff_process_max_fds", "gauge", "File descriptor limit.");
        sk_buf_appendf(b, "skiff_process_max_fds %ld\n", p.max_fds);
    }
    prom_family(b, "skiff_process_start_time_seconds", "gauge",
                "Start time of the process, seconds since the Unix epoch.");
    sk_buf_appendf(b, "skiff_process_start_time_seconds %.3f\n", A.started_wall);
    prom_family(b, "skiff_process_uptime_seconds", "gauge", "Seconds since the process started.");
    sk_buf_appendf(b, "skiff_process_uptime_seconds %.3f\n", mono_now() - A.started_mono);
    prom_family(b, "skiff_config_version", "gauge", "Version of the serving configuration.");
    sk_buf_appendf(b, "skiff_config_version %llu\n",
                   (unsigned long long)(A.hooks.config_version ? A.hooks.config_version() : 0));
    prom_family(b, "skiff_workers", "gauge", "Worker threads.");
    sk_buf_appendf(b, "skiff_workers %d\n", sk_nworkers);
    prom_family(b, "skiff_server_live", "gauge", "1 when /ready answers 200.");
    sk_buf_appendf(b, "skiff_server_live %d\n",
                   A.hooks.ready && A.hooks.ready() && !A.forced_fail ? 1 : 0);
    prom_family(b, "skiff_build_info", "gauge", "Build information (always 1).");
    sk_buf_appendf(b, "skiff_build_info{version=\"0.1.0\"} 1\n");
}

/* ---- /clusters ------------------------------------------------------------------------ */

/* Host states are created when a cluster's hosts are first needed (a worker
 * routes to it, health checks, outlier detection, DNS answers; issue 7). A
 * STATIC / EDS cluster without any lists the snapshot's endpoints instead,
 * with default state (healthy, not ejected, zero counters), in the order the
 * host states would have (newest first, each address once). Returns the
 * number of hosts; fn may be NULL (count only). */
static size_t cfg_hosts(const struct sk_cluster *c,
                        void (*fn)(struct sk_buf *b, const char *cl, const char *addr, bool first),
                        struct sk_buf *b)
{
    if (!c || (c->type != SK_CLUSTER_STATIC && c->type != SK_CLUSTER_EDS))
        return 0;
    size_t n = 0;
    for (size_t i = c->nendpoints; i-- > 0;) {
        const struct sk_endpoint *e = &c->endpoints[i];
        if (!sk_endpoint_has_addr(e))
            continue;
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++) {
            const struct sk_endpoint *o = &c->endpoints[j];
            dup = e->pipe ? o->pipe && e->pipe->len == o->pipe->len &&
                                memcmp(&e->pipe->ss, &o->pipe->ss, e->pipe->len) == 0
                          : !o->pipe && memcmp(&e->ip, &o->ip, sizeof(e->ip)) == 0;
        }
        if (dup)
            continue;
        if (fn) {
            struct sk_sockaddr a;
            char text[128];
            sk_endpoint_addr(e, &a);
            sk_addr_str(&a, text, sizeof(text));
            fn(b, c->name, text, n == 0);
        }
        n++;
    }
    return n;
}

static void cfg_host_text(struct sk_buf *b, const char *cl, const char *addr, bool first)
{
    (void)first;
    sk_buf_appendf(b,
                   "%s::%s::health_flags::healthy\n%s::%s::active_hc::unknown\n"
                   "%s::%s::ejections::0\n%s::%s::rq_active::0\n%s::%s::rq_total::0\n"
                   "%s::%s::rq_error::0\n%s::%s::success_rate::100.0\n"
                   "%s::%s::ewma_latency_us::0\n",
                   cl, addr, cl, addr, cl, addr, cl, addr, cl, addr, cl, addr, cl, addr, cl, addr);
}

static void cfg_host_json(struct sk_buf *b, const char *cl, const char *addr, bool first)
{
    (void)cl;
    (first ? LIT(b, "{\"address\": ") : LIT(b, ", {\"address\": "));
    json_str(b, addr);
    LIT(b, ", \"health_flags\": \"healthy\", \"active_hc\": \"unknown\", \"ejected\": false, "
           "\"ejected_for_ms\": 0, \"ejections\": 0, \"rq_active\": 0, "
           "\"rq_total\": 0, \"rq_error\": 0, \"success_rate\": 100.0, "
           "\"ewma_latency_us\": 0}");
}

#define REM(lim, used) ((long long)(lim) - (used) > 0 ? (long long)(lim) - (used) : 0)

static const char *host_flags(int hc, bool ejected)
{
    return hc == SK_HC_UNHEALTHY ? (ejected ? "/failed_active_hc/failed_outlier_check"
                                            : "/failed_active_hc")
           : ejected            ? "/failed_outlier_check"
                                : "healthy";
}

static void clusters_text(struct sk_buf *b)
{
    struct cl_list cls;
    cl_collect(&cls);
    int64_t now = sk_now_ms();
    for (size_t k = 0; k < cls.n; k++) {
        struct sk_cluster_state *cs = cls.v[k];
        const struct sk_circuit_breakers *cb = &cls.cfg[k]->cb;
        long long rq = (long long)atomic_load(&cs->rq_active),
                  cx = (long long)atomic_load(&cs->cx_active);
        long long pend = (long long)atomic_load(&cs->rq_pending),
                  rt = (long long)atomic_load(&cs->retries_active);
        sk_buf_appendf(b, "%s::default_priority::max_connections::%u\n", cs->name,
                       cb->max_connections);
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
        sk_cstate_lock_hosts(cs);
        for (struct sk_host_state *h = cs->hosts; h; h = h->next) {
            int hc = atomic_load(&h->hc_status);
            int64_t until = atomic_load(&h->ejected_until_ms);
            bool ejected = until != 0 && until > now;
            uint64_t tot = atomic_load(&h->rq_total), err = atomic_load(&h->rq_errors);
            sk_buf_appendf(b, "%s::%s::health_flags::%s\n", cs->name, h->addr_str,
                           host_flags(hc, ejected));
            sk_buf_appendf(b, "%s::%s::active_hc::%s\n", cs->name, h->addr_str,
                           hc == SK_HC_HEALTHY     ? "healthy"
                           : hc == SK_HC_UNHEALTHY ? "unhealthy"
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
        bool none = !cs->hosts;
        sk_cstate_unlock_hosts(cs);
        if (none)
            cfg_hosts(cls.cfg[k], cfg_host_text, b);
    }
    cl_free(&cls);
}

static void clusters_json(struct sk_buf *b)
{
    struct cl_list cls;
    cl_collect(&cls);
    int64_t now = sk_now_ms();
    LIT(b, "{\"clusters\": [");
    for (size_t k = 0; k < cls.n; k++) {
        struct sk_cluster_state *cs = cls.v[k];
        const struct sk_circuit_breakers *cb = &cls.cfg[k]->cb;
        long long rq = (long long)atomic_load(&cs->rq_active),
                  cx = (long long)atomic_load(&cs->cx_active);
        long long pend = (long long)atomic_load(&cs->rq_pending),
                  rt = (long long)atomic_load(&cs->retries_active);
        (k ? LIT(b, ",\n{\"name\": ") : LIT(b, "\n{\"name\": "));
        json_str(b, cs->name);
        sk_buf_appendf(b,
                       ", \"circuit_breakers\": {\"max_connections\": %u, "
                       "\"max_pending_requests\": %u, \"max_requests\": %u, \"max_retries\": %u, "
                       "\"cx_active\": %lld, \"rq_pending\": %lld, \"rq_active\": %lld, "
                       "\"retries_active\": %lld, \"remaining_cx\": %lld, "
                       "\"remaining_pending\": %lld, \"remaining_rq\": %lld, "
                       "\"remaining_retries\": %lld}",
                       cb->max_connections, cb->max_pending_requests, cb->max_requests,
                       cb->max_retries, cx, pend, rq, rt, REM(cb->max_connections, cx),
                       REM(cb->max_pending_requests, pend), REM(cb->max_requests, rq),
                       REM(cb->max_retries, rt));
        sk_buf_appendf(b,
                       ", \"stats\": {\"upstream_rq_total\": %llu, \"upstream_rq_5xx\": %llu, "
                       "\"upstream_rq_retry\": %llu, \"upstream_cx_connect_fail\": %llu, "
                       "\"outlier_ejections_total\": %llu, \"ejected_hosts\": %d}",
                       (unsigned long long)atomic_load(&cs->upstream_rq_total),
                       (unsigned long long)atomic_load(&cs->upstream_rq_5xx),
                       (unsigned long long)atomic_load(&cs->upstream_rq_retry),
                       (unsigned long long)atomic_load(&cs->upstream_cx_connect_fail),
                       (unsigned long long)atomic_load(&cs->outlier_ejections_total),
                       atomic_load(&cs->ejected_hosts));
        LIT(b, ", \"hosts\": [");
        sk_cstate_lock_hosts(cs);
        bool first = true;
        for (struct sk_host_state *h = cs->hosts; h; h = h->next) {
            int hc = atomic_load(&h->hc_status);
            int64_t until = atomic_load(&h->ejected_until_ms);
            bool ejected = until != 0 && until > now;
            uint64_t tot = atomic_load(&h->rq_total), err = atomic_load(&h->rq_errors);
            (first ? LIT(b, "{\"address\": ") : LIT(b, ", {\"address\": "));
            first = false;
            json_str(b, h->addr_str);
            sk_buf_appendf(b,
                           ", \"health_flags\": \"%s\", \"active_hc\": \"%s\", \"ejected\": %s, "
                           "\"ejected_for_ms\": %lld, \"ejections\": %u, \"rq_active\": %lld, "
                           "\"rq_total\": %llu, \"rq_error\": %llu, \"success_rate\": %.1f, "
                           "\"ewma_latency_us\": %llu}",
                           host_flags(hc, ejected),
                           hc == SK_HC_HEALTHY     ? "healthy"
                           : hc == SK_HC_UNHEALTHY ? "unhealthy"
                                                   : "unknown",
                           ejected ? "true" : "false", ejected ? (long long)(until - now) : 0LL,
                           atomic_load(&h->ejection_count), (long long)atomic_load(&h->active_rq),
                           (unsigned long long)tot, (unsigned long long)err,
                           tot ? 100.0 * (double)(tot - err) / (double)tot : 100.0,
                           (unsigned long long)atomic_load(&h->ewma_us));
        }
        sk_cstate_unlock_hosts(cs);
        if (first)
            cfg_hosts(cls.cfg[k], cfg_host_json, b);
        LIT(b, "]}");
    }
    LIT(b, "\n]}\n");
    cl_free(&cls);
}
#undef REM

/* ---- /listeners, /config_dump ------------------------------------------------------------ */

static void listeners_out(struct sk_buf *b, bool json)
{
    const struct sk_snapshot *s = A.hooks.snapshot ? A.hooks.snapshot() : NULL;
    bool draining = A.hooks.state && strcmp(A.hooks.state(), "DRAINING") == 0;
    if (json)
        LIT(b, "{\"listeners\": [");
    for (size_t i = 0; s && i < s->nlisteners; i++) {
        const struct sk_listener *l = &s->listeners[i];
        if (!json) {
            sk_buf_appendf(b, "%s::%s\n", l->name, l->addr_str ? l->addr_str : "");
            continue;
        }
        (i ? LIT(b, ", {\"name\": ") : LIT(b, "{\"name\": "));
        json_str(b, l->name);
        LIT(b, ", \"address\": ");
        json_str(b, l->addr_str);
        sk_buf_appendf(b, ", \"bind_to_port\": %s, \"draining\": %s}",
                       l->bind_to_port ? "true" : "false", draining ? "true" : "false");
    }
    if (json)
        LIT(b, "]}\n");
}

static const char *cluster_type_name(int t)
{
    switch (t) {
    case SK_CLUSTER_STATIC: return "STATIC";
    case SK_CLUSTER_STRICT_DNS: return "STRICT_DNS";
    case SK_CLUSTER_LOGICAL_DNS: return "LOGICAL_DNS";
    case SK_CLUSTER_EDS: return "EDS";
    }
    return "UNKNOWN";
}

static const char *lb_name(int p)
{
    switch (p) {
    case SK_LB_ROUND_ROBIN: return "ROUND_ROBIN";
    case SK_LB_LEAST_REQUEST: return "LEAST_REQUEST";
    case SK_LB_RING_HASH: return "RING_HASH";
    case SK_LB_RANDOM: return "RANDOM";
    case SK_LB_MAGLEV: return "MAGLEV";
    case SK_LB_PEAK_EWMA: return "PEAK_EWMA";
    }
    return "UNKNOWN";
}

static void json_ms(struct sk_buf *b, const char *key, uint64_t ms)
{
    sk_buf_appendf(b, ", \"%s\": ", key);
    if (ms == SK_DUR_NONE)
        LIT(b, "null");
    else
        sk_buf_appendf(b, "%llu", (unsigned long long)ms);
}

static void dump_routes(struct sk_buf *b, const struct sk_route_config *rc)
{
    LIT(b, "{\"name\": ");
    json_str(b, rc->name);
    LIT(b, ", \"virtual_hosts\": [");
    for (size_t v = 0; v < rc->nvhosts; v++) {
        const struct sk_vhost *vh = &rc->vhosts[v];
        (v ? LIT(b, ", {\"name\": ") : LIT(b, "{\"name\": "));
        json_str(b, vh->name);
        LIT(b, ", \"domains\": [");
        for (size_t d = 0; d < vh->ndomains; d++) {
            if (d)
                LIT(b, ", ");
            json_str(b, vh->domains[d]);
        }
        LIT(b, "], \"routes\": [");
        for (size_t r = 0; r < vh->nroutes; r++) {
            const struct sk_route *rt = &vh->routes[r];
            (r ? LIT(b, ", {") : LIT(b, "{"));
            LIT(b, "\"name\": ");
            json_str(b, rt->name);
            sk_buf_appendf(b, ", \"match\": {\"%s\": ",
                           rt->match.path_kind == SK_PATH_EXACT ? "path" : "prefix");
            json_str(b, rt->match.path);
            sk_buf_appendf(b, ", \"headers\": %zu}", rt->match.nheaders);
            switch (rt->action) {
            case SK_ROUTE_CLUSTER:
                LIT(b, ", \"cluster\": ");
                json_str(b, rt->cluster_name);
                json_ms(b, "timeout_ms", rt->timeout_ms);
                sk_buf_appendf(b, ", \"retries\": %u", rt->retry ? rt->retry->num_retries : 0);
                break;
            case SK_ROUTE_WEIGHTED:
                LIT(b, ", \"weighted_clusters\": [");
                for (size_t w = 0; w < rt->nweighted; w++) {
                    (w ? LIT(b, ", {\"name\": ") : LIT(b, "{\"name\": "));
                    json_str(b, rt->weighted[w].name);
                    sk_buf_appendf(b, ", \"weight\": %u}", rt->weighted[w].weight);
                }
                LIT(b, "]");
                json_ms(b, "timeout_ms", rt->timeout_ms);
                break;
            case SK_ROUTE_DIRECT:
                sk_buf_appendf(b, ", \"direct_response\": {\"status\": %u}", rt->direct_status);
                break;
            default:
                sk_buf_appendf(b, ", \"action\": %d", rt->action);
            }
            LIT(b, "}");
        }
        LIT(b, "]}");
    }
    LIT(b, "]}");
}

static void config_dump(struct sk_buf *b)
{
    const struct sk_snapshot *s = A.hooks.snapshot ? A.hooks.snapshot() : NULL;
    if (!s) {
        LIT(b, "{}\n");
        return;
    }
    sk_buf_appendf(b, "{\"version\": %llu, \"node\": {\"id\": ", (unsigned long long)s->version);
    json_str(b, s->node_id);
    LIT(b, ", \"cluster\": ");
    json_str(b, s->node_cluster);
    sk_buf_appendf(b, "}, \"xds\": {\"ads\": %s, \"lds\": %s, \"cds\": %s}",
                   s->xds.ads ? "true" : "false", s->xds.lds ? "true" : "false",
                   s->xds.cds ? "true" : "false");
    LIT(b, ",\n\"listeners\": [");
    for (size_t i = 0; i < s->nlisteners; i++) {
        const struct sk_listener *l = &s->listeners[i];
        (i ? LIT(b, ",\n{\"name\": ") : LIT(b, "\n{\"name\": "));
        json_str(b, l->name);
        LIT(b, ", \"address\": ");
        json_str(b, l->addr_str);
        sk_buf_appendf(b, ", \"bind_to_port\": %s, \"use_original_dst\": %s, \"filter_chains\": [",
                       l->bind_to_port ? "true" : "false", l->use_original_dst ? "true" : "false");
        for (size_t c = 0; c < l->nchains + (l->default_chain ? 1 : 0); c++) {
            const struct sk_filter_chain *fc = c < l->nchains ? &l->chains[c] : l->default_chain;
            (c ? LIT(b, ", {\"name\": ") : LIT(b, "{\"name\": "));
            json_str(b, fc->name);
            sk_buf_appendf(b, ", \"default\": %s, \"tls\": %s",
                           c >= l->nchains ? "true" : "false", fc->tls ? "true" : "false");
            if (fc->match.destination_port)
                sk_buf_appendf(b, ", \"destination_port\": %u", fc->match.destination_port);
            if (fc->match.nserver_names) {
                LIT(b, ", \"server_names\": [");
                for (size_t k = 0; k < fc->match.nserver_names; k++) {
                    if (k)
                        LIT(b, ", ");
                    json_str(b, fc->match.server_names[k]);
                }
                LIT(b, "]");
            }
            if (fc->kind == SK_CHAIN_HCM && fc->hcm) {
                const struct sk_hcm *h = fc->hcm;
                LIT(b, ", \"http_connection_manager\": {\"stat_prefix\": ");
                json_str(b, h->stat_prefix);
                sk_buf_appendf(b, ", \"http_filters\": %zu, \"access_logs\": %zu",
                               h->nfilters + 1, h->naccess_logs);
                if (h->rds_name) {
                    LIT(b, ", \"rds\": ");
                    json_str(b, h->rds_name);
                }
                if (h->routes) {
                    LIT(b, ", \"route_config\": ");
                    dump_routes(b, h->routes);
                }
                LIT(b, "}");
            } else if (fc->kind == SK_CHAIN_TCP && fc->tcp) {
                LIT(b, ", \"tcp_proxy\": {\"cluster\": ");
                json_str(b, fc->tcp->cluster_name);
                LIT(b, "}");
            }
            LIT(b, "}");
        }
        LIT(b, "]}");
    }
    LIT(b, "],\n\"clusters\": [");
    for (size_t i = 0; i < s->nclusters; i++) {
        const struct sk_cluster *c = &s->clusters[i];
        (i ? LIT(b, ",\n{\"name\": ") : LIT(b, "\n{\"name\": "));
        json_str(b, c->name);
        sk_buf_appendf(b, ", \"type\": \"%s\", \"lb_policy\": \"%s\"", cluster_type_name(c->type),
                       lb_name(c->lb_policy));
        json_ms(b, "connect_timeout_ms", c->connect_timeout_ms);
        sk_buf_appendf(b,
                       ", \"http2\": %s, \"tls\": %s, \"outlier_detection\": %s, "
                       "\"health_checks\": %zu, \"circuit_breakers\": {\"max_connections\": %u, "
                       "\"max_pending_requests\": %u, \"max_requests\": %u, \"max_retries\": %u}",
                       c->upstream_proto == SK_UP_HTTP2 ? "true" : "false",
                       c->tls ? "true" : "false", c->outlier ? "true" : "false",
                       c->health_checks ? c->health_checks->n : 0, c->cb.max_connections,
                       c->cb.max_pending_requests, c->cb.max_requests, c->cb.max_retries);
        LIT(b, ", \"endpoints\": [");
        for (size_t e = 0; e < c->nendpoints; e++) {
            const struct sk_endpoint *ep = &c->endpoints[e];
            (e ? LIT(b, ", {\"address\": ") : LIT(b, "{\"address\": "));
            json_str(b, ep->host);
            sk_buf_appendf(b, ", \"port\": %u, \"weight\": %u, \"priority\": %u, \"health\": %d}",
                           ep->port, ep->weight, ep->priority, ep->health);
        }
        LIT(b, "]}");
    }
    LIT(b, "\n]");
    sk_xds_config_dump(b); /* xDS resources: versions, update times, NACKs */
    LIT(b, "}\n");
}

/* ---- /memory ---------------------------------------------------------------------------- */

static void memory_json(struct sk_buf *b)
{
    struct proc_info p;
    proc_info(&p);
    struct mallinfo2 mi = mallinfo2();
    sk_buf_appendf(b,
                   "{\"resident_bytes\": %llu, \"virtual_bytes\": %llu, \"peak_resident_bytes\": "
                   "%llu, \"allocated_bytes\": %zu, \"mallinfo2\": {\"arena\": %zu, \"ordblks\": "
                   "%zu, \"smblks\": %zu, \"hblks\": %zu, \"hblkhd\": %zu, \"usmblks\": %zu, "
                   "\"fsmblks\": %zu, \"uordblks\": %zu, \"fordblks\": %zu, \"keepcost\": %zu}}\n",
                   (unsigned long long)p.rss, (unsigned long long)p.vsz,
                   (unsigned long long)p.hwm, mi.uordblks + mi.hblkhd, mi.arena, mi.ordblks,
                   mi.smblks, mi.hblks, mi.hblkhd, mi.usmblks, mi.fsmblks, mi.uordblks,
                   mi.fordblks, mi.keepcost);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static void handle(struct admin_conn *c, const struct sk_h1_msg *m)
{
    const char *path = m->target;
    size_t pl = m->target_len;
    const char *q = memchr(path, '?', pl);
    size_t ql = 0;
    if (q) {
        ql = pl - (size_t)(q - path) - 1;
        pl = (size_t)(q - path);
        q++;
    } else {
        q = "";
    }
    bool get = m->method_len == 3 && memcmp(m->method, "GET", 3) == 0;
    bool head = m->method_len == 4 && memcmp(m->method, "HEAD", 4) == 0;
    bool post = m->method_len == 4 && memcmp(m->method, "POST", 4) == 0;
    bool json = qis(q, ql, "format", "json");
    c->head = head;
    struct sk_buf b;
#define IS(p) (pl == sizeof(p) - 1 && memcmp(path, p, pl) == 0)
#define READ_ONLY()                                                                                \
    do {                                                                                           \
        if (!get && !head) {                                                                       \
            reply(c, 405, "text/plain", "use GET\n", 8);                                           \
            return;                                                                                \
        }                                                                                          \
        sk_buf_init(&b, ADMIN_OUT_MAX);                                                            \
    } while (0)
#define MUTATING()                                                                                 \
    do {                                                                                           \
        if (!post) {                                                                               \
            reply(c, 405, "text/plain", "use POST\n", 9);                                          \
            return;                                                                                \
        }                                                                                          \
    } while (0)
    /* endpoints of other modules (e.g. /chaos/...), by path prefix */
    for (size_t i = 0; i < A.nhandlers; i++) {
        size_t hl = strlen(A.handlers[i].prefix);
        if (pl >= hl && memcmp(path, A.handlers[i].prefix, hl) == 0 &&
            (pl == hl || path[hl] == '/')) {
            const char *ct = "application/json";
            sk_buf_init(&b, ADMIN_OUT_MAX);
            int st = A.handlers[i].fn(m->method, m->method_len, path, pl, q, ql, c->body,
                                      c->body_len, &b, &ct);
            reply_buf(c, st, ct, &b);
            return;
        }
    }
    if (IS("/ready")) {
        READ_ONLY();
        bool ok = A.hooks.ready() && !A.forced_fail;
        const char *s = A.forced_fail ? "FAILED" : A.hooks.state();
        sk_buf_appendf(&b, "%s\n", s);
        reply_buf(c, ok ? 200 : 503, "text/plain", &b);
    } else if (IS("/healthz")) {
        READ_ONLY();
        LIT(&b, "OK\n");
        reply_buf(c, 200, "text/plain", &b);
    } else if (IS("/stats")) {
        READ_ONLY();
        if (json) {
            stats_json(&b);
            reply_buf(c, 200, "application/json", &b);
        } else {
            stats_plain(&b);
            reply_buf(c, 200, "text/plain", &b);
        }
    } else if (IS("/stats/prometheus")) {
        READ_ONLY();
        stats_prom(&b);
        reply_buf(c, 200, "text/plain; version=0.0.4; charset=utf-8", &b);
    } else if (IS("/clusters")) {
        READ_ONLY();
        if (json) {
            clusters_json(&b);
            reply_buf(c, 200, "application/json", &b);
        } else {
            clusters_text(&b);
            reply_buf(c, 200, "text/plain", &b);
        }
    } else if (IS("/listeners")) {
        READ_ONLY();
        listeners_out(&b, json);
        reply_buf(c, 200, json ? "application/json" : "text/plain", &b);
    } else if (IS("/config_dump")) {
        READ_ONLY();
        config_dump(&b);
        reply_buf(c, 200, "application/json", &b);
    } else if (IS("/memory")) {
        READ_ONLY();
        memory_json(&b);
        reply_buf(c, 200, "application/json", &b);
    } else if (IS("/server_info")) {
        READ_ONLY();
        sk_buf_appendf(&b,
                       "{\"version\": \"skiff/0.1.0\", \"state\": \"%s\", "
                       "\"config_version\": %llu, \"uptime_seconds\": %lld, "
                       "\"concurrency\": %d}\n",
                       A.hooks.state(), (unsigned long long)A.hooks.config_version(),
                       (long long)(time(NULL) - A.started), sk_nworkers);
        reply_buf(c, 200, "application/json", &b);
    } else if (IS("/ui")) {
        READ_ONLY();
        sk_buf_free(&b);
        reply(c, 200, "text/html; charset=utf-8", sk_admin_ui_html, sk_admin_ui_html_len);
    } else if (IS("/logging")) {
        size_t vl;
        const char *lv = qparam(q, ql, "level", &vl);
        if (lv) {
            MUTATING();
            char name[16];
            int l = -1;
            if (vl < sizeof(name)) {
                memcpy(name, lv, vl);
                name[vl] = 0;
                l = sk_log_level_parse(name);
            }
            if (l < 0) {
                reply(c, 400, "text/plain", "unknown level (debug, info, warn, error)\n", 41);
                return;
            }
            sk_info("admin: log level %s -> %s", level_names[sk_log_level & 3], level_names[l]);
            sk_log_level = l;
        } else if (!get && !head && !post) {
            reply(c, 405, "text/plain", "use GET or POST\n", 16);
            return;
        }
        sk_buf_init(&b, 4096);
        sk_buf_appendf(&b, "level: %s\n", level_names[sk_log_level & 3]);
        reply_buf(c, 200, "text/plain", &b);
    } else if (IS("/quitquitquit")) {
        MUTATING();
        reply(c, 200, "text/plain", "OK\n", 3);
        A.hooks.quit();
    } else if (IS("/drain_listeners")) {
        MUTATING();
        if (A.hooks.drain_listeners)
            A.hooks.drain_listeners();
        reply(c, 200, "text/plain", "OK\n", 3);
    } else if (IS("/healthcheck/fail") || IS("/healthcheck/ok")) {
        MUTATING();
        A.forced_fail = IS("/healthcheck/fail");
        reply(c, 200, "text/plain", "OK\n", 3);
    } else if (IS("/")) {
        READ_ONLY();
        static const char idx[] =
            "skiff admin\n"
            "  GET  /ready              readiness (200 LIVE / 503)\n"
            "  GET  /healthz            liveness\n"
            "  GET  /stats              counters + histograms (?format=json)\n"
            "  GET  /stats/prometheus   Prometheus exposition\n"
            "  GET  /clusters           upstream hosts and breakers (?format=json)\n"
            "  GET  /listeners          listeners (?format=json)\n"
            "  GET  /config_dump        serving config (JSON)\n"
            "  GET  /server_info        version, state, uptime\n"
            "  GET  /memory             RSS and malloc statistics\n"
            "  GET  /logging            log level; POST /logging?level=debug|info|warn|error\n"
            "  GET  /ui                 live dashboard\n"
            "  POST /drain_listeners    stop accepting, keep running\n"
            "  POST /quitquitquit       drain and exit\n"
            "  POST /healthcheck/fail | /healthcheck/ok\n"
            "  GET|POST|DELETE /chaos/faults[/ID]  runtime chaos rules (JSON; kill switch: DELETE)\n";
        sk_buf_append(&b, idx, sizeof(idx) - 1);
        reply_buf(c, 200, "text/plain", &b);
    } else {
        reply(c, 404, "text/plain", "no such admin endpoint\n", 23);
    }
#undef IS
#undef READ_ONLY
#undef MUTATING
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
        size_t have = pr > 0 ? sk_buf_used(&c->in) - (size_t)pr : 0;
        if (pr < 0) {
            reply(c, 400, "text/plain", "bad request\n", 12);
        } else if (m.body_kind == SK_H1_BODY_CHUNKED) {
            reply(c, 411, "text/plain", "send the body with content-length\n", 34);
        } else if (m.body_kind == SK_H1_BODY_LENGTH && m.content_length > SK_ADMIN_BODY_MAX) {
            reply(c, 413, "text/plain", "request body too large (max 8192 bytes)\n", 40);
        } else if (m.body_kind == SK_H1_BODY_LENGTH && have < m.content_length) {
            if (r == SK_ERR_TOO_LARGE) {
                reply(c, 413, "text/plain", "request too large\n", 18);
            } else {
                if ((m.flags & SK_H1_F_EXPECT_CONTINUE) && !c->sent_continue) {
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    c->sent_continue = true;
                    if (send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL) < 0)
                        sk_debug("admin: 100 Continue not sent");
                }
                return; /* wait for the rest of the body */
            }
        } else {
            if (m.body_kind == SK_H1_BODY_LENGTH) {
                c->body = sk_buf_rptr(&c->in) + pr;
                c->body_len = (size_t)m.content_length;
            }
            handle(c, &m);
        }
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
        sk_buf_init(&c->in, ADMIN_IN_MAX + SK_ADMIN_BODY_MAX);
        sk_buf_init(&c->out, ADMIN_OUT_MAX);
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
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    A.started_wall = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    A.started_mono = mono_now();
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
