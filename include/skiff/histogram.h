/* Latency histograms: log-linear buckets with two significant decimal digits,
 * 1 us .. 60 s, recorded by one writer (a worker) and merged on read (admin).
 *
 * Buckets (values in microseconds):
 *   0 .. 99 us            1 us wide (100 buckets)
 *   100 .. 999 us         10 us wide (90)
 *   1 .. 9.9 ms           100 us wide (90)
 *   ...                   (each decade: 90 buckets, 2 significant digits)
 *   10 .. 59 s            1 s wide (50)
 *   >= 60 s               one overflow bucket
 * so a recorded value is known to within 10% at the bottom of a decade and 1%
 * at its top, and every "nice" boundary (0.5 ms, 1 ms, 2.5 ms, 10 ms, 250 ms,
 * 1 s, 30 s, ...) is a bucket edge: Prometheus `le` buckets built from these
 * are exact, not interpolated.
 *
 * Threading: sk_hist_record() is for the histogram's single writer (relaxed
 * load + store, no locked instruction: a few ns). Any thread may read with
 * sk_hist_merge(); a concurrent read sees each bucket either before or after
 * an in-flight record, never a torn value. The bucket sum is the count (there
 * is no separate counter that could disagree with the buckets).
 *
 * Per-cluster histograms live in a per-worker table (struct sk_hist_worker)
 * keyed by the process-lifetime cluster state: one writer per histogram, no
 * shared cache lines between workers. An entry is allocated the first time a
 * worker records for a cluster (once per worker x cluster for the life of the
 * process, never again on that path); readers walk the table lock-free. */
#ifndef SKIFF_HISTOGRAM_H
#define SKIFF_HISTOGRAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SK_HIST_MAX_US 60000000ull /* 60 s; larger values land in the overflow bucket */
#define SK_HIST_NB 601             /* 100 + 5 x 90 + 50 + overflow */
#define SK_HIST_OVERFLOW (SK_HIST_NB - 1)

struct sk_hist {
    _Atomic uint64_t b[SK_HIST_NB];
    _Atomic uint64_t sum_us;
};

/* Bucket of a value in microseconds. Pure, branchy but division-light. */
static inline unsigned sk_hist_index(uint64_t us)
{
    if (us < 100)
        return (unsigned)us;
    if (us >= SK_HIST_MAX_US)
        return SK_HIST_OVERFLOW;
    if (us < 1000)
        return 100 + (unsigned)(us / 10) - 10;
    if (us < 10000)
        return 190 + (unsigned)(us / 100) - 10;
    if (us < 100000)
        return 280 + (unsigned)(us / 1000) - 10;
    if (us < 1000000)
        return 370 + (unsigned)(us / 10000) - 10;
    if (us < 10000000)
        return 460 + (unsigned)(us / 100000) - 10;
    return 550 + (unsigned)(us / 1000000) - 10;
}

/* Inclusive lower / exclusive upper edge of bucket i in microseconds
 * (upper of the overflow bucket: UINT64_MAX). */
uint64_t sk_hist_lower(unsigned i);
uint64_t sk_hist_upper(unsigned i);

/* Single writer only. */
static inline void sk_hist_record(struct sk_hist *h, uint64_t us)
{
    _Atomic uint64_t *b = &h->b[sk_hist_index(us)];
    atomic_store_explicit(b, atomic_load_explicit(b, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&h->sum_us,
                          atomic_load_explicit(&h->sum_us, memory_order_relaxed) + us,
                          memory_order_relaxed);
}

/* A plain (non-atomic) merged copy, for readers. */
struct sk_hist_snap {
    uint64_t b[SK_HIST_NB];
    uint64_t sum_us;
    uint64_t count;
};

void sk_hist_snap_init(struct sk_hist_snap *s);
/* Add h's current contents into s (relaxed loads). */
void sk_hist_merge(struct sk_hist_snap *s, const struct sk_hist *h);
/* Value at quantile q (0..1) in microseconds: the midpoint of the bucket that
 * holds the q-th value (exact below 100 us); 0 when empty. */
double sk_hist_quantile_us(const struct sk_hist_snap *s, double q);
/* Number of recorded values < le_us (le_us should be a bucket edge; otherwise
 * the bucket containing it counts as below). */
uint64_t sk_hist_count_below(const struct sk_hist_snap *s, uint64_t le_us);

/* ---- per worker ----------------------------------------------------------- */

#define SK_HIST_TBL 64            /* hash heads */
#define SK_HIST_MAX_CLUSTERS 4096 /* per worker; beyond it per-cluster records are skipped */

struct sk_hist_entry {
    _Atomic(struct sk_hist_entry *) next;
    const void *key;  /* process-lifetime cluster state */
    const char *name; /* lives as long as key */
    struct sk_hist h;
};

struct sk_hist_worker {
    struct sk_hist downstream_rq_time; /* request start -> stream end */
    struct sk_hist upstream_rq_time;   /* request start -> upstream response head */
    _Atomic(struct sk_hist_entry *) clusters[SK_HIST_TBL];
    uint32_t nclusters;                /* writer only */
    _Atomic uint64_t cluster_skipped;  /* records not kept: table full / no memory */
};

/* The worker's histogram for a cluster, created on first use (writer only).
 * NULL when the table is full or memory is short. */
struct sk_hist *sk_hist_cluster(struct sk_hist_worker *hw, const void *key, const char *name);

/* Stream end (worker): total duration, time to the upstream's response head
 * (< 0: there was no upstream response) and its cluster (key NULL: none). */
void sk_hist_stream_end(struct sk_hist_worker *hw, double dur_s, double ttfb_s,
                        const void *cluster_key, const char *cluster_name);

/* Readers: visit every per-cluster histogram of one worker. */
void sk_hist_foreach_cluster(const struct sk_hist_worker *hw,
                             void (*fn)(const void *key, const char *name,
                                        const struct sk_hist *h, void *arg),
                             void *arg);
/* Free the entries (process exit, tests; no writer may be running). */
void sk_hist_worker_free(struct sk_hist_worker *hw);

#endif
