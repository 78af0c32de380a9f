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

/* Returns 0, or a negative errno with *why set. */
int sk_admin_start(struct ev_loop *loop, const struct sk_sockaddr *addr,
                   const struct sk_admin_hooks *hooks, const char **why);
void sk_admin_stop(void);
/* Extra counters owned by the main thread (reloads). */
void sk_admin_count_reload(bool ok);

#endif
