/* Glue between a cluster's host list and the hashing / latency-aware load
 * balancers (lb_hash.c): table rebuilds and EWMA bookkeeping. */
#include <stdlib.h>
#include <string.h>

#include "skiff/hoststate.h"
#include "skiff/lb_hash.h"
#include "skiff/upstream.h"

void sk_cluster_hash_free(struct sk_cluster_rt *c)
{
    if (!c->hash_table)
        return;
    if (c->hash_kind == SK_LB_RING_HASH)
        sk_ring_free(c->hash_table);
    else
        sk_maglev_free(c->hash_table);
    c->hash_table = NULL;
    c->hash_kind = 0;
}

void sk_cluster_hash_rebuild(struct sk_cluster_rt *c)
{
    sk_cluster_hash_free(c);
    const struct sk_cluster *cfg = c->cfg;
    if (!cfg || (cfg->lb_policy != SK_LB_RING_HASH && cfg->lb_policy != SK_LB_MAGLEV) ||
        c->nhosts == 0)
        return;
    const char **keys = calloc(c->nhosts, sizeof(*keys));
    uint32_t *w = calloc(c->nhosts, sizeof(*w));
    if (keys && w) {
        for (size_t i = 0; i < c->nhosts; i++) {
            keys[i] = c->hosts[i]->addr_str; /* Envoy hashes the address */
            w[i] = c->hosts[i]->weight;
        }
        if (cfg->lb_policy == SK_LB_RING_HASH) {
            /* Every host gets the same number of entries whatever the host
             * count (minimum_ring_size / 3 each, so the default 1024 gives
             * 342), so adding or removing a host only moves keys to or from
             * that host. Envoy sizes the ring from the host count instead,
             * which also shuffles ~9% of keys between unchanged hosts. */
            uint64_t minsz = cfg->ring_hash_min_size ? cfg->ring_hash_min_size : 1024;
            uint64_t maxsz = cfg->ring_hash_max_size ? cfg->ring_hash_max_size : 8388608;
            uint64_t per = (minsz + 2) / 3;
            uint64_t want = per * c->nhosts;
            if (want < minsz && c->nhosts >= 3)
                want = minsz;
            if (want > maxsz)
                want = maxsz;
            c->hash_table = sk_ring_build(keys, w, c->nhosts, want, maxsz);
        }
        else
            c->hash_table = sk_maglev_build(keys, w, c->nhosts,
                                            cfg->maglev_table_size ? cfg->maglev_table_size
                                                                   : 65537);
        if (c->hash_table)
            c->hash_kind = cfg->lb_policy;
    }
    free(keys);
    free(w);
}

int sk_cluster_hash_pick(struct sk_cluster_rt *c, uint64_t hash)
{
    if (!c->hash_table || !c->cfg || c->hash_kind != c->cfg->lb_policy)
        return -1;
    int i = c->hash_kind == SK_LB_RING_HASH ? sk_ring_pick(c->hash_table, hash)
                                            : sk_maglev_pick(c->hash_table, hash);
    return (i >= 0 && (size_t)i < c->nhosts) ? i : -1;
}

static uint64_t decay_us(const struct sk_host *h)
{
    const struct sk_cluster *cfg = h->cl->cfg;
    uint64_t ms = cfg && cfg->peak_ewma_decay_ms ? cfg->peak_ewma_decay_ms : 10000;
    return ms * 1000;
}

uint64_t sk_host_ewma_cost(const struct sk_host *h, int64_t now_ms)
{
    if (!h->hs)
        return h->active_rq;
    uint64_t e = atomic_load_explicit(&h->hs->ewma_us, memory_order_relaxed);
    int64_t st = atomic_load_explicit(&h->hs->ewma_stamp_us, memory_order_relaxed);
    int64_t active = atomic_load_explicit(&h->hs->active_rq, memory_order_relaxed);
    return sk_ewma_cost(e, active, st, now_ms * 1000, decay_us(h));
}

void sk_host_ewma_sample(struct sk_host *h, uint64_t us, int64_t now_ms)
{
    if (!h->hs)
        return;
    int64_t now_us = now_ms * 1000;
    uint64_t e = atomic_load_explicit(&h->hs->ewma_us, memory_order_relaxed);
    int64_t st = atomic_load_explicit(&h->hs->ewma_stamp_us, memory_order_relaxed);
    /* racy read-modify-write across workers is fine for an estimate */
    atomic_store_explicit(&h->hs->ewma_us, sk_ewma_update(e, st, us, now_us, decay_us(h)),
                          memory_order_relaxed);
    atomic_store_explicit(&h->hs->ewma_stamp_us, now_us, memory_order_relaxed);
}
