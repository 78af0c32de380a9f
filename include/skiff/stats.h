/* Counters. Each worker owns one struct sk_stats and is its only writer
 * (relaxed load+store, no locked instructions on the request path); the admin
 * thread sums all workers with relaxed loads. Names follow Envoy's where one
 * exists. */
#ifndef SKIFF_STATS_H
#define SKIFF_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#define SK_STATS_LIST(X)                                                                           \
    X(downstream_cx_total)                                                                         \
    X(downstream_cx_active)                                                                        \
    X(downstream_cx_destroy)                                                                       \
    X(downstream_cx_http1_total)                                                                   \
    X(downstream_cx_http2_total)                                                                   \
    X(downstream_cx_tcp_total)                                                                     \
    X(downstream_cx_protocol_error)                                                                \
    X(downstream_cx_idle_timeout)                                                                  \
    X(downstream_rq_total)                                                                         \
    X(downstream_rq_active)                                                                        \
    X(downstream_rq_1xx)                                                                           \
    X(downstream_rq_2xx)                                                                           \
    X(downstream_rq_3xx)                                                                           \
    X(downstream_rq_4xx)                                                                           \
    X(downstream_rq_5xx)                                                                           \
    X(downstream_rq_rejected_smuggling)                                                            \
    X(downstream_rq_idle_timeout)                                                                  \
    X(downstream_rq_timeout)                                                                       \
    X(downstream_rq_header_timeout)                                                                \
    X(downstream_rq_max_duration_reached)                                                          \
    X(upstream_cx_total)                                                                           \
    X(upstream_cx_active)                                                                          \
    X(upstream_cx_connect_fail)                                                                    \
    X(upstream_cx_connect_timeout)                                                                 \
    X(upstream_cx_destroy)                                                                         \
    X(upstream_cx_reused)                                                                          \
    X(upstream_rq_total)                                                                           \
    X(upstream_rq_1xx)                                                                             \
    X(upstream_rq_2xx)                                                                             \
    X(upstream_rq_3xx)                                                                             \
    X(upstream_rq_4xx)                                                                             \
    X(upstream_rq_5xx)                                                                             \
    X(upstream_rq_timeout)                                                                         \
    X(upstream_rq_reset)                                                                           \
    X(rq_no_route)                                                                                 \
    X(rq_no_healthy_upstream)                                                                      \
    X(rq_direct_response)                                                                          \
    X(tcp_bytes_rx)                                                                                \
    X(tcp_bytes_tx)                                                                                \
    X(access_log_written)                                                                          \
    X(access_log_dropped)                                                                          \
    X(config_reload_ok)                                                                            \
    X(config_reload_rejected)                                                                      \
    X(io_batches)                                                                                  \
    X(io_batched_sends)

enum sk_stat_id {
#define SK_STAT_ENUM(n) SK_ST_##n,
    SK_STATS_LIST(SK_STAT_ENUM)
#undef SK_STAT_ENUM
    SK_ST__COUNT
};

struct sk_stats {
    _Atomic uint64_t v[SK_ST__COUNT];
};

extern const char *const sk_stat_names[SK_ST__COUNT];

static inline void sk_stat_add(struct sk_stats *s, enum sk_stat_id id, int64_t d)
{
    uint64_t cur = atomic_load_explicit(&s->v[id], memory_order_relaxed);
    atomic_store_explicit(&s->v[id], cur + (uint64_t)d, memory_order_relaxed);
}
static inline uint64_t sk_stat_get(const struct sk_stats *s, enum sk_stat_id id)
{
    return atomic_load_explicit(&s->v[id], memory_order_relaxed);
}

#endif
