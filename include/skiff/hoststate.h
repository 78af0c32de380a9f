/* Process-wide upstream state shared by all workers and the main thread:
 * circuit-breaker counts, outlier ejection, active health, per-host request
 * accounting and latency. Keyed by cluster name and host address, so it
 * survives config pushes and DNS changes (a host that comes back finds its
 * history). Objects are created on first use and live for the process.
 *
 * Threading: lookups/creation take a lock (config-apply time only; workers
 * cache the pointers in their runtime objects). Everything on the request
 * path is a relaxed/acq-rel atomic; no locks. */
#ifndef SKIFF_HOSTSTATE_H
#define SKIFF_HOSTSTATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "skiff/model.h"

enum sk_hc_status {
    SK_HC_UNKNOWN = 0, /* not checked (yet): usable */
    SK_HC_HEALTHY = 1,
    SK_HC_UNHEALTHY = 2,
};

/* One per (cluster, address), process lifetime. Kept small (issue 5: state
 * per host under 1 KB): the socket address is stored in its own length after
 * the fixed fields, followed by its text, instead of a sockaddr_storage and a
 * 64-byte text buffer. Read the address with sk_hstate_addr(). */
struct sk_host_state {
    struct sk_host_state *next;
    struct sk_cluster_state *cl;
    const char *addr_str; /* the address as text ("10.0.0.1:80", "[::1]:80"), in tail */
    /* active health checking (written by the main thread's checker) */
    _Atomic int hc_status;
    /* outlier detection */
    _Atomic uint32_t ejection_count;  /* grows the ejection time */
    _Atomic int64_t ejected_until_ms; /* monotonic ms; 0 = not ejected */
    _Atomic uint32_t consecutive_5xx;
    _Atomic uint32_t consecutive_gw;
    _Atomic uint32_t consecutive_local;
    uint32_t addr_len; /* bytes of the socket address at tail[0] */
    _Atomic uint64_t hc_checks, hc_failures;
    /* live accounting (sum over workers) */
    _Atomic uint64_t rq_total, rq_errors;
    _Atomic uint64_t ewma_us; /* peak-EWMA latency estimate, microseconds */
    _Atomic int64_t ewma_stamp_us;
    _Atomic int32_t active_rq;
    /* interval window for success-rate / failure-percentage (reset by main
     * every outlier interval) */
    _Atomic uint32_t win_total, win_errors;
    /* addr_len bytes of socket address, then addr_str's text and its NUL
     * (unaligned: read through sk_hstate_addr) */
    unsigned char tail[];
};

struct sk_cluster_state {
    struct sk_cluster_state *next;
    struct sk_cluster_state *hnext; /* registry hash chain */
    struct sk_host_state *hosts;    /* guarded by a lock striped over the clusters */
    /* circuit breakers: current usage, compared with the snapshot's thresholds */
    _Atomic int64_t cx_active;
    _Atomic int64_t rq_active;
    _Atomic int64_t rq_pending;
    _Atomic int64_t retries_active;
    _Atomic int ejected_hosts; /* currently ejected, for max_ejection_percent */
    /* counters (Envoy names, cluster.<name>.*) */
    _Atomic uint64_t upstream_rq_total, upstream_rq_2xx, upstream_rq_3xx, upstream_rq_4xx,
        upstream_rq_5xx;
    _Atomic uint64_t upstream_rq_retry, upstream_rq_retry_success, upstream_rq_retry_overflow;
    _Atomic uint64_t upstream_rq_timeout, upstream_rq_per_try_timeout;
    _Atomic uint64_t upstream_cx_overflow, upstream_rq_pending_overflow;
    _Atomic uint64_t upstream_cx_connect_fail;
    _Atomic uint64_t outlier_ejections_total, outlier_ejections_consecutive_5xx,
        outlier_ejections_success_rate, outlier_ejections_failure_percentage;
    _Atomic uint64_t health_check_attempt, health_check_success, health_check_failure;
    char name[]; /* process lifetime: runtimes may point at it */
};

/* Find or create. Never NULL unless out of memory. Thread-safe. */
struct sk_cluster_state *sk_cstate_get(const char *name);
struct sk_host_state *sk_hstate_get(struct sk_cluster_state *c, const struct sk_sockaddr *a);
/* The host's socket address, copied into *out (hosts store it compactly). */
void sk_hstate_addr(const struct sk_host_state *h, struct sk_sockaddr *out);
/* Same address as `a`? */
bool sk_hstate_addr_eq(const struct sk_host_state *h, const struct sk_sockaddr *a);
/* Hold while walking c->hosts (admin); the list only ever grows. */
void sk_cstate_lock_hosts(struct sk_cluster_state *c);
void sk_cstate_unlock_hosts(struct sk_cluster_state *c);
/* Iterate every cluster (admin, outlier timer). Callback runs under the
 * registry lock: keep it short, do not call sk_cstate_get from it. */
void sk_cstate_foreach(void (*fn)(struct sk_cluster_state *c, void *arg), void *arg);
/* Free everything (process exit, tests). */
void sk_cstate_free_all(void);

/* Monotonic milliseconds (CLOCK_MONOTONIC). */
int64_t sk_now_ms(void);

/* Is the host usable right now for new requests (not ejected, not failing
 * active checks)? */
static inline bool sk_hstate_usable(const struct sk_host_state *h, int64_t now_ms)
{
    if (atomic_load_explicit(&h->hc_status, memory_order_relaxed) == SK_HC_UNHEALTHY)
        return false;
    int64_t until = atomic_load_explicit(&h->ejected_until_ms, memory_order_relaxed);
    return until == 0 || until <= now_ms;
}

/* ---- outlier detection hooks (called by workers on request outcome) ---- */

enum sk_outcome {
    SK_OUT_SUCCESS = 0, /* non-5xx response */
    SK_OUT_5XX = 1,     /* upstream answered 500-599 (not 502/503/504) */
    SK_OUT_GATEWAY = 2, /* 502, 503, 504 from the upstream */
    SK_OUT_LOCAL = 3,   /* connect failure / reset / timeout (local origin) */
};

/* Record a request outcome; may eject the host (consecutive_* rules) when
 * `od` is non-NULL. Returns true if this call ejected the host. */
bool sk_outlier_record(struct sk_host_state *h, const struct sk_outlier *od, int outcome,
                       size_t cluster_hosts, int64_t now_ms);
/* Main thread, every od->interval: success-rate and failure-percentage
 * ejections over the window, then reset the window; clears expired
 * ejections. `hosts` are the cluster's current hosts. */
void sk_outlier_interval(struct sk_cluster_state *c, const struct sk_outlier *od,
                         struct sk_host_state **hosts, size_t n, int64_t now_ms);

#endif
