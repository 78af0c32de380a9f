/* The config model: one immutable, validated snapshot built by
 * sk_snapshot_build() (config/translate.c) from protobuf-c messages, whether
 * they came from the bootstrap YAML or from xDS.
 *
 * Everything here is allocated from snap->arena and is read-only once
 * published. Pointers between objects (route -> cluster) are resolved at build
 * time, so a snapshot that exists is valid: the data path never looks a
 * name up and finds nothing.
 *
 * Durations are milliseconds in uint64_t; SK_DUR_NONE means "disabled"
 * (Envoy's 0s), and each field documents its default when unset.
 * Strings are NUL-terminated (config data is not on the hot path for copies;
 * lengths are cached where the data path compares them).
 */
#ifndef SKIFF_MODEL_H
#define SKIFF_MODEL_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "skiff/arena.h"

#define SK_DUR_NONE UINT64_MAX /* timeout disabled */

struct sk_cluster;
struct sk_toxics_cfg; /* toxics.h */

/* ---- small shared types ---------------------------------------------- */

struct sk_sockaddr {
    struct sockaddr_storage ss;
    socklen_t len;
};

enum sk_hdr_append {
    SK_HDR_APPEND_IF_EXISTS_OR_ADD = 0,
    SK_HDR_ADD_IF_ABSENT = 1,
    SK_HDR_OVERWRITE_IF_EXISTS_OR_ADD = 2,
    SK_HDR_OVERWRITE_IF_EXISTS = 3,
};

struct sk_hdr_op { /* HeaderValueOption */
    char *key;     /* lower-cased */
    size_t key_len;
    char *value;
    size_t value_len;
    int action; /* enum sk_hdr_append; deprecated `append: false` maps to OVERWRITE_IF_EXISTS_OR_ADD */
    bool keep_empty_value;
};

struct sk_hdr_ops { /* *_headers_to_add / *_headers_to_remove */
    struct sk_hdr_op *add;
    size_t nadd;
    char **remove; /* lower-cased names */
    size_t nremove;
};

enum sk_str_match_kind {
    SK_STR_EXACT = 0,
    SK_STR_PREFIX,
    SK_STR_SUFFIX,
    SK_STR_CONTAINS,
    SK_STR_PRESENT, /* header present (present_match) */
};

struct sk_header_match { /* HeaderMatcher */
    char *name;            /* lower-cased */
    size_t name_len;
    int kind;              /* enum sk_str_match_kind */
    char *value;
    size_t value_len;
    bool ignore_case;      /* string_match.ignore_case */
    bool invert;           /* invert_match */
    bool present;          /* for SK_STR_PRESENT: present_match value */
};

/* ---- routes ------------------------------------------------------------ */

enum sk_path_match_kind { SK_PATH_PREFIX = 0, SK_PATH_EXACT = 1 };

struct sk_route_match {
    int path_kind; /* enum sk_path_match_kind */
    char *path;    /* prefix or exact path ("/" for match-all prefix) */
    size_t path_len;
    bool case_sensitive; /* default true */
    struct sk_header_match *headers;
    size_t nheaders;
};

struct sk_cluster_weight {
    char *name;
    struct sk_cluster *cluster; /* resolved */
    uint32_t weight;
    struct sk_hdr_ops hdrs_req, hdrs_resp;
};

enum sk_route_action_kind {
    SK_ROUTE_CLUSTER = 0,  /* route.cluster */
    SK_ROUTE_WEIGHTED = 1, /* route.weighted_clusters */
    SK_ROUTE_DIRECT = 2,   /* direct_response */
    SK_ROUTE_REDIRECT = 3, /* redirect (reserved; translate rejects it for now) */
};

/* RetryPolicy.retry_on tokens (comma list in the config) */
enum {
    SK_RETRY_ON_5XX = 1u << 0,
    SK_RETRY_ON_GATEWAY_ERROR = 1u << 1, /* 502, 503, 504 */
    SK_RETRY_ON_RESET = 1u << 2,
    SK_RETRY_ON_RESET_BEFORE_REQUEST = 1u << 3,
    SK_RETRY_ON_CONNECT_FAILURE = 1u << 4,
    SK_RETRY_ON_ENVOY_RATELIMITED = 1u << 5,
    SK_RETRY_ON_RETRIABLE_4XX = 1u << 6, /* 409 */
    SK_RETRY_ON_REFUSED_STREAM = 1u << 7,
    SK_RETRY_ON_RETRIABLE_STATUS_CODES = 1u << 8,
    SK_RETRY_ON_HTTP3_POST_CONNECT_FAILURE = 1u << 9, /* accepted, never fires (no h3) */
    /* gRPC status in response headers/trailers */
    SK_RETRY_ON_GRPC_CANCELLED = 1u << 16,
    SK_RETRY_ON_GRPC_DEADLINE_EXCEEDED = 1u << 17,
    SK_RETRY_ON_GRPC_INTERNAL = 1u << 18,
    SK_RETRY_ON_GRPC_RESOURCE_EXHAUSTED = 1u << 19,
    SK_RETRY_ON_GRPC_UNAVAILABLE = 1u << 20,
};

struct sk_retry_policy { /* filled by the resilience work (issue 5) */
    uint32_t retry_on;   /* bit set, SK_RETRY_ON_* */
    uint32_t num_retries; /* default 1 */
    uint64_t per_try_timeout_ms; /* SK_DUR_NONE = none (default) */
    uint64_t base_interval_ms;   /* retry_back_off.base_interval, default 25 */
    uint64_t max_interval_ms;    /* default 10 x base */
    uint32_t *retriable_status_codes;
    size_t nretriable_status_codes;
    /* retry_host_predicate envoy.retry_host_predicates.previous_hosts present:
     * a retry should pick a host not tried before */
    bool retry_other_host;
    uint32_t host_selection_retry_max_attempts; /* default 1 */
};

struct sk_route {
    char *name;
    struct sk_route_match match;
    int action; /* enum sk_route_action_kind */

    /* SK_ROUTE_CLUSTER */
    char *cluster_name;
    struct sk_cluster *cluster;
    /* SK_ROUTE_WEIGHTED */
    struct sk_cluster_weight *weighted;
    size_t nweighted;
    uint32_t total_weight;
    /* cluster / weighted */
    char *prefix_rewrite;       /* NULL = none */
    char *host_rewrite_literal; /* NULL = none */
    uint64_t timeout_ms;        /* route.timeout; default 15000; 0s -> SK_DUR_NONE */
    uint64_t idle_timeout_ms;   /* SK_DUR_NONE unless set */
    bool idle_timeout_set;      /* route.idle_timeout given: it overrides the HCM's
                                   stream_idle_timeout (SK_DUR_NONE then = disabled) */
    uint64_t max_stream_duration_ms; /* max_stream_duration.max_stream_duration; SK_DUR_NONE
                                        = use the HCM's (default) */
    bool grpc_timeout_header;   /* honour the request's grpc-timeout as the route timeout
                                   (max_stream_duration.grpc_timeout_header_max or the
                                   deprecated max_grpc_timeout is set) */
    uint64_t grpc_timeout_header_max_ms; /* cap for grpc-timeout; 0 = no cap */
    bool auto_host_rewrite;     /* :authority = chosen endpoint's hostname (DNS clusters) */
    uint32_t cluster_not_found_status; /* cluster_not_found_response_code: 503 (default),
                                          404 or 500; only reachable with dynamic CDS */
    struct sk_hash_policy *hash_policy; /* route.hash_policy (RING_HASH / MAGLEV) */
    size_t nhash_policy;
    uint64_t per_request_buffer_limit_bytes; /* body kept for retries; default 1 MiB */
    bool include_attempt_count; /* vhost include_request_attempt_count: x-envoy-attempt-count */
    struct sk_retry_policy *retry; /* NULL = no retries; the vhost's policy is copied in
                                      when the route has none */

    /* SK_ROUTE_DIRECT */
    uint32_t direct_status;
    char *direct_body; /* may be NULL */
    size_t direct_body_len;

    struct sk_hdr_ops hdrs_req, hdrs_resp;
    struct sk_filter_override *filter_overrides; /* route's, then the vhost's merged in */
    size_t nfilter_overrides;
};

struct sk_vhost {
    char *name;
    char **domains; /* lower-cased, as configured ("*", "*.x", "x.*", "x", "x:port") */
    size_t ndomains;
    struct sk_route *routes;
    size_t nroutes;
    struct sk_hdr_ops hdrs_req, hdrs_resp;
    bool include_request_attempt_count;     /* x-envoy-attempt-count upstream */
    bool include_attempt_count_in_response; /* x-envoy-attempt-count downstream */
    struct sk_scope *scope;                 /* vhost.<name>.* stats; set at publish */
};

struct sk_route_config {
    char *name;
    struct sk_vhost *vhosts;
    size_t nvhosts;
    struct sk_hdr_ops hdrs_req, hdrs_resp;
    bool ignore_port_in_host_matching; /* strip ":port" from Host before domain match */
};

/* ---- TLS (issue 4) ------------------------------------------------------ */

enum sk_ds_kind { SK_DS_NONE = 0, SK_DS_FILE = 1, SK_DS_INLINE = 2, SK_DS_ENV = 3 };

struct sk_datasource { /* envoy.config.core.v3.DataSource */
    int kind;        /* enum sk_ds_kind */
    char *filename;  /* SK_DS_FILE: watched for rotation */
    char *data;      /* SK_DS_INLINE (inline_bytes / inline_string) or SK_DS_ENV: the
                        variable's name */
    size_t len;
};

enum sk_san_type { SK_SAN_ANY = 0, SK_SAN_EMAIL = 1, SK_SAN_DNS = 2, SK_SAN_URI = 3,
                   SK_SAN_IP = 4 };

struct sk_san_matcher { /* match_typed_subject_alt_names / match_subject_alt_names */
    int san_type;    /* enum sk_san_type; ANY for the deprecated untyped list */
    int kind;        /* enum sk_str_match_kind (EXACT, PREFIX, SUFFIX, CONTAINS) */
    char *value;
    bool ignore_case;
};

/* Downstream/UpstreamTlsContext + CommonTlsContext, the subset we support. */
struct sk_tls_cfg {
    bool is_server;
    struct sk_datasource cert_chain;   /* tls_certificates[0].certificate_chain */
    struct sk_datasource private_key;  /* tls_certificates[0].private_key */
    struct sk_datasource trusted_ca;   /* validation_context.trusted_ca */
    char *sds_cert_name;               /* tls_certificate_sds_secret_configs[0].name (xDS) */
    char *sds_ca_name;                 /* validation_context_sds_secret_config.name (xDS) */
    struct sk_san_matcher *san;        /* expected peer SANs (any one must match) */
    size_t nsan;
    char **alpn;                       /* common_tls_context.alpn_protocols */
    size_t nalpn;
    int min_version;                   /* tls_params: 0 auto, 3 TLSv1_2, 4 TLSv1_3 */
    int max_version;
    char *cipher_suites;               /* joined with ':' (OpenSSL syntax) */
    char *ecdh_curves;                 /* joined with ':' */
    bool require_client_cert;          /* downstream: require_client_certificate */
    char *sni;                         /* upstream: sni */
    bool allow_expired;                /* validation_context.allow_expired_certificate */
    uint64_t session_timeout_ms;       /* downstream session_timeout, 0 = OpenSSL default */
    uint32_t max_session_keys;         /* upstream: max_session_keys, default 1 */
    /* Runtime: the shared struct sk_tls_ctx (net/tls.c) for this config, set by
     * sk_tls_prepare() on the main thread before the snapshot is published. The only
     * field of the snapshot written after translation; NULL until prepared. */
    void *rt;
};

/* ---- listeners ----------------------------------------------------------- */

enum sk_codec_type { SK_CODEC_AUTO = 0, SK_CODEC_HTTP1 = 1, SK_CODEC_HTTP2 = 2 };

/* ---- access logs ---------------------------------------------------------- */

/* One piece of a format string: literal text or a %COMMAND(arg):len% operator. */
enum sk_al_op {
    SK_AL_LITERAL = 0,
    SK_AL_START_TIME,
    SK_AL_REQ,         /* arg: header name (":method", ":path", ":authority", "x-..."), alt */
    SK_AL_RESP,
    SK_AL_TRAILER,
    SK_AL_PROTOCOL,
    SK_AL_RESPONSE_CODE,
    SK_AL_RESPONSE_FLAGS,
    SK_AL_RESPONSE_CODE_DETAILS,
    SK_AL_BYTES_RECEIVED,
    SK_AL_BYTES_SENT,
    SK_AL_DURATION,
    SK_AL_RESPONSE_DURATION,   /* ms to the first response byte from upstream */
    SK_AL_UPSTREAM_HOST,
    SK_AL_UPSTREAM_CLUSTER,
    SK_AL_UPSTREAM_REQUEST_ATTEMPT_COUNT,
    SK_AL_DOWNSTREAM_REMOTE_ADDRESS,
    SK_AL_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT,
    SK_AL_DOWNSTREAM_LOCAL_ADDRESS,
    SK_AL_DOWNSTREAM_PEER_URI_SAN,
    SK_AL_DOWNSTREAM_TLS_VERSION,
    SK_AL_REQUESTED_SERVER_NAME,
    SK_AL_ROUTE_NAME,
    SK_AL_CONNECTION_ID,
    SK_AL_STREAM_ID,
    SK_AL_GRPC_STATUS,
    SK_AL_HOSTNAME,
    SK_AL_TRACE_ID,            /* W3C trace id of the request, if any */
};

struct sk_al_piece {
    int op;           /* enum sk_al_op */
    char *text;       /* literal text, or the operator's argument (lower-cased header) */
    size_t text_len;
    char *alt;        /* REQ(a?b): fallback header */
    size_t max_len;   /* :N truncation, 0 = none */
};

struct sk_al_format {
    bool json;               /* json_format: one object per line */
    struct sk_al_piece *pieces; /* text: the whole line */
    size_t npieces;
    char **json_keys;        /* json: key (already escaped for a JSON string) -> format */
    struct sk_al_format *json_vals;
    size_t njson;
    bool omit_empty;
    const struct sk_al_prog *prog; /* sk_al_compile: the flat form workers render */
};

enum sk_alf_kind {
    SK_ALF_STATUS = 1, SK_ALF_DURATION, SK_ALF_NOT_HEALTH_CHECK, SK_ALF_RUNTIME, SK_ALF_AND,
    SK_ALF_OR, SK_ALF_HEADER, SK_ALF_FLAGS,
};

struct sk_al_filter {
    int kind;          /* enum sk_alf_kind */
    int op;            /* EQ GE LE NE */
    uint64_t value;
    uint32_t sample_per_million; /* runtime_filter percent_sampled */
    struct sk_header_match hm;
    char **flags;
    size_t nflags;
    struct sk_al_filter *sub;
    size_t nsub;
};

enum sk_al_sink { SK_AL_SINK_FILE = 1, SK_AL_SINK_STDOUT = 2, SK_AL_SINK_STDERR = 3 };

struct sk_access_log {
    int sink;          /* enum sk_al_sink */
    char *path;        /* SK_AL_SINK_FILE */
    struct sk_al_format fmt;
    struct sk_al_filter *filter; /* NULL = every request */
};

/* Parse an Envoy format string into pieces (arena-allocated). Returns 0 or
 * -1 with a message in err (unknown %COMMAND%, bad syntax). */
int sk_al_parse_format(struct sk_arena *a, const char *fmt, size_t len, struct sk_al_format *out,
                       char *err, size_t errlen);
/* Compile a parsed format (text or json, with omit_empty set) into one flat
 * instruction list (include/skiff/accesslog.h). 0, or -1 (out of memory). */
int sk_al_compile(struct sk_arena *a, struct sk_al_format *f);

struct sk_scope;
struct sk_hcm { /* HttpConnectionManager */
    char *stat_prefix;
    struct sk_scope *scope; /* http.<stat_prefix>.* stats; set at publish (scope.h) */
    int codec_type;                /* enum sk_codec_type */
    struct sk_route_config *routes; /* inline route_config (RDS fills it later) */
    char *rds_name;                /* set when routes come from RDS (issue 7) */
    uint32_t max_headers_count;    /* common_http_protocol_options.max_headers_count, default 100 */
    uint32_t max_request_headers_kb; /* default 60 */
    uint64_t idle_timeout_ms;      /* common_http_protocol_options.idle_timeout, default 1h */
    uint64_t request_timeout_ms;   /* default SK_DUR_NONE */
    uint64_t request_headers_timeout_ms; /* default SK_DUR_NONE */
    uint64_t stream_idle_timeout_ms; /* default 5 min */
    uint64_t drain_timeout_ms;     /* default 5000 */
    bool use_remote_address;
    uint32_t xff_num_trusted_hops;
    bool generate_request_id;      /* default true */
    /* tracing: sampling of new trace decisions, parts per million (default all) */
    uint32_t trace_random_ppm;  /* tracing.random_sampling */
    uint32_t trace_client_ppm;  /* tracing.client_sampling (x-client-trace-id present) */
    uint32_t trace_overall_ppm; /* tracing.overall_sampling: cap after the others */
    bool preserve_external_request_id;
    char *server_name;             /* default "skiff" */
    int server_header_transformation; /* 0 OVERWRITE, 1 APPEND_IF_ABSENT, 2 PASS_THROUGH */
    int forward_client_cert;       /* forward_client_cert_details: 0 SANITIZE (default),
                                      1 FORWARD_ONLY, 2 APPEND_FORWARD, 3 SANITIZE_SET,
                                      4 ALWAYS_FORWARD_ONLY */
    bool xfcc_uri, xfcc_dns, xfcc_subject; /* set_current_client_cert_details */
    bool allow_websocket;          /* upgrade_configs contains "websocket" */
    bool allow_connect;            /* upgrade_configs contains "CONNECT" */
    uint64_t max_stream_duration_ms; /* common_http_protocol_options.max_stream_duration,
                                        default SK_DUR_NONE */
    bool normalize_path;           /* default false */
    bool merge_slashes;            /* default false */
    bool proxy_100_continue;       /* default false */
    /* http2_protocol_options (downstream), Envoy's defaults */
    uint32_t h2_max_concurrent_streams;        /* default 2147483647 */
    uint32_t h2_initial_stream_window_size;    /* default 268435456 */
    uint32_t h2_initial_connection_window_size; /* default 268435456 */
    uint32_t h2_hpack_table_size;              /* default 4096 */
    struct sk_access_log *access_logs; /* HCM access_log */
    size_t naccess_logs;
    /* http_filters other than the router, in order (fault etc. later issues) */
    struct sk_http_filter_cfg *filters;
    size_t nfilters;
};

struct sk_http_filter_cfg {
    char *name;
    char *type_url; /* dispatch key */
    void *config;   /* filter-specific, built by the filter's translate hook */
    bool disabled;  /* HttpFilter.disabled: off unless a route enables it */
};

/* typed_per_filter_config entry (route or virtual host), by filter name */
struct sk_filter_override {
    char *name;
    void *config;   /* the filter's own config type; NULL with disabled */
    bool disabled;  /* FilterConfig.disabled */
};

struct sk_tcp_proxy {
    char *stat_prefix;
    char *cluster_name;
    struct sk_cluster *cluster; /* NULL when weighted */
    struct sk_cluster_weight *weighted;
    size_t nweighted;
    uint32_t total_weight;
    uint64_t idle_timeout_ms; /* default 1h; 0s -> SK_DUR_NONE */
    uint32_t max_connect_attempts; /* default 1 */
    struct sk_access_log *access_logs; /* TcpProxy.access_log: one line per connection */
    size_t naccess_logs;
};

enum sk_chain_kind { SK_CHAIN_HCM = 1, SK_CHAIN_TCP = 2 };

struct sk_chain_match { /* FilterChainMatch, subset; fields unset = match anything */
    uint32_t destination_port; /* 0 = any */
    char **server_names;
    size_t nserver_names;
    char *transport_protocol; /* NULL = any */
    char **application_protocols;
    size_t napplication_protocols;
};

struct sk_filter_chain {
    char *name;
    struct sk_chain_match match;
    int kind; /* enum sk_chain_kind */
    struct sk_hcm *hcm;
    struct sk_tcp_proxy *tcp;
    struct sk_tls_cfg *tls; /* DownstreamTlsContext; NULL = plaintext */
    struct sk_toxics_cfg *toxics; /* skiff.toxics.v1.Toxics network filter (toxics.h); NULL */
};

struct sk_listener {
    char *name;
    struct sk_sockaddr addr;
    char *addr_str; /* "ip:port" for logs */
    struct sk_filter_chain *chains;
    size_t nchains;
    struct sk_filter_chain *default_chain; /* may be NULL */
    bool bind_to_port;     /* default true */
    bool use_original_dst; /* default false */
    uint32_t per_connection_buffer_limit_bytes; /* default 1 MiB */
    uint32_t tcp_backlog_size; /* default 1024 */
    struct sk_scope *scope;    /* listener.<name>.* stats; set at publish (scope.h) */
};

/* ---- clusters ---------------------------------------------------------- */

enum sk_cluster_type {
    SK_CLUSTER_STATIC = 0,
    SK_CLUSTER_STRICT_DNS = 1,
    SK_CLUSTER_LOGICAL_DNS = 2,
    SK_CLUSTER_EDS = 3,
};

enum sk_lb_policy {
    SK_LB_ROUND_ROBIN = 0,
    SK_LB_LEAST_REQUEST = 1,
    SK_LB_RING_HASH = 2,
    SK_LB_RANDOM = 3,
    SK_LB_MAGLEV = 5,
    SK_LB_PEAK_EWMA = 100, /* our own; selected via load_balancing_policy typed
                              extension skiff.lb.peak_ewma (see docs) */
};

enum sk_upstream_proto {
    SK_UP_HTTP1 = 0,
    SK_UP_HTTP2 = 1,
    SK_UP_USE_DOWNSTREAM = 2,
};

enum sk_health_status {
    SK_HEALTH_UNKNOWN = 0,
    SK_HEALTH_HEALTHY = 1,
    SK_HEALTH_UNHEALTHY = 2,
    SK_HEALTH_DRAINING = 3,
    SK_HEALTH_TIMEOUT = 4,
    SK_HEALTH_DEGRADED = 5,
};

/* LbEndpoint. Kept compact (issue 7: 10k clusters x 5 endpoints): 56 bytes.
 * The resolved address is an inline IPv4/IPv6 socket address; a Unix socket
 * (pipe: the xDS cluster only) is held in full behind `pipe`. Read it with
 * sk_endpoint_addr(). */
struct sk_endpoint {
    char *host;               /* as configured: IP literal, or hostname for DNS clusters */
    struct sk_sockaddr *pipe; /* unix socket endpoint (same arena); NULL otherwise */
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } ip; /* resolved for STATIC/EDS and IP literals; sa_family 0 = none (DNS
             hostname, or pipe) */
    uint16_t port;
    uint8_t health;    /* enum sk_health_status from config */
    uint32_t weight;   /* load_balancing_weight, default 1 */
    uint32_t priority; /* locality priority */
};

/* Has the endpoint a resolved address (IP or pipe)? */
static inline bool sk_endpoint_has_addr(const struct sk_endpoint *e)
{
    return e->pipe || e->ip.sa.sa_family == AF_INET || e->ip.sa.sa_family == AF_INET6;
}

/* The endpoint's address as a full socket address (len 0 when it has none). */
static inline void sk_endpoint_addr(const struct sk_endpoint *e, struct sk_sockaddr *out)
{
    if (e->pipe) {
        *out = *e->pipe;
        return;
    }
    memset(out, 0, sizeof(*out));
    if (e->ip.sa.sa_family == AF_INET) {
        memcpy(&out->ss, &e->ip.in, sizeof(e->ip.in));
        out->len = sizeof(e->ip.in);
    } else if (e->ip.sa.sa_family == AF_INET6) {
        memcpy(&out->ss, &e->ip.in6, sizeof(e->ip.in6));
        out->len = sizeof(e->ip.in6);
    }
}

/* Stores an IPv4/IPv6 address in e (false for any other family: the caller
 * keeps a pipe address through e->pipe). */
static inline bool sk_endpoint_set_ip(struct sk_endpoint *e, const struct sk_sockaddr *a)
{
    memset(&e->ip, 0, sizeof(e->ip));
    if (a->len == sizeof(struct sockaddr_in) && a->ss.ss_family == AF_INET) {
        memcpy(&e->ip.in, &a->ss, sizeof(e->ip.in));
        return true;
    }
    if (a->len == sizeof(struct sockaddr_in6) && a->ss.ss_family == AF_INET6) {
        memcpy(&e->ip.in6, &a->ss, sizeof(e->ip.in6));
        return true;
    }
    return false;
}

struct sk_circuit_breakers { /* DEFAULT priority thresholds; issue 5 */
    uint32_t max_connections;      /* default 1024 */
    uint32_t max_pending_requests; /* default 1024 */
    uint32_t max_requests;         /* default 1024 */
    uint32_t max_retries;          /* default 3 */
    bool track_remaining;          /* admin shows remaining capacity (we always do) */
    /* retry_budget: when set (budget_percent > 0), the retry limit is
     * max(min_retry_concurrency, budget_percent% of active requests) instead
     * of max_retries */
    double retry_budget_percent;        /* 0 = no budget; Envoy's default when the
                                           message is present: 20 */
    uint32_t retry_budget_min_concurrency; /* default 3 */
    bool retry_budget; /* retry_budget message present (then the budget applies even
                          with an explicit budget_percent of 0: limit = min_concurrency) */
};

/* Cluster.outlier_detection (NULL pointer in sk_cluster = disabled). Envoy's
 * defaults in comments apply when the message is present but a field is not. */
struct sk_outlier {
    uint32_t consecutive_5xx;                 /* default 5; 0 = off */
    uint32_t consecutive_gateway_failure;     /* default 5 */
    uint32_t consecutive_local_origin_failure; /* default 5 */
    uint32_t enforcing_consecutive_5xx;       /* percent, default 100 */
    uint32_t enforcing_consecutive_gateway_failure; /* default 0 (Envoy) */
    uint32_t enforcing_consecutive_local_origin_failure; /* default 100 */
    bool split_external_local_origin_errors;  /* default false: local errors count as 5xx */
    uint64_t interval_ms;            /* default 10000 */
    uint64_t base_ejection_time_ms;  /* default 30000 */
    uint64_t max_ejection_time_ms;   /* default 300000 */
    uint32_t max_ejection_percent;   /* default 10 */
    /* success rate */
    uint32_t success_rate_minimum_hosts;   /* default 5 */
    uint32_t success_rate_request_volume;  /* default 100 */
    uint32_t success_rate_stdev_factor;    /* default 1900 (= 1.9) */
    uint32_t enforcing_success_rate;       /* default 100 */
    /* failure percentage */
    uint32_t failure_percentage_threshold;     /* default 85 */
    uint32_t failure_percentage_minimum_hosts; /* default 5 */
    uint32_t failure_percentage_request_volume; /* default 50 */
    uint32_t enforcing_failure_percentage;     /* default 0 */
    uint64_t max_ejection_time_jitter_ms;      /* default 0: random 0..jitter added to
                                                  each ejection */
    uint32_t enforcing_local_origin_success_rate; /* default 100 (split mode only) */
};

enum sk_hc_kind { SK_HC_HTTP = 1, SK_HC_TCP = 2 };

/* One Cluster.health_checks[] entry. */
struct sk_health_check {
    int kind;                      /* enum sk_hc_kind */
    uint64_t timeout_ms;           /* required */
    uint64_t interval_ms;          /* required */
    uint64_t initial_jitter_ms;    /* default 0 */
    uint64_t interval_jitter_ms;   /* default 0 */
    uint32_t interval_jitter_percent; /* default 0 */
    uint32_t unhealthy_threshold;  /* required (Envoy: required, we default 3) */
    uint32_t healthy_threshold;    /* required (default 2) */
    uint64_t no_traffic_interval_ms;  /* default 60000 */
    uint64_t no_traffic_healthy_interval_ms; /* default = no_traffic_interval */
    uint64_t unhealthy_interval_ms;   /* default = interval */
    uint64_t healthy_edge_interval_ms; /* default = interval */
    uint64_t unhealthy_edge_interval_ms; /* default = unhealthy_interval */
    /* HTTP */
    char *path;                    /* required for HTTP */
    char *host;                    /* default: the cluster name */
    int64_t *expected_statuses;    /* pairs [start, end) flattened; default [200,201) */
    size_t nexpected;              /* number of pairs */
    struct sk_hdr_ops req_hdrs;    /* request_headers_to_add / remove */
    /* TCP: optional payloads (hex text decoded to bytes, or raw text) */
    unsigned char *send;
    size_t send_len;
    unsigned char **receive;      /* each must be found in the response, in order */
    size_t *receive_len;
    size_t nreceive;
};

struct sk_health_checks {
    struct sk_health_check *v;
    size_t n;
};

/* Route hash_policy entry (RING_HASH / MAGLEV). */
enum sk_hash_kind { SK_HASH_HEADER = 1, SK_HASH_COOKIE = 2, SK_HASH_SOURCE_IP = 3,
                    SK_HASH_QUERY_PARAM = 4 };
struct sk_hash_policy {
    int kind;
    char *name; /* header (lower-case) / cookie / query parameter name */
    bool terminal;
};

struct sk_cluster {
    char *name;
    size_t index; /* position in snapshot->clusters */
    int type;     /* enum sk_cluster_type */
    char *eds_service_name; /* EDS only: eds_cluster_config.service_name, else the name */
    int lb_policy; /* enum sk_lb_policy */
    uint32_t lr_choice_count; /* least_request_lb_config.choice_count, default 2 */
    uint64_t connect_timeout_ms; /* default 5000 */
    uint64_t dns_refresh_rate_ms; /* default 5000 */
    int dns_lookup_family; /* 0 AUTO, 1 V4_ONLY, 2 V6_ONLY, 3 V4_PREFERRED, 4 ALL */
    bool respect_dns_ttl;  /* default false */
    double healthy_panic_percent; /* common_lb_config.healthy_panic_threshold, default 50;
                                     0 disables panic mode */
    struct sk_endpoint *endpoints;
    size_t nendpoints;
    uint32_t per_connection_buffer_limit_bytes; /* default 1 MiB */
    int upstream_proto; /* enum sk_upstream_proto; default HTTP1 */
    uint64_t idle_timeout_ms; /* upstream common_http_protocol_options.idle_timeout, 1h */
    uint32_t max_requests_per_connection; /* 0 = unlimited */
    uint32_t h2_max_concurrent_streams;   /* default 100 */
    struct sk_circuit_breakers cb;
    struct sk_outlier *outlier;              /* NULL = outlier detection off */
    struct sk_health_checks *health_checks;  /* NULL = no active health checking */
    uint64_t ring_hash_min_size;             /* ring_hash_lb_config.minimum_ring_size, 1024 */
    uint64_t ring_hash_max_size;             /* default 8M */
    uint64_t maglev_table_size;              /* maglev_lb_config.table_size, default 65537 */
    uint64_t peak_ewma_decay_ms;             /* skiff.lb.v1.PeakEwma decay_time, default 10000 */
    struct sk_tls_cfg *tls; /* UpstreamTlsContext; NULL = plaintext */
    struct sk_toxics_cfg *toxics; /* Cluster.filters skiff.toxics.v1.Toxics; NULL = none */
};

/* ---- bootstrap-level ----------------------------------------------------- */

struct sk_admin_cfg {
    bool enabled;
    struct sk_sockaddr addr;
    char *addr_str;
};

struct sk_xds_cfg { /* dynamic_resources (issue 7) */
    bool ads;                  /* ads_config present */
    char *ads_cluster;         /* ads_config.grpc_services[0].envoy_grpc.cluster_name */
    struct sk_cluster *cluster; /* that static cluster, resolved */
    bool lds;                  /* lds_config: ads */
    bool cds;                  /* cds_config: ads. Then route/tcp_proxy references to
                                  clusters not in static_resources are allowed and left
                                  with cluster == NULL (the data plane answers 503
                                  "cluster not found" until CDS delivers it). */
    bool set_node_on_first_message_only;
    bool files;         /* lds_config / cds_config from a path_config_source (watched file) */
    char *sds_cluster;  /* SDS over its own SecretDiscoveryService stream to this cluster */
};

/* Cleanup run by the last sk_snapshot_unref (on whatever thread that is), before
 * the arena goes: runtime modules that take references for a snapshot (TLS
 * contexts) release them here. Nodes live in the snapshot's arena. */
struct sk_snapshot;
struct sk_snapshot_dtor {
    void (*fn)(struct sk_snapshot *s, void *arg);
    void *arg;
    struct sk_snapshot_dtor *next;
};

struct sk_snapshot {
    atomic_int refs;
    struct sk_arena arena;
    uint64_t version; /* monotonically increasing, assigned at publish */
    char *node_id;
    char *node_cluster;
    struct sk_listener *listeners;
    size_t nlisteners;
    struct sk_cluster *clusters;
    size_t nclusters;
    struct sk_cluster **clusters_by_name; /* nclusters entries sorted by strcmp(name) */
    struct sk_admin_cfg admin; /* enabled only if the bootstrap has admin.address; main
                                  adds the 127.0.0.1:15000 default from argv */
    struct sk_xds_cfg xds;
    struct sk_snapshot_dtor *dtors; /* run on free; added before publish (main thread) */
    /* A snapshot derived for an EDS-only update (sk_snapshot_derive): it shares
     * everything with `base` (a full build, kept alive by a reference: listeners,
     * routes, TLS contexts, every cluster's settings) and owns only a copy of the
     * clusters array and the endpoint arrays of the clusters listed in own_eps.
     * Routes keep pointing at the base's cluster records: nothing on the request
     * path reads endpoints through them (workers take hosts from snap->clusters).
     * NULL base: a full build. */
    struct sk_snapshot *base;
    uint32_t *own_eps;
    size_t nown_eps, cap_own_eps;
};

/* Reference counting; safe from any thread. The last unref frees the arena. */
struct sk_snapshot *sk_snapshot_ref(struct sk_snapshot *s);
void sk_snapshot_unref(struct sk_snapshot *s);

struct sk_cluster *sk_snapshot_find_cluster(const struct sk_snapshot *s, const char *name);
struct sk_listener *sk_snapshot_find_listener(const struct sk_snapshot *s, const char *name);

#endif
