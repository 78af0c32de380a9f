/* Trace context propagation: W3C Trace Context (traceparent / tracestate)
 * and Zipkin B3 (x-b3-* multi headers, `b3` single header).
 *
 * skiff does not export spans; it is a hop that keeps traces connected:
 *   - a valid incoming traceparent keeps its trace id and flags, and gets a new
 *     parent-id (our span); tracestate is passed through untouched;
 *   - an invalid traceparent is dropped together with its tracestate (W3C:
 *     tracestate must not be used without a valid traceparent);
 *   - without one, a new trace is started when the sampling decision says so
 *     (the B3 trace id is reused when the request carries a valid B3 context);
 *   - B3 contexts present on the request are propagated: same trace id and
 *     sampling, new span id, parent = the incoming span id. Both formats
 *     carry the same (our) span id.
 * The headers are rewritten on st->req, so the upstream, the filters and the
 * access log (%TRACE_ID%) all see the same context.
 *
 * Everything except sk_tracing_request() is a pure function (unit-tested). */
#ifndef SKIFF_TRACING_H
#define SKIFF_TRACING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sk_stream;

struct sk_trace_ctx {
    uint8_t trace_id[16]; /* B3 64-bit ids are left-padded with zeros */
    uint8_t span_id[8];   /* the incoming parent-id / span id */
    uint8_t flags;        /* W3C trace-flags; bit 0 = sampled */
    bool has_parent;      /* B3: x-b3-parentspanid given */
    uint8_t parent_id[8];
    int sampled;          /* B3: -1 absent (defer), 0, 1; 2 = debug ("d") */
    bool trace_id_64;     /* B3: the incoming trace id had 16 hex digits */
};

/* W3C traceparent "00-<32 hex>-<16 hex>-<2 hex>" (lower-case hex; ids not all
 * zero; version ff invalid; a future version may append "-..." fields).
 * Returns true and fills out on success. */
bool sk_trace_parse_traceparent(const char *v, size_t n, struct sk_trace_ctx *out);
/* Writes exactly 55 characters + NUL into out[56]. */
void sk_trace_format_traceparent(char out[56], const uint8_t trace_id[16],
                                 const uint8_t span_id[8], uint8_t flags);

/* B3 multi-header context (values may be NULL when absent): trace id (16 or
 * 32 hex) and span id (16 hex) are required; sampled "0"/"1"/"true"/"false";
 * flags "1" = debug. */
bool sk_trace_parse_b3_multi(const char *trace, size_t tl, const char *span, size_t sl,
                             const char *parent, size_t pl, const char *sampled, size_t sml,
                             const char *flags, size_t fl, struct sk_trace_ctx *out);
/* B3 single header "{trace}-{span}[-{sampling}[-{parent}]]". A bare sampling
 * state ("0", "1", "d") is not a context: returns false with out->sampled set. */
bool sk_trace_parse_b3_single(const char *v, size_t n, struct sk_trace_ctx *out);
/* "{trace}-{span}-{sampling}[-{parent}]" into out (>= 72 bytes); returns length. */
size_t sk_trace_format_b3_single(char *out, const struct sk_trace_ctx *c, const uint8_t span[8],
                                 bool with_parent);

/* Lower-case hex of n bytes into out (2n chars, no NUL). */
void sk_trace_hex(char *out, const uint8_t *p, size_t n);

/* Router hook, after x-request-id generation: rewrite the request's trace
 * headers as described above. Worker thread. */
void sk_tracing_request(struct sk_stream *st);

#endif
