/* skiff: argv, start-up, signals, reload, drain. No protocol logic here. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "skiff/admin.h"
#include "skiff/hash.h"
#include "skiff/cfgerr.h"
#include "skiff/chaos.h"
#include "skiff/config.h"
#include "skiff/dns.h"
#include "skiff/err.h"
#include "skiff/h2_client.h"
#include "skiff/health.h"
#include "skiff/tls.h"
#include "skiff/hoststate.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/scope.h"
#include "skiff/worker.h"
#include "skiff/xds.h"

#define SKIFF_VERSION "0.1.0"

static struct {
    const char *config_path;
    const char *listen, *upstream, *admin;
    int concurrency;
    double drain_time_s;
    bool validate;
    const char *service_node, *service_cluster; /* xDS node overrides */
} opt = {.concurrency = 2, .drain_time_s = 5.0};

static struct ev_loop *main_loop;
static struct sk_snapshot *cur; /* main's reference to the serving snapshot */
static uint64_t next_version = 1;
static uint64_t initial_version;
static struct sk_bound_set bound;
static bool draining;
static ev_timer drain_poll, drain_deadline;
static ev_signal sig_hup, sig_term, sig_int;
static struct sk_ads *ads; /* xDS client (dynamic_resources.ads_config), else NULL */

/* ---- DNS clusters (main thread resolves, workers get host sets) --------- */

/* One entry per DNS cluster; every endpoint hostname is resolved each
 * refresh and the union of the answers becomes the cluster's host set
 * (STRICT_DNS). LOGICAL_DNS has one endpoint and uses its first address. */
struct dns_ctx;
struct dns_ep {
    char *host;
    uint16_t port;
    struct sk_dns_query *q;
    struct dns_ctx *ctx; /* owned while q is pending (a cancelled query never calls back) */
    struct sk_sockaddr *addrs; /* last good answer */
    size_t naddrs;
};

struct dns_cluster {
    struct dns_cluster *next;
    char *name;
    int family;
    int type;
    double refresh_s;
    ev_timer timer;
    struct dns_ep *eps;
    size_t neps;
    size_t pending;
    bool seen;
    char *sig; /* endpoints + family + type, to detect changes */
};
static struct sk_dns *dns;
static struct dns_cluster *dns_clusters;

static void post_hosts(const char *cluster, const struct sk_sockaddr *a, size_t n)
{
    for (int i = 0; i < sk_nworkers; i++) {
        struct sk_msg *m = calloc(1, sizeof(*m));
        if (!m)
            continue;
        m->kind = SK_MSG_HOSTS;
        m->cluster = strdup(cluster);
        m->naddrs = n;
        m->addrs = calloc(n ? n : 1, sizeof(*a));
        if (n && m->addrs)
            memcpy(m->addrs, a, n * sizeof(*a));
        sk_worker_post(&sk_workers[i], m);
    }
}

static void dns_start(struct dns_cluster *dc);

static void dns_publish(struct dns_cluster *dc)
{
    size_t total = 0;
    for (size_t i = 0; i < dc->neps; i++)
        total += dc->eps[i].naddrs;
    struct sk_sockaddr *all = calloc(total ? total : 1, sizeof(*all));
    if (!all)
        return;
    size_t n = 0;
    for (size_t i = 0; i < dc->neps; i++)
        for (size_t j = 0; j < dc->eps[i].naddrs; j++) {
            const struct sk_sockaddr *a = &dc->eps[i].addrs[j];
            bool dup = false;
            for (size_t k = 0; k < n && !dup; k++)
                dup = all[k].len == a->len && memcmp(&all[k].ss, &a->ss, a->len) == 0;
            if (!dup)
                all[n++] = *a;
        }
    if (dc->type == SK_CLUSTER_LOGICAL_DNS && n > 1)
        n = 1;
    sk_debug("dns: cluster %s: %zu host(s)", dc->name, n);
    post_hosts(dc->name, all, n);
    sk_health_set_hosts(dc->name, all, n);
    free(all);
}

struct dns_ctx {
    struct dns_cluster *dc;
    size_t idx;
};

static void dns_done(void *arg, int status, const struct sk_sockaddr *addrs, size_t n)
{
    struct dns_ctx *ctx = arg;
    struct dns_cluster *dc = ctx->dc;
    struct dns_ep *ep = &dc->eps[ctx->idx];
    free(ctx);
    ep->ctx = NULL;
    ep->q = NULL;
    if (status == 0) {
        struct sk_sockaddr *copy = calloc(n ? n : 1, sizeof(*copy));
        if (copy) {
            if (n)
                memcpy(copy, addrs, n * sizeof(*copy));
            free(ep->addrs);
            ep->addrs = copy;
            ep->naddrs = n;
        }
    } else {
        /* keep the last good answer, as Envoy does */
        sk_warn("dns: cluster %s: resolving %s failed: %s", dc->name, ep->host,
                sk_strerror(status));
    }
    if (dc->pending && --dc->pending == 0) {
        dns_publish(dc);
        ev_timer_set(&dc->timer, dc->refresh_s, 0.);
        ev_timer_start(main_loop, &dc->timer);
    }
}

static void dns_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    dns_start(t->data);
}

static void dns_start(struct dns_cluster *dc)
{
    if (dc->pending)
        return;
    for (size_t i = 0; i < dc->neps; i++) {
        struct dns_ctx *ctx = malloc(sizeof(*ctx));
        if (!ctx)
            continue;
        ctx->dc = dc;
        ctx->idx = i;
        if (sk_dns_resolve(dns, dc->eps[i].host, dc->eps[i].port, dc->family, dns_done, ctx,
                           &dc->eps[i].q) < 0) {
            sk_warn("dns: cluster %s: cannot resolve %s", dc->name, dc->eps[i].host);
            free(ctx);
            continue;
        }
        dc->eps[i].ctx = ctx;
        dc->pending++;
    }
    if (!dc->pending) {
        ev_timer_set(&dc->timer, dc->refresh_s, 0.);
        ev_timer_start(main_loop, &dc->timer);
    }
}

static void dns_free_one(struct dns_cluster *dc)
{
    for (size_t i = 0; i < dc->neps; i++) {
        /* a cancelled query never calls back: its context is ours to free */
        if (dc->eps[i].q) {
            sk_dns_cancel(dc->eps[i].q);
            free(dc->eps[i].ctx);
        }
        free(dc->eps[i].host);
        free(dc->eps[i].addrs);
    }
    free(dc->eps);
    ev_timer_stop(main_loop, &dc->timer);
    free(dc->name);
    free(dc->sig);
    free(dc);
}

static char *dns_sig(const struct sk_cluster *c)
{
    size_t len = 64;
    for (size_t i = 0; i < c->nendpoints; i++)
        len += strlen(c->endpoints[i].host) + 16;
    char *sig = malloc(len);
    if (!sig)
        return NULL;
    int o = snprintf(sig, len, "%d/%d", c->type, c->dns_lookup_family);
    for (size_t i = 0; i < c->nendpoints && o > 0 && (size_t)o < len; i++)
        o += snprintf(sig + o, len - (size_t)o, " %s:%u", c->endpoints[i].host,
                      c->endpoints[i].port);
    return sig;
}

/* Bring the resolvers in line with the snapshot (keep unchanged ones). */
static void dns_apply(const struct sk_snapshot *s)
{
    if (!dns) {
        struct sk_dns_opts o = {0};
        dns = sk_dns_new(main_loop, &o);
        if (!dns) {
            sk_error("dns: cannot create the resolver; DNS clusters will have no hosts");
            return;
        }
    }
    for (struct dns_cluster *dc = dns_clusters; dc; dc = dc->next)
        dc->seen = false;
    for (size_t i = 0; i < s->nclusters; i++) {
        const struct sk_cluster *c = &s->clusters[i];
        if (c->type != SK_CLUSTER_STRICT_DNS && c->type != SK_CLUSTER_LOGICAL_DNS)
            continue;
        if (c->nendpoints == 0)
            continue;
        char *sig = dns_sig(c);
        if (!sig)
            continue;
        struct dns_cluster *dc;
        for (dc = dns_clusters; dc; dc = dc->next)
            if (strcmp(dc->name, c->name) == 0)
                break;
        double refresh =
            c->dns_refresh_rate_ms == SK_DUR_NONE ? 5.0 : (double)c->dns_refresh_rate_ms / 1000.0;
        if (refresh < 0.05)
            refresh = 0.05;
        if (dc && strcmp(dc->sig, sig) == 0) {
            free(sig);
            dc->seen = true;
            dc->refresh_s = refresh;
            /* workers may have created a fresh runtime: re-post what we know
             * now, and refresh */
            dns_publish(dc);
            continue;
        }
        if (dc) {
            struct dns_cluster **pp = &dns_clusters;
            while (*pp != dc)
                pp = &(*pp)->next;
            *pp = dc->next;
            dns_free_one(dc);
        }
        dc = calloc(1, sizeof(*dc));
        if (!dc) {
            free(sig);
            continue;
        }
        dc->name = strdup(c->name);
        dc->sig = sig;
        dc->family = c->dns_lookup_family;
        dc->type = c->type;
        dc->refresh_s = refresh;
        dc->seen = true;
        dc->neps = c->nendpoints;
        dc->eps = calloc(dc->neps, sizeof(*dc->eps));
        for (size_t k = 0; dc->eps && k < dc->neps; k++) {
            dc->eps[k].host = strdup(c->endpoints[k].host);
            dc->eps[k].port = c->endpoints[k].port;
        }
        if (!dc->eps)
            dc->neps = 0;
        ev_init(&dc->timer, dns_timer_cb);
        dc->timer.data = dc;
        dc->next = dns_clusters;
        dns_clusters = dc;
        dns_start(dc);
    }
    struct dns_cluster **pp = &dns_clusters;
    while (*pp) {
        struct dns_cluster *dc = *pp;
        if (!dc->seen) {
            *pp = dc->next;
            dns_free_one(dc);
        } else {
            pp = &dc->next;
        }
    }
}

/* ---- outlier detection intervals (main thread) ---------------------------- */

struct od_timer {
    struct od_timer *next;
    char *name;
    ev_timer t;
    bool seen;
};
static struct od_timer *od_timers;

static struct dns_cluster *dns_find(const char *name)
{
    for (struct dns_cluster *dc = dns_clusters; dc; dc = dc->next)
        if (strcmp(dc->name, name) == 0)
            return dc;
    return NULL;
}

static void od_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct od_timer *ot = t->data;
    const struct sk_cluster *c = cur ? sk_snapshot_find_cluster(cur, ot->name) : NULL;
    if (!c || !c->outlier)
        return;
    struct sk_cluster_state *cs = sk_cstate_get(c->name);
    if (!cs)
        return;
    /* the cluster's current hosts: static endpoints or the DNS answers */
    size_t cap = c->nendpoints + 1;
    struct dns_cluster *dc = dns_find(c->name);
    if (dc)
        for (size_t i = 0; i < dc->neps; i++)
            cap += dc->eps[i].naddrs;
    struct sk_host_state **hs = calloc(cap, sizeof(*hs));
    if (!hs)
        return;
    size_t n = 0;
    if (dc) {
        for (size_t i = 0; i < dc->neps; i++)
            for (size_t j = 0; j < dc->eps[i].naddrs && n < cap; j++)
                hs[n++] = sk_hstate_get(cs, &dc->eps[i].addrs[j]);
    } else {
        for (size_t i = 0; i < c->nendpoints && n < cap; i++)
            if (sk_endpoint_has_addr(&c->endpoints[i])) {
                struct sk_sockaddr a;
                sk_endpoint_addr(&c->endpoints[i], &a);
                hs[n++] = sk_hstate_get(cs, &a);
            }
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (hs[i])
            hs[k++] = hs[i];
    sk_outlier_interval(cs, c->outlier, hs, k, sk_now_ms());
    free(hs);
}

/* One interval timer per cluster with outlier detection. A timer keeps running
 * across config updates unless its interval changed: restarting every timer on
 * each update (EDS pushes every few seconds are common) would keep success-rate
 * and failure-percentage detection from ever running. Timers are found through
 * a hash (thousands of clusters: no quadratic scan). */
static void od_apply(const struct sk_snapshot *s)
{
    size_t m = 0;
    for (struct od_timer *o = od_timers; o; o = o->next) {
        o->seen = false;
        m++;
    }
    size_t slots = 16;
    while (slots < m * 2)
        slots *= 2;
    struct od_timer **ix = m ? calloc(slots, sizeof(*ix)) : NULL;
    if (ix)
        for (struct od_timer *o = od_timers; o; o = o->next) {
            size_t k = sk_fnv1a_str(o->name) & (slots - 1);
            while (ix[k])
                k = (k + 1) & (slots - 1);
            ix[k] = o;
        }
    for (size_t i = 0; i < s->nclusters; i++) {
        const struct sk_cluster *c = &s->clusters[i];
        if (!c->outlier)
            continue;
        struct od_timer *o = NULL;
        if (ix) {
            for (size_t k = sk_fnv1a_str(c->name) & (slots - 1); ix[k]; k = (k + 1) & (slots - 1))
                if (strcmp(ix[k]->name, c->name) == 0) {
                    o = ix[k];
                    break;
                }
        } else {
            for (o = od_timers; o; o = o->next)
                if (strcmp(o->name, c->name) == 0)
                    break;
        }
        double iv = c->outlier->interval_ms ? (double)c->outlier->interval_ms / 1000.0 : 10.0;
        if (!o) {
            o = calloc(1, sizeof(*o));
            if (!o)
                continue;
            o->name = strdup(c->name);
            if (!o->name) {
                free(o);
                continue;
            }
            ev_init(&o->t, od_cb);
            o->t.data = o;
            o->next = od_timers;
            od_timers = o;
        }
        o->seen = true;
        if (!ev_is_active(&o->t) || o->t.repeat != iv) {
            ev_timer_stop(main_loop, &o->t);
            ev_timer_set(&o->t, iv, iv);
            ev_timer_start(main_loop, &o->t);
        }
    }
    free(ix);
    struct od_timer **pp = &od_timers;
    while (*pp) {
        struct od_timer *o = *pp;
        if (!o->seen) {
            *pp = o->next;
            ev_timer_stop(main_loop, &o->t);
            free(o->name);
            free(o);
        } else {
            pp = &o->next;
        }
    }
}

/* ---- config application ------------------------------------------------------ */

/* Bind what the snapshot needs and hand it to every worker. Takes the
 * caller's reference on success. */
static int publish(struct sk_snapshot *s)
{
    char err[512];
    struct sk_listen_fd **per = NULL;
    if (sk_bound_prepare(&bound, s, sk_nworkers, &per, err, sizeof(err)) < 0) {
        sk_error("config rejected: %s", err);
        return SK_ERR_IO;
    }
    s->version = next_version++;
    sk_scopes_attach(s); /* listener / http / vhost stats, before workers see s */
    for (int i = 0; i < sk_nworkers; i++) {
        struct sk_msg *m = calloc(1, sizeof(*m));
        m->kind = SK_MSG_CONFIG;
        m->snap = sk_snapshot_ref(s);
        m->lfds = per[i];
        m->nlfds = s->nlisteners;
        sk_worker_post(&sk_workers[i], m);
    }
    free(per);
    if (cur)
        sk_snapshot_unref(cur);
    cur = s;
    dns_apply(s);
    od_apply(s);
    sk_health_apply(main_loop, s);
    return 0;
}

static void reload(void)
{
    if (!opt.config_path) {
        sk_info("SIGHUP: no config file (quick mode); nothing to reload");
        return;
    }
    if (draining)
        return;
    if (ads) { /* rebuilt together with the xDS resources */
        sk_admin_count_reload(sk_ads_reload(ads) == 0);
        return;
    }
    struct sk_cfgerrs errs;
    sk_cfgerrs_init(&errs, opt.config_path);
    struct sk_snapshot *s = NULL;
    int r = sk_config_load_file(opt.config_path, &s, &errs);
    if (r < 0) {
        sk_error("reload of %s rejected (%zu error%s); the previous config keeps serving:",
                 opt.config_path, errs.n, errs.n == 1 ? "" : "s");
        for (size_t i = 0; i < errs.n; i++)
            sk_error("  %s:%d:%d: %s: %s", opt.config_path, errs.v[i].line, errs.v[i].col,
                     errs.v[i].path, errs.v[i].msg);
        sk_cfgerrs_free(&errs);
        sk_admin_count_reload(false);
        return;
    }
    sk_cfgerrs_free(&errs);
    if (publish(s) < 0) {
        sk_snapshot_unref(s);
        sk_admin_count_reload(false);
        return;
    }
    sk_admin_count_reload(true);
    sk_info("reloaded %s (config version %llu)", opt.config_path,
            (unsigned long long)cur->version);
}

/* The xDS client's way into the same publish() path as a reload. Takes the
 * reference on success; < 0 (e.g. a listener cannot be bound) leaves it. */
int sk_main_publish(struct sk_snapshot *s, const char *source);
int sk_main_publish(struct sk_snapshot *s, const char *source)
{
    if (draining || publish(s) < 0)
        return SK_ERR_IO;
    sk_info("%s: applied config version %llu", source, (unsigned long long)s->version);
    return 0;
}

/* ---- readiness, drain ------------------------------------------------------------ */

static bool is_ready(void)
{
    if (draining || !initial_version)
        return false;
    uint64_t need = initial_version;
    if (ads) { /* xDS warming: the first complete xDS config must be applied */
        uint64_t v = sk_ads_ready_version(ads);
        if (!v)
            return false;
        need = v > need ? v : need;
    }
    for (int i = 0; i < sk_nworkers; i++)
        if (atomic_load(&sk_workers[i].applied_version) < need)
            return false;
    return true;
}

static const char *state_name(void)
{
    return draining ? "DRAINING" : is_ready() ? "LIVE" : "INITIALIZING";
}

static uint64_t config_version(void)
{
    return cur ? cur->version : 0;
}

static const struct sk_snapshot *current_snapshot(void)
{
    return cur;
}

static void stop_all(void)
{
    for (int i = 0; i < sk_nworkers; i++) {
        struct sk_msg *m = calloc(1, sizeof(*m));
        m->kind = SK_MSG_STOP;
        sk_worker_post(&sk_workers[i], m);
    }
    ev_break(main_loop, EVBREAK_ALL);
}

static void drain_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    if (sk_workers_stat(SK_ST_downstream_cx_active) == 0) {
        sk_info("drain: no connections left");
        stop_all();
    }
}

static void drain_deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    uint64_t left = sk_workers_stat(SK_ST_downstream_cx_active);
    sk_info("drain: deadline reached with %llu connection(s) open; closing them",
            (unsigned long long)left);
    stop_all();
}

static bool exiting; /* start_drain ran (draining alone: POST /drain_listeners) */

static void start_drain(void)
{
    if (exiting)
        return;
    exiting = true;
    draining = true; /* a second SK_MSG_DRAIN after /drain_listeners is a no-op */
    sk_info("draining: stopped accepting; finishing in-flight requests (up to %.1fs)",
            opt.drain_time_s);
    for (int i = 0; i < sk_nworkers; i++) {
        struct sk_msg *m = calloc(1, sizeof(*m));
        m->kind = SK_MSG_DRAIN;
        sk_worker_post(&sk_workers[i], m);
    }
    ev_timer_init(&drain_poll, drain_poll_cb, 0.05, 0.05);
    ev_timer_start(main_loop, &drain_poll);
    ev_timer_init(&drain_deadline, drain_deadline_cb, opt.drain_time_s, 0.);
    ev_timer_start(main_loop, &drain_deadline);
}

/* Admin POST /drain_listeners: stop accepting everywhere, finish in-flight
 * work, keep the process (and admin) running. /ready turns 503; config
 * updates are refused from here on, as during a drain. */
static void drain_listeners(void)
{
    if (draining)
        return;
    draining = true;
    sk_info("admin: draining listeners (not accepting; the process keeps running)");
    for (int i = 0; i < sk_nworkers; i++) {
        struct sk_msg *m = calloc(1, sizeof(*m));
        m->kind = SK_MSG_DRAIN;
        sk_worker_post(&sk_workers[i], m);
    }
}

static void sig_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    if (s->signum == SIGHUP)
        reload();
    else
        start_drain();
}

/* ---- argv ---------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: skiff -c FILE [options]\n"
            "       skiff --listen IP:PORT --upstream IP:PORT [--admin IP:PORT] [options]\n"
            "       skiff --validate -c FILE\n"
            "       skiff chaos add|list|del|clear --admin IP:PORT ...  (skiff chaos --help)\n"
            "\n"
            "  -c, --config FILE      Envoy v3 bootstrap YAML\n"
            "      --validate         check the config, print every error, exit 0/1\n"
            "      --listen ADDR      quick mode: HTTP/1.1 listener (no config file)\n"
            "      --upstream ADDR    quick mode: the local service\n"
            "      --admin ADDR       admin listener (default: config's admin or 127.0.0.1:15000)\n"
            "      --concurrency N    worker threads (default 2)\n"
            "      --drain-time-s S   graceful drain time on SIGTERM/SIGINT (default 5)\n"
            "      --no-io-uring      one send(2) per connection: no batched sends through\n"
            "                         io_uring (used by default where the kernel allows it)\n"
            "      --service-node ID  xDS node id (overrides the bootstrap's node.id)\n"
            "      --service-cluster C  xDS node cluster (overrides node.cluster)\n"
            "  -l, --log-level L      debug|info|warn|error (default info)\n"
            "      --version\n"
            "\n"
            "Signals: SIGHUP reloads the config file; SIGTERM/SIGINT drain and exit.\n");
}

static int parse_args(int argc, char **argv)
{
    enum { O_VALIDATE = 256, O_LISTEN, O_UPSTREAM, O_ADMIN, O_CONC, O_DRAIN, O_VERSION,
           O_SNODE, O_SCLUSTER, O_NO_URING };
    static const struct option lo[] = {
        {"config", required_argument, 0, 'c'},
        {"validate", no_argument, 0, O_VALIDATE},
        {"listen", required_argument, 0, O_LISTEN},
        {"upstream", required_argument, 0, O_UPSTREAM},
        {"admin", required_argument, 0, O_ADMIN},
        {"concurrency", required_argument, 0, O_CONC},
        {"drain-time-s", required_argument, 0, O_DRAIN},
        {"no-io-uring", no_argument, 0, O_NO_URING},
        {"log-level", required_argument, 0, 'l'},
        {"version", no_argument, 0, O_VERSION},
        {"service-node", required_argument, 0, O_SNODE},
        {"service-cluster", required_argument, 0, O_SCLUSTER},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:l:h", lo, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'c': opt.config_path = optarg; break;
        case O_VALIDATE: opt.validate = true; break;
        case O_LISTEN: opt.listen = optarg; break;
        case O_UPSTREAM: opt.upstream = optarg; break;
        case O_ADMIN: opt.admin = optarg; break;
        case O_CONC:
            opt.concurrency = (int)strtol(optarg, &end, 10);
            if (*end || opt.concurrency < 1 || opt.concurrency > SK_MAX_WORKERS) {
                fprintf(stderr, "skiff: --concurrency must be 1..%d\n", SK_MAX_WORKERS);
                return -1;
            }
            break;
        case O_DRAIN:
            opt.drain_time_s = strtod(optarg, &end);
            if (*end || opt.drain_time_s < 0 || opt.drain_time_s > 3600) {
                fprintf(stderr, "skiff: --drain-time-s must be 0..3600\n");
                return -1;
            }
            break;
        case 'l': {
            int l = sk_log_level_parse(optarg);
            if (l < 0) {
                fprintf(stderr, "skiff: unknown log level '%s'\n", optarg);
                return -1;
            }
            sk_log_level = l;
            break;
        }
        case O_NO_URING: sk_workers_io_uring = false; break;
        case O_SNODE: opt.service_node = optarg; break;
        case O_SCLUSTER: opt.service_cluster = optarg; break;
        case O_VERSION: printf("skiff %s\n", SKIFF_VERSION); exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "skiff: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!opt.config_path && !(opt.listen && opt.upstream)) {
        usage(stderr);
        return -1;
    }
    if (opt.config_path && (opt.listen || opt.upstream)) {
        fprintf(stderr, "skiff: use either -c FILE or --listen/--upstream, not both\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "chaos") == 0)
        return sk_chaos_cli(argc - 1, argv + 1); /* admin API client, no proxy */
    if (parse_args(argc, argv) < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);

    /* TLS material is loaded (and checked) before a snapshot is accepted */
    sk_config_set_prepare_hook(sk_tls_prepare);
    struct sk_cfgerrs errs;
    sk_cfgerrs_init(&errs, opt.config_path ? opt.config_path : "<command line>");
    struct sk_snapshot *s = NULL;
    int r = opt.config_path ? sk_config_load_file(opt.config_path, &s, &errs)
                            : sk_config_quick(opt.listen, opt.upstream, opt.admin, &s, &errs);
    if (r < 0) {
        sk_cfgerrs_print(&errs, stderr);
        fprintf(stderr, "skiff: configuration rejected (%zu error%s)\n", errs.n,
                errs.n == 1 ? "" : "s");
        sk_cfgerrs_free(&errs);
        return 1;
    }
    sk_cfgerrs_free(&errs);
    if (opt.validate) {
        printf("%s: configuration OK (%zu listener%s, %zu cluster%s)\n",
               opt.config_path ? opt.config_path : "<command line>", s->nlisteners,
               s->nlisteners == 1 ? "" : "s", s->nclusters, s->nclusters == 1 ? "" : "s");
        sk_snapshot_unref(s);
        return 0;
    }

    main_loop = ev_default_loop(EVFLAG_NOENV);
    /* workers must not take signals: block them before the threads start */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    sk_h2_client_init();
    if (sk_workers_start(opt.concurrency) < 0) {
        fprintf(stderr, "skiff: cannot start workers\n");
        return 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    /* admin: --admin wins, then the bootstrap's, then the default */
    struct sk_sockaddr aaddr;
    const char *astr = opt.admin;
    if (!astr && s->admin.enabled) {
        aaddr = s->admin.addr;
        astr = s->admin.addr_str;
    } else if (!astr) {
        astr = "127.0.0.1:15000";
    }
    if ((opt.admin || !s->admin.enabled) && sk_addr_parse(astr, &aaddr) < 0) {
        fprintf(stderr, "skiff: bad admin address '%s'\n", astr);
        return 1;
    }
    struct sk_admin_hooks hooks = {is_ready, state_name, start_drain, config_version,
                                   current_snapshot, drain_listeners};
    const char *why = "";
    sk_chaos_init(main_loop, current_snapshot);
    sk_admin_add_handler("/chaos", sk_chaos_admin);
    int ar = sk_admin_start(main_loop, &aaddr, &hooks, &why);
    if (ar < 0) {
        fprintf(stderr, "skiff: admin listener %s: %s: %s\n", astr, why, strerror(-ar));
        return 1;
    }

    if (publish(s) < 0) {
        fprintf(stderr, "skiff: cannot bind the configured listeners\n");
        return 1;
    }
    initial_version = cur->version;
    for (size_t i = 0; i < cur->nlisteners; i++)
        sk_info("listener %s on %s", cur->listeners[i].name, cur->listeners[i].addr_str);
    sk_info("skiff %s started: %d worker(s), admin on %s", SKIFF_VERSION, sk_nworkers, astr);
    /* after the lines above: astr may live in `s`, which a file-based xDS source
     * replaces (and frees) synchronously */
    if ((cur->xds.ads || cur->xds.files || cur->xds.sds_cluster) && opt.config_path) {
        struct sk_ads_opts xo = {main_loop, opt.config_path, opt.service_node,
                                 opt.service_cluster, sk_tls_prepare, sk_main_publish};
        ads = sk_ads_start(&xo, cur);
        if (!ads) {
            fprintf(stderr, "skiff: cannot start the xDS client\n");
            return 1;
        }
    }

    sk_tls_watch_start(main_loop);
    ev_signal_init(&sig_hup, sig_cb, SIGHUP);
    ev_signal_start(main_loop, &sig_hup);
    ev_signal_init(&sig_term, sig_cb, SIGTERM);
    ev_signal_start(main_loop, &sig_term);
    ev_signal_init(&sig_int, sig_cb, SIGINT);
    ev_signal_start(main_loop, &sig_int);

    ev_run(main_loop, 0);

    sk_ads_stop(ads);
    ads = NULL;
    sk_workers_join();
    sk_chaos_shutdown();
    sk_admin_stop();
    sk_health_stop_all();
    if (cur)
        sk_snapshot_unref(cur);
    cur = NULL;
    sk_tls_shutdown();
    sk_info("skiff stopped");
    return 0;
}
