/* xDS (issue 7): SotW ADS client on the main thread.
 *
 * Three parts, lowest first:
 *   - gRPC message framing (xds/grpc.c): 1-byte compressed flag (must be 0) +
 *     4-byte big-endian length + protobuf bytes, bounded by SK_GRPC_MAX_MSG.
 *   - the resource store (xds/resources.c): the last accepted resources of each
 *     type as protobuf-c messages, the Bootstrap assembly (file's
 *     static_resources + dynamic resources: listeners appended, each HCM with
 *     `rds` gets its RouteConfiguration inlined as route_config, each EDS
 *     cluster gets its ClusterLoadAssignment as load_assignment and type
 *     STATIC) and the ACK/NACK decision for a DiscoveryResponse. The assembled
 *     Bootstrap goes through sk_snapshot_build() (+ the prepare hook): the same
 *     translate + validate step as a file. No I/O; unit-testable and fuzzable.
 *     SDS Secrets are inlined into the TLS contexts that name them.
 *   - the ADS client (xds/ads.c): a non-blocking connection to the ADS
 *     cluster's first endpoint (TCP, or a Unix socket for a `pipe` address;
 *     TLS when the cluster has an UpstreamTlsContext), an nghttp2 client
 *     session carrying the StreamAggregatedResources bidi stream,
 *     subscriptions, initial-fetch timers, NACK rate limiting, reconnect with
 *     jittered exponential backoff (0.5 s .. 30 s), admin stats/config_dump.
 *     Also: a second stream for SDS (SecretDiscoveryService/StreamSecrets) when
 *     secrets name an api_config_source GRPC cluster (same store, stats and
 *     timers), and lds_config/cds_config files (path_config_source) watched
 *     and fed to the store like pushed responses.
 *
 * Everything here runs on the main thread. */
#ifndef SKIFF_XDS_H
#define SKIFF_XDS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "skiff/cfgerr.h"
#include "skiff/model.h"

struct sk_buf;
struct Envoy__Config__Bootstrap__V3__Bootstrap;
struct Envoy__Service__Discovery__V3__DiscoveryResponse;

/* ---- gRPC framing ----------------------------------------------------------- */

#define SK_GRPC_MAX_MSG (16u * 1024 * 1024)

/* Packs `m` into a newly malloc'd gRPC frame (5-byte prefix + bytes). Returns 0
 * or SK_ERR_NOMEM / SK_ERR_TOO_LARGE. */
int sk_grpc_frame(const ProtobufCMessage *m, uint8_t **out, size_t *len);

/* Incremental decoder: bytes in any split, messages out whole. */
struct sk_grpc_dec {
    uint8_t hdr[5];
    size_t hdr_len; /* prefix bytes collected */
    uint8_t *msg;   /* body being collected (malloc'd, exact size) */
    size_t msg_len; /* announced body length */
    size_t msg_got;
    size_t max; /* limit; 0 = SK_GRPC_MAX_MSG */
};
void sk_grpc_dec_init(struct sk_grpc_dec *d);
void sk_grpc_dec_free(struct sk_grpc_dec *d);
/* Called once per complete message; the bytes are valid during the call only.
 * A non-zero return stops decoding and is returned by sk_grpc_dec_feed. */
typedef int (*sk_grpc_msg_fn)(void *arg, const uint8_t *msg, size_t len);
/* Feeds bytes. Returns 0, the callback's non-zero return, SK_ERR_TOO_LARGE
 * (announced length over the limit), SK_ERR_PROTO (compressed flag set: we
 * never advertise grpc-accept-encoding) or SK_ERR_NOMEM. After an error the
 * decoder must not be fed again (the stream is dead). */
int sk_grpc_dec_feed(struct sk_grpc_dec *d, const uint8_t *p, size_t n, sk_grpc_msg_fn fn,
                     void *arg);

/* ---- resource types ------------------------------------------------------------ */

/* Order = the order in which requests are sent on a new stream (CDS, EDS, LDS, RDS:
 * make-before-break, as Envoy; then SDS, whose names come from listeners and
 * clusters). */
enum sk_xds_type { SK_XDS_CDS = 0, SK_XDS_EDS, SK_XDS_LDS, SK_XDS_RDS, SK_XDS_SDS, SK_XDS_NTYPES };

const char *sk_xds_type_url(int type);     /* "type.googleapis.com/envoy..." */
const char *sk_xds_type_short(int type);   /* "CDS", ... for logs */
int sk_xds_type_from_url(const char *url); /* -1 if not one of ours */

/* ---- resource store ------------------------------------------------------------ */

struct sk_xds_store;

struct sk_xds_hooks {
    /* Runtime preparation of a translated snapshot (sk_tls_prepare); NULL = none.
     * Non-zero rejects it (errors in errs). */
    int (*prepare)(struct sk_snapshot *s, struct sk_cfgerrs *errs);
    /* Publishes a warm snapshot; takes the reference on success (returns 0),
     * returns < 0 (e.g. a listener could not be bound) leaving it to the caller.
     * NULL = do not publish (tests, fuzzing). */
    int (*publish)(void *arg, struct sk_snapshot *s);
    void *arg;
};

/* Takes ownership of `bs` (a Bootstrap unpacked / parsed with the default
 * allocator). NULL on allocation failure (bs is freed). */
struct sk_xds_store *sk_xds_store_new(struct Envoy__Config__Bootstrap__V3__Bootstrap *bs,
                                      const struct sk_xds_hooks *hooks);
void sk_xds_store_free(struct sk_xds_store *st);

/* Replaces the bootstrap (SIGHUP) and rebuilds; if the result is warm it is
 * published. Takes `bs` whether it succeeds or not. Returns 0 or < 0 with errors
 * in errs (the previous bootstrap stays). */
int sk_xds_store_set_bootstrap(struct sk_xds_store *st,
                               struct Envoy__Config__Bootstrap__V3__Bootstrap *bs,
                               struct sk_cfgerrs *errs);
const struct Envoy__Config__Bootstrap__V3__Bootstrap *
sk_xds_store_bootstrap(const struct sk_xds_store *st);

/* Which types the bootstrap asks for: CDS/LDS wildcard (cds_config/lds_config
 * ads), EDS/RDS when names are known. */
bool sk_xds_store_wants(const struct sk_xds_store *st, int type);

/* Outcome of one DiscoveryResponse. */
struct sk_xds_result {
    bool ack;                          /* true: ACK; false: NACK with `error` */
    char *error;                       /* NACK message (malloc'd; sk_xds_result_free) */
    bool rebuilt;                      /* a snapshot was built */
    bool published;                    /* ... and handed to hooks.publish */
    bool unchanged;                    /* identical resources: nothing was rebuilt */
    bool incremental;                  /* EDS-only: applied by deriving the published
                                          snapshot (no full build) */
    bool damped;                       /* the same rejected resources again: NACKed
                                          without decoding or building */
    size_t rejected;                   /* resources rejected individually (partial NACK) */
    bool names_changed[SK_XDS_NTYPES]; /* RDS/EDS/SDS subscription sets changed */
};
void sk_xds_result_free(struct sk_xds_result *r);

/* Handles a DiscoveryResponse (any type URL; unknown -> NACK). Valid resources
 * are applied, invalid ones rejected individually where the errors can be tied
 * to them (else the whole update of that type is rejected and the previous
 * resources of that type are kept). Identical resources cost nothing. */
void sk_xds_store_handle(struct sk_xds_store *st,
                         const struct Envoy__Service__Discovery__V3__DiscoveryResponse *r,
                         struct sk_xds_result *res);

/* Last accepted version_info of a type ("" before the first ACK). */
const char *sk_xds_store_version(const struct sk_xds_store *st, int type);
/* Current subscription names of a named type (RDS/EDS): sorted, unique; valid
 * until the next store call. For CDS/LDS returns 0 (wildcard). */
size_t sk_xds_store_names(const struct sk_xds_store *st, int type, const char *const **names);
/* The cluster of the SecretDiscoveryService stream the secrets come from (an
 * SdsSecretConfig whose sds_config is api_config_source GRPC envoy_grpc), or
 * NULL: secrets come over ADS. The first one seen is kept; then every
 * subscribed Secret is requested on that stream. */
const char *sk_xds_store_sds_cluster(const struct sk_xds_store *st);
/* First complete config (every subscribed type answered, every RDS/EDS name
 * delivered) was built (and published when a publish hook is set). */
bool sk_xds_store_warm(const struct sk_xds_store *st);
/* Number of resources of a type currently accepted. */
size_t sk_xds_store_count(const struct sk_xds_store *st, int type);
/* Snapshots built so far (successful translate + prepare), for tests. */
uint64_t sk_xds_store_builds(const struct sk_xds_store *st);
/* EDS updates applied without a full build (derived snapshots). */
uint64_t sk_xds_store_incremental(const struct sk_xds_store *st);

/* Initial fetch timeouts (ConfigSource.initial_fetch_timeout: unset = 15 s,
 * 0s = wait forever). Times are the caller's clock (ev_now), in seconds.
 *   arm: starts the timer of every wanted resource not cached yet (CDS/LDS:
 *     the first response; RDS/EDS: each subscribed name). Call once the
 *     subscriptions went out on a connected stream (and after each change).
 *   disarm: the stream is gone: running timers stop (restarted by arm on the
 *     next stream; resources already treated as does-not-exist stay so).
 *   next_deadline: the earliest running timer, 0 = none.
 *   expire: timers due at `now` fire: a CDS/LDS type counts as answered
 *     (empty), an RDS/EDS name is treated as does-not-exist (built as an empty
 *     route config -> 404 NR / a cluster without endpoints -> 503 UH) until it
 *     arrives; logged. Rebuilds and publishes when something expired (res as
 *     for sk_xds_store_handle). Returns the number of expired timers. */
void sk_xds_store_arm(struct sk_xds_store *st, double now);
void sk_xds_store_disarm(struct sk_xds_store *st);
double sk_xds_store_next_deadline(const struct sk_xds_store *st);
size_t sk_xds_store_expire(struct sk_xds_store *st, double now, struct sk_xds_result *res);
uint64_t sk_xds_store_init_fetch_timeouts(const struct sk_xds_store *st, int type);
bool sk_xds_store_does_not_exist(const struct sk_xds_store *st, int type, const char *name);
/* Appends a JSON array, one object per type: version_info, last_updated,
 * last_nack {version_info, nonce, time, details}, resources [{name,
 * version_info, last_updated, error_state?}], rejected, waiting, does_not_exist. */
void sk_xds_store_dump(const struct sk_xds_store *st, struct sk_buf *b);

/* ---- ADS client ------------------------------------------------------------------- */

struct sk_ads;

struct sk_ads_opts {
    struct ev_loop *loop;
    const char *config_path;     /* the bootstrap file (re-read on reload) */
    const char *service_node;    /* --service-node: overrides node.id (NULL = keep) */
    const char *service_cluster; /* --service-cluster: overrides node.cluster */
    int (*prepare)(struct sk_snapshot *s, struct sk_cfgerrs *errs);
    /* see sk_xds_hooks.publish; `source` names the update for logs */
    int (*publish)(struct sk_snapshot *s, const char *source);
};

/* Starts the client for the serving snapshot `cur` (its xds config names the
 * ADS cluster; a STATIC cluster, first endpoint). Parses opts->config_path again
 * for the protobuf Bootstrap. Returns NULL (logged) on failure. */
struct sk_ads *sk_ads_start(const struct sk_ads_opts *opts, const struct sk_snapshot *cur);
/* SIGHUP: re-read the bootstrap file and rebuild with the dynamic resources.
 * Returns 0, or < 0 (errors logged; the previous config keeps serving). */
int sk_ads_reload(struct sk_ads *a);
/* 0 until the first complete xDS config was published, then its snapshot
 * version (/ready waits until every worker applied it). */
uint64_t sk_ads_ready_version(const struct sk_ads *a);
void sk_ads_stop(struct sk_ads *a);

/* Admin (main thread). Counters and gauges of the running ADS client, Envoy's
 * names: control_plane.connected_state, control_plane.rate_limit_enforced and
 * per type (cluster_manager.cds, listener_manager.lds, rds, eds, sds):
 * update_attempt, update_success, update_rejected, update_failure,
 * update_damped, init_fetch_timeout, update_time (ms since the epoch of the
 * last ACK), version (53-bit FNV-1a hash of the accepted version_info).
 * prometheus: "# TYPE skiff_x counter" + samples (admin adds HELP/_total).
 * Nothing without an ADS client. */
void sk_xds_stats(struct sk_buf *out, bool prometheus);
/* Appends `, "xds_status": {...}` to /config_dump (nothing without ADS). */
void sk_xds_config_dump(struct sk_buf *out);

#endif
