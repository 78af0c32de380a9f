/* Per-worker cluster runtime: host sets and load balancing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff/hoststate.h"
#include "skiff/hash.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/upstream.h"

/* issue 7: endpoint records of a 10k-cluster snapshot stay small */
_Static_assert(sizeof(struct sk_endpoint) <= 64, "struct sk_endpoint grew past 64 bytes");

void sk_host_ref(struct sk_host *h)
{
    h->refs++;
}

void sk_upconn_close_idle_of(struct sk_host *h);

void sk_host_unref(struct sk_host *h)
{
    if (--h->refs > 0)
        return;
    free(h); /* an own address copy lives in the same block */
}

/* Without a host state (its allocation failed), the host is allocated as a
 * host_with_own: the address and its text right after the struct. */
struct host_own {
    struct sk_sockaddr addr;
    char str[64];
};
struct host_with_own {
    struct sk_host h; /* first */
    struct host_own own;
};

static const struct host_own *own_of(const struct sk_host *h)
{
    return &((const struct host_with_own *)h)->own;
}

void sk_host_addr(const struct sk_host *h, struct sk_sockaddr *out)
{
    if (h->hs)
        sk_hstate_addr(h->hs, out);
    else
        *out = own_of(h)->addr;
}

int sk_host_connect(const struct sk_host *h)
{
    struct sk_sockaddr a;
    sk_host_addr(h, &a);
    return sk_connect_socket(&a);
}

static bool host_addr_eq(const struct sk_host *h, const struct sk_sockaddr *a)
{
    if (h->hs)
        return sk_hstate_addr_eq(h->hs, a);
    const struct sk_sockaddr *o = &own_of(h)->addr;
    return o->len == a->len && memcmp(&o->ss, &a->ss, a->len) == 0;
}

static struct sk_host *host_new(struct sk_cluster_rt *c, const struct sk_sockaddr *a,
                                uint32_t weight, int health)
{
    struct sk_host_state *hs = c->cs ? sk_hstate_get(c->cs, a) : NULL;
    struct sk_host *h = calloc(1, hs ? sizeof(*h) : sizeof(struct host_with_own));
    if (!h)
        return NULL;
    h->cl = c;
    h->hs = hs;
    h->weight = weight ? weight : 1;
    h->cfg_health = (uint8_t)health;
    h->refs = 1; /* the host list's */
    if (hs) {
        h->addr_str = hs->addr_str; /* process lifetime, same address */
    } else {
        struct host_own *o = &((struct host_with_own *)h)->own;
        o->addr = *a;
        sk_addr_str(a, o->str, sizeof(o->str));
        h->addr_str = o->str;
    }
    return h;
}

/* Replace the host list, keeping host objects (and their pools) whose
 * address is unchanged. The new set: the config's endpoints `eps` (address,
 * weight, health), or else bare addresses `addrs` (DNS answers: weight 1,
 * health unknown). False (nothing changed) when out of memory. */
static bool set_hosts(struct sk_cluster_rt *c, const struct sk_endpoint *eps,
                      const struct sk_sockaddr *addrs, size_t n)
{
    struct sk_host **nh = calloc(n ? n : 1, sizeof(*nh));
    if (!nh)
        return false;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        struct sk_sockaddr ea;
        if (eps)
            sk_endpoint_addr(&eps[i], &ea);
        const struct sk_sockaddr *a = eps ? &ea : &addrs[i];
        uint32_t weight = eps ? eps[i].weight : 1;
        int health = eps ? eps[i].health : 0;
        struct sk_host *h = NULL;
        for (size_t j = 0; j < c->nhosts; j++) {
            if (c->hosts[j] && host_addr_eq(c->hosts[j], a)) {
                h = c->hosts[j];
                c->hosts[j] = NULL;
                break;
            }
        }
        if (!h)
            h = host_new(c, a, weight, health);
        else {
            h->weight = weight ? weight : 1;
            h->cfg_health = (uint8_t)health;
        }
        if (h)
            nh[k++] = h;
    }
    /* hosts that are gone: close their idle connections, drop the list ref */
    for (size_t j = 0; j < c->nhosts; j++) {
        struct sk_host *h = c->hosts[j];
        if (!h)
            continue;
        h->removed = true;
        sk_upconn_close_idle_of(h);
        sk_host_unref(h);
    }
    free(c->hosts);
    c->hosts = nh;
    c->nhosts = (uint32_t)k;
    c->weighted = false;
    for (size_t i = 0; i < k; i++)
        if (nh[i]->weight != 1)
            c->weighted = true;
    sk_cluster_hash_rebuild(c);
    return true;
}

/* STATIC / EDS: hosts from the config's endpoints. */
static void set_hosts_cfg(struct sk_cluster_rt *c)
{
    if (set_hosts(c, c->cfg->endpoints, NULL, c->cfg->nendpoints))
        c->lazy = false;
}

/* Cluster runtimes by name, per worker (each worker writes only its own slot;
 * runtimes live for the process, so entries are never removed). An open
 * addressing table keeps config updates O(clusters), not O(clusters^2). */
static struct rt_index {
    struct sk_cluster_rt **v;
    size_t cap, n;
    bool partial; /* an allocation failed: a miss must also search the list */
    const struct sk_worker *owner;
} rt_idx[SK_MAX_WORKERS];

static uint64_t name_hash(const char *s)
{
    return sk_fnv1a_str(s);
}

static void rt_index_put(struct rt_index *x, struct sk_cluster_rt *c);

static struct rt_index *idx_of(struct sk_worker *w)
{
    if (w->id < 0 || w->id >= SK_MAX_WORKERS)
        return NULL;
    struct rt_index *x = &rt_idx[w->id];
    if (x->owner != w) { /* a new worker with this id: start over from its list */
        free(x->v);
        *x = (struct rt_index){.owner = w};
        for (struct sk_cluster_rt *c = w->clusters; c; c = c->next)
            rt_index_put(x, c);
    }
    return x;
}

static void rt_index_put(struct rt_index *x, struct sk_cluster_rt *c)
{
    if ((x->n + 1) * 2 > x->cap) {
        size_t ncap = x->cap ? x->cap * 2 : 64;
        struct sk_cluster_rt **nv = calloc(ncap, sizeof(*nv));
        if (!nv) {
            x->partial = true; /* lookups fall back to the list */
            return;
        }
        for (size_t i = 0; i < x->cap; i++)
            if (x->v[i]) {
                size_t k = name_hash(x->v[i]->name) & (ncap - 1);
                while (nv[k])
                    k = (k + 1) & (ncap - 1);
                nv[k] = x->v[i];
            }
        free(x->v);
        x->v = nv;
        x->cap = ncap;
    }
    size_t k = name_hash(c->name) & (x->cap - 1);
    while (x->v[k])
        k = (k + 1) & (x->cap - 1);
    x->v[k] = c;
    x->n++;
}

static struct sk_cluster_rt *rt_find(struct sk_worker *w, const char *name)
{
    struct rt_index *x = idx_of(w);
    if (x && x->cap) {
        for (size_t k = name_hash(name) & (x->cap - 1); x->v[k]; k = (k + 1) & (x->cap - 1))
            if (strcmp(x->v[k]->name, name) == 0)
                return x->v[k];
    }
    if (x && !x->partial && (x->cap || !w->clusters))
        return NULL; /* the table holds every runtime: a miss is a miss */
    for (struct sk_cluster_rt *c = w->clusters; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

void sk_clusters_apply(struct sk_worker *w, struct sk_snapshot *snap)
{
    /* the version of the snapshot being replaced (set after this returns) */
    uint64_t prev = atomic_load(&w->applied_version);
    free(w->rt_by_index);
    w->rt_by_index = calloc(snap->nclusters ? snap->nclusters : 1, sizeof(*w->rt_by_index));
    for (size_t i = 0; i < snap->nclusters; i++) {
        const struct sk_cluster *cfg = &snap->clusters[i];
        struct sk_cluster_rt *c = rt_find(w, cfg->name);
        bool fresh = false;
        if (!c) {
            c = calloc(1, sizeof(*c));
            if (!c)
                continue;
            c->cs = sk_cstate_get(cfg->name);
            if (c->cs) {
                c->name = c->cs->name; /* process lifetime: no copy per worker */
            } else {
                char *nm = strdup(cfg->name);
                if (!nm) {
                    free(c);
                    continue;
                }
                c->name = nm;
            }
            c->w = w;
            c->rr = sk_worker_rand(w);
            c->next = w->clusters;
            w->clusters = c;
            if (idx_of(w))
                rt_index_put(idx_of(w), c);
            fresh = true;
        }
        /* c->cfg is only valid when the cluster was in the previous snapshot
         * (still alive here); a cluster removed earlier and now back points into
         * a freed one */
        if (!fresh && c->cfg_version != prev)
            c->cfg = NULL;
        bool was_dns = c->cfg && (c->cfg->type == SK_CLUSTER_STRICT_DNS ||
                                  c->cfg->type == SK_CLUSTER_LOGICAL_DNS);
        int old_policy = c->cfg ? c->cfg->lb_policy : -1;
        /* an endpoint array shared with the previous snapshot (one derived for
         * an EDS update of other clusters) means the same hosts */
        bool same_eps = !fresh && c->cfg && c->cfg->type == cfg->type &&
                        c->cfg->endpoints == cfg->endpoints &&
                        c->cfg->nendpoints == cfg->nendpoints && snap->base;
        c->cfg = cfg;
        c->cfg_version = snap->version;
        if (w->rt_by_index)
            w->rt_by_index[i] = c;
        if (old_policy != cfg->lb_policy)
            sk_cluster_hash_rebuild(c);
        if (same_eps) {
            /* nothing to do for the hosts */
        } else if (cfg->type == SK_CLUSTER_STATIC || cfg->type == SK_CLUSTER_EDS) {
            /* A worker builds a cluster's host objects when it first picks
             * a host of it (sk_lb_choose_ex): of the thousands of clusters a
             * control plane pushes, a sidecar's workers use a few, and the
             * others then cost no per-worker host copies (issue 7). Once
             * built, every update goes through set_hosts at once, so pooled
             * connections of unchanged hosts are kept as before. */
            if (fresh)
                c->lazy = true;
            /* The process-wide host states are created with the hosts (or
             * by health checking / outlier detection), not here: admin lists
             * a cluster without any from the snapshot's endpoints. */
            if (!c->lazy)
                set_hosts_cfg(c);
        } else if (fresh || !was_dns) {
            /* DNS clusters get hosts from the resolver (main thread); until
             * the first answer they have none */
            c->lazy = false;
            set_hosts(c, NULL, NULL, 0);
        }
    }
}

void sk_clusters_set_hosts(struct sk_worker *w, const char *cluster, const struct sk_sockaddr *a,
                           size_t n)
{
    struct sk_cluster_rt *c = rt_find(w, cluster);
    if (!c)
        return;
    if (set_hosts(c, NULL, a, n))
        c->lazy = false;
}

struct sk_cluster_rt *sk_worker_cluster_rt(struct sk_worker *w, const struct sk_snapshot *snap,
                                           const struct sk_cluster *c)
{
    if (snap == w->snap && w->rt_by_index && c->index < snap->nclusters)
        return w->rt_by_index[c->index];
    return rt_find(w, c->name);
}

static bool cfg_usable(const struct sk_host *h)
{
    return h->cfg_health != SK_HEALTH_UNHEALTHY && h->cfg_health != SK_HEALTH_DRAINING &&
           h->cfg_health != SK_HEALTH_TIMEOUT;
}

struct pick_ctx {
    int64_t now;
    bool check_state; /* cluster has outlier detection / health checks */
    bool panic;
    struct sk_host *const *avoid;
    size_t navoid;
};

static bool usable(const struct sk_host *h, const struct pick_ctx *p)
{
    if (p->panic)
        return true;
    if (!cfg_usable(h))
        return false;
    if (p->check_state && h->hs && !sk_hstate_usable(h->hs, p->now))
        return false;
    for (size_t i = 0; i < p->navoid; i++)
        if (p->avoid[i] == h)
            return false;
    return true;
}

static struct sk_host *pick(struct sk_cluster_rt *c, const struct pick_ctx *p, uint64_t hash)
{
    size_t n = c->nhosts;
    struct sk_worker *w = c->w;
    int policy = c->cfg ? c->cfg->lb_policy : SK_LB_ROUND_ROBIN;
    if (n == 1)
        return usable(c->hosts[0], p) ? c->hosts[0] : NULL;
    if (policy == SK_LB_RING_HASH || policy == SK_LB_MAGLEV) {
        /* consistent choice by hash; walk forward from it over unusable hosts */
        if (!hash)
            hash = ((uint64_t)sk_worker_rand(w) << 32) | sk_worker_rand(w);
        int idx = sk_cluster_hash_pick(c, hash);
        if (idx >= 0) {
            for (size_t k = 0; k < n; k++) {
                struct sk_host *h = c->hosts[((size_t)idx + k) % n];
                if (usable(h, p))
                    return h;
            }
            return NULL;
        }
        /* no table (allocation failed): fall through to round robin */
    }
    if (policy == SK_LB_LEAST_REQUEST && c->weighted) {
        /* Envoy: with unequal weights, weighted round robin over dynamic
         * weights weight / (active_rq + 1) (smooth WRR, fixed point) */
        int64_t total = 0;
        struct sk_host *best = NULL;
        for (size_t i = 0; i < n; i++) {
            struct sk_host *h = c->hosts[i];
            if (!usable(h, p))
                continue;
            int64_t ew = (int64_t)h->weight * 1000 / ((int64_t)h->active_rq + 1);
            if (ew < 1)
                ew = 1;
            h->swrr_current += (int32_t)ew;
            total += ew;
            if (!best || h->swrr_current > best->swrr_current)
                best = h;
        }
        if (best)
            best->swrr_current -= (int32_t)total;
        return best;
    }
    if (policy == SK_LB_LEAST_REQUEST || policy == SK_LB_PEAK_EWMA) {
        /* power of N choices among usable hosts: Envoy samples with
         * replacement for LEAST_REQUEST; peak EWMA compares distinct hosts
         * (a slow host must never win just by being drawn twice) */
        uint32_t choices = c->cfg && c->cfg->lr_choice_count ? c->cfg->lr_choice_count : 2;
        struct sk_host *best = NULL;
        uint64_t best_cost = 0;
        bool distinct = policy == SK_LB_PEAK_EWMA;
        uint32_t first = sk_worker_rand(w) % (uint32_t)n;
        uint32_t step = 1 + sk_worker_rand(w) % (uint32_t)(n - 1);
        for (uint32_t k = 0; k < choices * 2 && k < 64; k++) {
            struct sk_host *h = distinct ? c->hosts[(first + (uint64_t)k * step) % n]
                                         : c->hosts[sk_worker_rand(w) % n];
            if (!usable(h, p))
                continue;
            if (policy == SK_LB_PEAK_EWMA) {
                uint64_t cost = sk_host_ewma_cost(h, p->now);
                if (!best || cost < best_cost) {
                    best = h;
                    best_cost = cost;
                }
            } else if (!best || ((uint64_t)h->active_rq + 1) * best->weight <
                                    ((uint64_t)best->active_rq + 1) * h->weight) {
                /* Envoy: weight / (active_rq + 1), higher wins */
                best = h;
            }
            if (k + 1 >= choices && best)
                break;
        }
        if (best)
            return best;
    } else if (policy == SK_LB_RANDOM) {
        for (size_t k = 0; k < n; k++) {
            struct sk_host *h = c->hosts[sk_worker_rand(w) % n];
            if (usable(h, p))
                return h;
        }
    } else if (c->weighted) {
        /* smooth weighted round robin (nginx): deterministic interleaving */
        int32_t total = 0;
        struct sk_host *best = NULL;
        for (size_t i = 0; i < n; i++) {
            struct sk_host *h = c->hosts[i];
            if (!usable(h, p))
                continue;
            h->swrr_current += (int32_t)h->weight;
            total += (int32_t)h->weight;
            if (!best || h->swrr_current > best->swrr_current)
                best = h;
        }
        if (best) {
            best->swrr_current -= total;
            return best;
        }
        return NULL;
    } else {
        for (size_t k = 0; k < n; k++) {
            struct sk_host *h = c->hosts[c->rr++ % n];
            if (usable(h, p))
                return h;
        }
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (usable(c->hosts[i], p))
            return c->hosts[i];
    return NULL;
}

struct sk_host *sk_lb_choose_ex(struct sk_cluster_rt *c, uint64_t hash,
                                struct sk_host *const *avoid, size_t navoid)
{
    if (c->lazy && c->cfg)
        set_hosts_cfg(c); /* first pick on this worker: build the hosts */
    size_t n = c->nhosts;
    if (n == 0)
        return NULL;
    struct pick_ctx p = {0};
    const struct sk_cluster *cfg = c->cfg;
    p.check_state = cfg && (cfg->outlier || cfg->health_checks);
    if (p.check_state) {
        p.now = sk_now_ms();
        /* panic mode: too few usable hosts -> use them all (Envoy) */
        double panic = cfg->healthy_panic_percent;
        if (panic > 0) {
            size_t ok = 0;
            for (size_t i = 0; i < n; i++)
                if (cfg_usable(c->hosts[i]) &&
                    (!c->hosts[i]->hs || sk_hstate_usable(c->hosts[i]->hs, p.now)))
                    ok++;
            if ((double)ok * 100.0 < panic * (double)n) {
                p.panic = true;
                if (!c->in_panic)
                    sk_warn("cluster %s: only %zu of %zu hosts healthy: panic mode, using all",
                            c->name, ok, n);
                c->in_panic = true;
            } else {
                c->in_panic = false;
            }
        }
    }
    if (navoid) {
        p.avoid = avoid;
        p.navoid = navoid;
        struct sk_host *h = pick(c, &p, hash);
        if (h)
            return h;
        p.avoid = NULL;
        p.navoid = 0;
    }
    return pick(c, &p, hash);
}

struct sk_host *sk_lb_choose(struct sk_cluster_rt *c)
{
    return sk_lb_choose_ex(c, 0, NULL, 0);
}
