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

#include <stdatomic.h>
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
/* Mid-stream faults (our own; runtime chaos rules): once mid_after_bytes of
 * the response body went downstream, cut the rest. HTTP/1 downstream: the
 * connection is closed (short body). HTTP/2: RESET sends RST_STREAM,
 * TRUNCATE ends the stream early (END_STREAM), GRPC ends it with trailers
 * grpc-status mid_grpc_status. The upstream request is aborted. */
enum sk_fault_mid_kind {
    SK_FAULT_MID_NONE = 0,
    SK_FAULT_MID_RESET,
    SK_FAULT_MID_TRUNCATE,
    SK_FAULT_MID_GRPC,
};

/* Injected-fault counters of a runtime chaos rule (src/filters/chaos.c). */
struct sk_fault_counters {
    _Atomic uint64_t delays, aborts, rl, mid;
};

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
    int mid_kind; /* enum sk_fault_mid_kind */
    uint64_t mid_after_bytes;
    uint32_t mid_grpc_status;
    int32_t mid_rst_code; /* reset on HTTP/2: the RST_STREAM code; < 0 = INTERNAL_ERROR */
    struct sk_fraction mid_pct;
    /* Runtime chaos rules only (all NULL for config faults): count injected
     * faults here instead of fault.*, stay out of active_faults, and say
     * abort_detail in an abort's local reply. */
    struct sk_fault_counters *ctr_rule, *ctr_kind;
    const char *abort_detail;
};

extern const struct sk_http_filter_vt sk_fault_filter;

struct sk_stream;
/* One roll of the stream's worker PRNG (SKIFF_FAULT_SEED): true with
 * probability f. Shared with the runtime chaos rules. */
bool sk_fault_roll(const struct sk_stream *st, struct sk_fraction f);

struct sk_buf;
/* fault.* counters (and the runtime chaos ones: chaos.*) and the active_faults gauge (process-wide) */
void sk_fault_stats(struct sk_buf *out, bool prometheus);

#endif
