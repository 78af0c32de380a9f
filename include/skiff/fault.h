/* HTTP fault injection filter (envoy.extensions.filters.http.fault.v3.HTTPFault):
 * delay, abort (HTTP or gRPC status), response rate limit; the config model
 * translate.c builds and the runtime filter in src/filters/fault.c.
 *
 * Selection is random per request and per fault kind (delay, then abort; the
 * rate limit is decided first, as in Envoy). Each worker has its own PRNG;
 * SKIFF_FAULT_SEED (environment, read once) seeds them so that the same
 * request sequence on a worker gets the same faults. */
#ifndef SKIFF_FAULT_H
#define SKIFF_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "skiff/filter.h"
#include "skiff/model.h"

#define SK_FAULT_CFG_MAGIC 0x464c5431u /* tags a struct sk_fault_cfg (per-route configs) */

/* envoy.type.v3.FractionalPercent; denominator 100, 10000 or 1000000 */
struct sk_fraction {
    uint32_t numerator;
    uint32_t denominator;
};

enum sk_fault_delay_kind { SK_FAULT_DELAY_NONE = 0, SK_FAULT_DELAY_FIXED, SK_FAULT_DELAY_HEADER };
enum sk_fault_abort_kind {
    SK_FAULT_ABORT_NONE = 0,
    SK_FAULT_ABORT_HTTP,   /* http_status */
    SK_FAULT_ABORT_GRPC,   /* grpc_status */
    SK_FAULT_ABORT_HEADER, /* header_abort */
};
enum sk_fault_rl_kind { SK_FAULT_RL_NONE = 0, SK_FAULT_RL_FIXED, SK_FAULT_RL_HEADER };

struct sk_fault_cfg {
    uint32_t magic; /* SK_FAULT_CFG_MAGIC */
    int delay_kind; /* enum sk_fault_delay_kind */
    uint64_t delay_ms;
    struct sk_fraction delay_pct;
    int abort_kind; /* enum sk_fault_abort_kind */
    uint32_t abort_http_status;
    uint32_t abort_grpc_status;
    struct sk_fraction abort_pct;
    char *upstream_cluster; /* NULL = any */
    struct sk_header_match *headers;
    size_t nheaders;
    char **downstream_nodes;
    size_t ndownstream_nodes;
    bool has_max_active;
    uint32_t max_active_faults;
    int rl_kind; /* enum sk_fault_rl_kind */
    uint64_t rl_kbps;
    struct sk_fraction rl_pct;
};

extern const struct sk_http_filter_vt sk_fault_filter;

struct sk_buf;
/* fault.* counters and the active_faults gauge (process-wide) */
void sk_fault_stats(struct sk_buf *out, bool prometheus);

#endif
