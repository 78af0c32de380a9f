/* Admin HTTP server on the main thread's loop. Small, separate from the data
 * path: one request per connection, bounded input, closes after replying.
 * Read-only endpoints answer GET/HEAD; mutating ones only POST (else 405).
 *   GET /ready             200 "LIVE" once listeners are bound and the initial
 *                          config applied by every worker; 503 before and
 *                          while draining
 *   GET /healthz           liveness: 200 while the process runs
 *   GET /stats             "name: value" counters summed over workers, plus
 *                          histogram lines (<name>.count/.sum_us/.p50_us/.p90_us/
 *                          .p99_us); ?format=json: one JSON object
 *   GET /stats/prometheus  Prometheus text exposition 0.0.4 (HELP/TYPE, counters
 *                          *_total, gauges, histograms, process metrics)
 *   GET /server_info       state, version, config version, uptime
 *   GET /clusters          every cluster's circuit-breaker usage and every host's
 *                          health, ejection, active/total requests, success rate,
 *                          EWMA latency (Envoy's text format: cluster::host::key::value);
 *                          ?format=json
 *   GET /listeners         name::address of every listener (?format=json)
 *   GET /config_dump       JSON summary of the serving snapshot
 *   GET /memory            RSS and glibc malloc statistics (JSON)
 *   GET /logging           current log level; POST /logging?level=L changes it
 *   GET /ui                live dashboard (self-contained HTML)
 *   POST /quitquitquit     start a graceful drain and exit (like SIGTERM)
 *   POST /drain_listeners  stop accepting on every listener, keep running
 *   POST /healthcheck/fail | /healthcheck/ok  force /ready to 503 / clear it
 *   /chaos/faults          runtime chaos rules (src/filters/chaos.c, include/skiff/chaos.h),
 *                          registered by main through sk_admin_add_handler
 */
#ifndef SKIFF_ADMIN_H
#define SKIFF_ADMIN_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "skiff/model.h"

struct sk_admin_hooks {
    bool (*ready)(void);        /* listeners bound + config applied + not draining */
    const char *(*state)(void); /* "INITIALIZING" / "LIVE" / "DRAINING" */
    void (*quit)(void);         /* start graceful shutdown */
    uint64_t (*config_version)(void);
    const struct sk_snapshot *(*snapshot)(void); /* main thread's current snapshot */
    void (*drain_listeners)(void); /* stop accepting on every listener; keep running */
};

/* Request bodies: Content-Length only (chunked -> 411), at most
 * SK_ADMIN_BODY_MAX bytes (more -> 413 before any handler runs). */
#define SK_ADMIN_BODY_MAX 8192

struct sk_buf;
/* Endpoints of another module under a path prefix (main thread), e.g. the
 * runtime chaos API under "/chaos": gets method, path (without the query),
 * query, and the request body; writes the response body into out, may set
 * *ctype (default application/json), returns the HTTP status. */
typedef int (*sk_admin_handler_fn)(const char *method, size_t mlen, const char *path, size_t plen,
                                   const char *query, size_t qlen, const char *body, size_t blen,
                                   struct sk_buf *out, const char **ctype);
/* Register `prefix` (a static string; matches itself and prefix/...). Up
 * to 4 handlers; 0, or -1 when full. Call before or after sk_admin_start. */
int sk_admin_add_handler(const char *prefix, sk_admin_handler_fn fn);

/* Returns 0, or a negative errno with *why set. */
int sk_admin_start(struct ev_loop *loop, const struct sk_sockaddr *addr,
                   const struct sk_admin_hooks *hooks, const char **why);
void sk_admin_stop(void);
/* Extra counters owned by the main thread (reloads). */
void sk_admin_count_reload(bool ok);

#endif
