/* Latency histograms (see include/skiff/histogram.h). */
#include "skiff/histogram.h"

#include <stdlib.h>
#include <string.h>

/* decade d (0 = 100 us .. 999 us) starts at index 100 + 90 d, width 10^(d+1) us */
static const uint64_t pow10_tbl[] = {1ull,      10ull,      100ull,      1000ull,
                                     10000ull,  100000ull,  1000000ull,  10000000ull,
                                     100000000ull};

uint64_t sk_hist_lower(unsigned i)
{
    if (i < 100)
        return i;
    if (i >= SK_HIST_OVERFLOW)
        return SK_HIST_MAX_US;
    unsigned d = (i - 100) / 90, k = (i - 100) % 90;
    return (uint64_t)(k + 10) * pow10_tbl[d + 1];
}

uint64_t sk_hist_upper(unsigned i)
{
    if (i >= SK_HIST_OVERFLOW)
        return UINT64_MAX;
    return sk_hist_lower(i + 1);
}

void sk_hist_snap_init(struct sk_hist_snap *s)
{
    memset(s, 0, sizeof(*s));
}

void sk_hist_merge(struct sk_hist_snap *s, const struct sk_hist *h)
{
    for (unsigned i = 0; i < SK_HIST_NB; i++) {
        uint64_t v = atomic_load_explicit(&h->b[i], memory_order_relaxed);
        s->b[i] += v;
        s->count += v;
    }
    s->sum_us += atomic_load_explicit(&h->sum_us, memory_order_relaxed);
}

double sk_hist_quantile_us(const struct sk_hist_snap *s, double q)
{
    if (!s->count)
        return 0;
    if (q < 0)
        q = 0;
    if (q > 1)
        q = 1;
    /* rank of the wanted value, 1-based (nearest-rank method) */
    uint64_t rank = (uint64_t)(q * (double)s->count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < SK_HIST_NB; i++) {
        acc += s->b[i];
        if (acc >= rank) {
            if (i < 100)
                return (double)i; /* exact */
            if (i == SK_HIST_OVERFLOW)
                return (double)SK_HIST_MAX_US;
            return ((double)sk_hist_lower(i) + (double)sk_hist_upper(i)) / 2.0;
        }
    }
    return (double)SK_HIST_MAX_US;
}

uint64_t sk_hist_count_below(const struct sk_hist_snap *s, uint64_t le_us)
{
    uint64_t acc = 0;
    for (unsigned i = 0; i < SK_HIST_NB; i++) {
        if (sk_hist_lower(i) >= le_us)
            break;
        acc += s->b[i];
    }
    return acc;
}

/* ---- per worker ----------------------------------------------------------- */

static unsigned slot_of(const void *key)
{
    uintptr_t k = (uintptr_t)key;
    k ^= k >> 17;
    k *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (unsigned)(k >> 7) & (SK_HIST_TBL - 1);
}

struct sk_hist *sk_hist_cluster(struct sk_hist_worker *hw, const void *key, const char *name)
{
    unsigned s = slot_of(key);
    for (struct sk_hist_entry *e = atomic_load_explicit(&hw->clusters[s], memory_order_relaxed);
         e; e = atomic_load_explicit(&e->next, memory_order_relaxed))
        if (e->key == key)
            return &e->h;
    if (hw->nclusters >= SK_HIST_MAX_CLUSTERS)
        return NULL;
    /* once per (worker, cluster) for the life of the process */
    struct sk_hist_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->key = key;
    e->name = name;
    atomic_store_explicit(&e->next,
                          atomic_load_explicit(&hw->clusters[s], memory_order_relaxed),
                          memory_order_relaxed);
    /* publish the initialised entry to readers */
    atomic_store_explicit(&hw->clusters[s], e, memory_order_release);
    hw->nclusters++;
    return &e->h;
}

static uint64_t to_us(double s)
{
    if (!(s > 0)) /* also NaN */
        return 0;
    if (s >= (double)SK_HIST_MAX_US / 1e6)
        return SK_HIST_MAX_US;
    return (uint64_t)(s * 1e6 + 0.5);
}

void sk_hist_stream_end(struct sk_hist_worker *hw, double dur_s, double ttfb_s,
                        const void *cluster_key, const char *cluster_name)
{
    sk_hist_record(&hw->downstream_rq_time, to_us(dur_s));
    if (ttfb_s < 0)
        return;
    uint64_t up = to_us(ttfb_s);
    sk_hist_record(&hw->upstream_rq_time, up);
    if (!cluster_key)
        return;
    struct sk_hist *h = sk_hist_cluster(hw, cluster_key, cluster_name);
    if (h)
        sk_hist_record(h, up);
    else
        atomic_store_explicit(&hw->cluster_skipped,
                              atomic_load_explicit(&hw->cluster_skipped, memory_order_relaxed) + 1,
                              memory_order_relaxed);
}

void sk_hist_foreach_cluster(const struct sk_hist_worker *hw,
                             void (*fn)(const void *key, const char *name,
                                        const struct sk_hist *h, void *arg),
                             void *arg)
{
    for (unsigned s = 0; s < SK_HIST_TBL; s++)
        for (struct sk_hist_entry *e = atomic_load_explicit(&hw->clusters[s], memory_order_acquire);
             e; e = atomic_load_explicit(&e->next, memory_order_acquire))
            fn(e->key, e->name, &e->h, arg);
}

void sk_hist_worker_free(struct sk_hist_worker *hw)
{
    for (unsigned s = 0; s < SK_HIST_TBL; s++) {
        struct sk_hist_entry *e = atomic_load(&hw->clusters[s]);
        atomic_store(&hw->clusters[s], NULL);
        while (e) {
            struct sk_hist_entry *n = atomic_load(&e->next);
            free(e);
            e = n;
        }
    }
    hw->nclusters = 0;
}
