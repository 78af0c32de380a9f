/* Active health checking (Cluster.health_checks[], Envoy semantics), run by
 * the main thread on its libev loop.
 *
 * One checker per (cluster, host, health_checks[] entry). Each checker
 * repeatedly opens a fresh connection to the host, runs one HTTP or TCP check
 * bounded by `timeout` (connect + request + response), closes the connection
 * and waits for the next interval. Results go to the process-wide host state
 * (hoststate.h): sk_host_state.hc_status (atomic store; workers read it through
 * sk_hstate_usable) and the cluster counters health_check_attempt / _success /
 * _failure (plus per-host hc_checks / hc_failures).
 *
 * Scheduling (per checker):
 *   - first check after a random delay in [0, initial_jitter];
 *   - then, as Envoy's HealthCheckerImplBase::interval(): `interval` after
 *     a pass (host healthy or unknown), `healthy_edge_interval` after a pass
 *     that leaves an UNHEALTHY host short of healthy_threshold,
 *     `unhealthy_edge_interval` after a failure that leaves the host short of
 *     unhealthy_threshold, `unhealthy_interval` after a failure of a host that
 *     is (now) UNHEALTHY; a 0 / SK_DUR_NONE field falls back to its Envoy
 *     default (unhealthy_edge -> unhealthy -> interval, healthy_edge ->
 *     interval);
 *   - plus random [0, interval_jitter) and [0, interval_jitter_percent% of
 *     the base) on top, as Envoy does.
 *   no_traffic_interval / no_traffic_healthy_interval are ignored: we always
 *   use the intervals above (Envoy slows down to them for clusters that never
 *   saw traffic).
 *
 * Verdicts (Envoy's rules):
 *   - A host starts SK_HC_UNKNOWN (usable). Envoy starts hosts as failed
 *     until their first check only while a cluster warms; we never do.
 *   - A pass while the host is not UNHEALTHY marks it HEALTHY at once (the
 *     first pass of a host never checked is enough, as in Envoy).
 *   - An UNHEALTHY host needs `healthy_threshold` consecutive passes.
 *   - "Network" failures (connect refused/unreachable, reset, closed before
 *     the answer, timeout, malformed HTTP response, TCP receive mismatch at
 *     close or at the 64 KiB bound) need `unhealthy_threshold` consecutive
 *     failures to mark a host UNHEALTHY.
 *   - An HTTP answer whose status is not in expected_statuses (default
 *     [200,201)), e.g. a 503, marks the host UNHEALTHY immediately, ignoring
 *     unhealthy_threshold: Envoy's documented behaviour for statuses outside
 *     expected_statuses / retriable_statuses (we have no retriable_statuses).
 *   - With several health_checks[] entries a host is UNHEALTHY while any of
 *     its checkers says so, else HEALTHY once any checker passed it.
 *   Transitions are logged at info level, e.g.
 *   "health: host 10.0.0.1:80 of cluster web is now UNHEALTHY (3 consecutive
 *   failures: connection refused)".
 *
 * HTTP check: "GET <path> HTTP/1.1", Host: <host, or the cluster name>,
 * User-Agent: skiff-health-check, Connection: close, then
 * request_headers_to_add (Host / Connection / Content-Length /
 * Transfer-Encoding cannot be overridden; a removed or overwritten
 * user-agent is honoured). The verdict is taken on the response head
 * (sk_h1_parse_response; 1xx heads other than 101 are skipped); the body is
 * not read (Envoy waits for end of stream). Heads over 32 KiB fail.
 * TCP check: connect; send `send` if any; with receive blocks, read until
 * every block was seen in order (not necessarily contiguous, as Envoy),
 * bounded at 64 KiB; without receive blocks, connected (+ sent) = pass.
 * Connections are never reused (Envoy's reuse_connection default is true;
 * one connection per check is simpler and equally correct).
 * TLS clusters (sk_cluster.tls != NULL): checks run without TLS, so every
 * check degrades to a TCP connect-only check (warned at apply).
 *
 * Lifetime: the module keeps a reference on the last applied snapshot (the
 * checkers point into it) and drops it on the next apply / stop_all.
 * When a (cluster, host) pair goes away (host removed, cluster removed or no
 * longer health checked) its checkers are cancelled (watchers stopped, fd
 * closed, buffers freed) and the host's hc_status is reset to SK_HC_UNKNOWN.
 *
 * Threading: main thread only. None of these may be called from inside a
 * health-check callback (they are not: the module calls no user callbacks). */
#ifndef SKIFF_HEALTH_H
#define SKIFF_HEALTH_H

#include <ev.h>
#include <stddef.h>

#include "skiff/model.h"

/* Called by main after each publish. Starts, stops or reconfigures checkers
 * for every cluster of `snap` with health_checks (n > 0). Hosts: for STATIC
 * and EDS clusters the endpoints with a resolved addr (duplicates folded);
 * for STRICT_DNS / LOGICAL_DNS clusters the last set given to
 * sk_health_set_hosts (possibly before this apply). Checkers of unchanged
 * (cluster, host) pairs keep running with their pass/fail streaks; when a
 * cluster's health_checks[] changed (any field), its checkers restart with
 * fresh streaks (current hc_status kept) after a new initial jitter.
 * Takes its own reference on `snap`. `loop` must be the same on every call.
 * Out of memory: the affected checker/host is skipped (logged). */
void sk_health_apply(struct ev_loop *loop, const struct sk_snapshot *snap);

/* DNS clusters: the resolved host set of `cluster` is now addrs[0..n). Main
 * calls it whenever it (re)publishes hosts; an unchanged set is a no-op for
 * running checkers. Remembered even for clusters not (yet) health checked, so
 * the order relative to sk_health_apply does not matter; forgotten when an
 * apply's snapshot no longer has the cluster. Copies addrs. */
void sk_health_set_hosts(const char *cluster, const struct sk_sockaddr *addrs, size_t n);

/* At exit: cancel every check (fds closed) and free everything, including
 * the snapshot reference. Does not touch host state, so it may run before or
 * after sk_cstate_free_all (call it before, to be safe). Apply may be called
 * again afterwards. */
void sk_health_stop_all(void);

#endif
