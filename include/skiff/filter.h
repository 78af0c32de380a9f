/* HTTP filters (the ones before the router): a vtable per filter type, one
 * explicit registry (src/filters/registry.c), dispatch on the type URL.
 *
 * The router runs the HCM's http_filters in order after route selection and
 * before it acts on the route. A hook returns SK_FILTER_CONTINUE, or
 * SK_FILTER_STOP when it either answered (sk_stream_local_reply, which ends
 * the stream) or will resume the chain later with sk_stream_continue(st)
 * (e.g. after a delay). on_destroy runs at stream cleanup whatever happened:
 * stop timers there. Hooks run on the worker thread of the stream.
 *
 * Config: the translator builds each filter's config through the filter's
 * translate hook (filter config lives in the snapshot arena); per-route and
 * per-vhost typed_per_filter_config overrides replace it by filter name. */
#ifndef SKIFF_FILTER_H
#define SKIFF_FILTER_H

#include <stdbool.h>
#include <stddef.h>

struct sk_stream;

enum { SK_FILTER_CONTINUE = 0, SK_FILTER_STOP = 1 };

struct sk_filter_slot {
    const struct sk_http_filter_vt *vt;
    const void *cfg; /* effective config (route override or the HCM's) */
    void *state;     /* per-stream, the filter's own (allocate from st->arena) */
};

struct sk_http_filter_vt {
    const char *type_name; /* full message name, e.g. envoy.extensions.filters.http.fault.v3.HTTPFault */
    int (*on_request)(struct sk_stream *st, struct sk_filter_slot *slot);
    void (*on_destroy)(struct sk_stream *st, struct sk_filter_slot *slot);
    /* optional: response head from upstream (before it goes downstream);
     * may replace it with a local reply by returning SK_FILTER_STOP */
    int (*on_response)(struct sk_stream *st, struct sk_filter_slot *slot, int status);
    /* optional: response body bytes about to go downstream; returns how many
     * of the n bytes may go now (rate limiting), the rest stays queued */
    size_t (*on_response_data)(struct sk_stream *st, struct sk_filter_slot *slot, size_t n);
};

/* NULL if no runtime filter has that type (translate rejects those). */
const struct sk_http_filter_vt *sk_filter_lookup(const char *type_name);

/* The filters' counters for /stats: "name: value" lines, or Prometheus
 * exposition (admin thread; the counters are atomics). */
struct sk_buf;
void sk_filters_stats(struct sk_buf *out, bool prometheus);

/* Resume the filter chain after a filter returned SK_FILTER_STOP. */
void sk_stream_continue(struct sk_stream *st);

#define SK_MAX_HTTP_FILTERS 8

#endif
