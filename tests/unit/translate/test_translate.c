/* Unit tests for the translate + validate step (src/config/translate.c), driven
 * through the real front door: YAML text -> sk_config_load_buf -> snapshot.
 * Every rejected config checks the error's path, message and file position. */
#include "skiff/config.h"
#include "skiff/err.h"
#include "skiff/fault.h"
#include "skiff/model.h"
#include "skiff/rbac.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static int checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- YAML building blocks ------------------------------------------------------ */

#define HCM_TYPE                                                                                   \
    "type.googleapis.com/"                                                                         \
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
#define TCP_TYPE "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
#define ROUTER_TYPE "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
#define FAULT_TYPE "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
#define ROUTER "{name: envoy.filters.http.router, typed_config: {\"@type\": " ROUTER_TYPE "}}"

/* A listener with one HCM chain; `hcm` is the rest of the HCM (indent 10). */
#define LISTENER_HCM(hcm)                                                                          \
    "  - name: l0\n"                                                                               \
    "    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}\n"                     \
    "    filter_chains:\n"                                                                         \
    "    - filters:\n"                                                                             \
    "      - name: envoy.filters.network.http_connection_manager\n"                                \
    "        typed_config:\n"                                                                      \
    "          \"@type\": " HCM_TYPE "\n"                                                          \
    "          stat_prefix: ingress\n" hcm

/* Inline route config sending everything to `cl` plus the router filter. */
#define SIMPLE_ROUTES(cl)                                                                          \
    "          route_config:\n"                                                                    \
    "            name: r\n"                                                                        \
    "            virtual_hosts:\n"                                                                 \
    "            - name: vh\n"                                                                     \
    "              domains: [\"*\"]\n"                                                             \
    "              routes:\n"                                                                      \
    "              - match: {prefix: \"/\"}\n"                                                     \
    "                route: {cluster: " cl "}\n"                                                   \
    "          http_filters: [" ROUTER "]\n"

#define STATIC_CLUSTER(name, ip, port)                                                             \
    "  - name: " name "\n"                                                                         \
    "    type: STATIC\n"                                                                           \
    "    load_assignment:\n"                                                                       \
    "      cluster_name: " name "\n"                                                               \
    "      endpoints:\n"                                                                           \
    "      - lb_endpoints:\n"                                                                      \
    "        - endpoint: {address: {socket_address: {address: " ip ", port_value: " port "}}}\n"

#define CLUSTERS "  clusters:\n"
#define LISTENERS "static_resources:\n  listeners:\n"

/* ---- helpers -------------------------------------------------------------------- */

static int load(const char *yaml, struct sk_snapshot **s, struct sk_cfgerrs *e)
{
    sk_cfgerrs_init(e, "test.yaml");
    return sk_config_load_buf("test.yaml", yaml, strlen(yaml), s, e);
}

static struct sk_snapshot *load_ok(const char *yaml, int line)
{
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    int rc = load(yaml, &s, &e);
    checks++;
    if (rc != 0 || !s || e.n) {
        fprintf(stderr, "%s:%d: config expected to load, got rc=%d:\n", __FILE__, line, rc);
        sk_cfgerrs_print(&e, stderr);
        failures++;
    }
    sk_cfgerrs_free(&e);
    return s;
}
#define LOAD_OK(y) load_ok((y), __LINE__)

/* 1-based line:col of the first occurrence of `needle` in `text` (after the
 * n-th occurrence of `after`, if given) */
static void pos_of(const char *text, const char *after, const char *needle, int *line, int *col)
{
    const char *start = text;
    if (after) {
        const char *a = strstr(text, after);
        if (a)
            start = a;
    }
    const char *p = strstr(start, needle);
    *line = *col = 0;
    if (!p)
        return;
    *line = 1;
    const char *ls = text;
    for (const char *q = text; q < p; q++)
        if (*q == '\n') {
            (*line)++;
            ls = q + 1;
        }
    *col = (int)(p - ls) + 1;
}

/* Expects the config to be rejected with an error whose path is `path` and whose
 * message contains `msg`; if `needle` is given, the error must point at its
 * position in the YAML (first occurrence after `after`). */
static void expect_err(const char *yaml, const char *path, const char *msg, const char *after,
                       const char *needle, int line)
{
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    int rc = load(yaml, &s, &e);
    checks++;
    bool found = false;
    int wl = 0, wc = 0, vc = 0;
    if (needle) {
        pos_of(yaml, after, needle, &wl, &wc);
        /* "key: value" needles: the loader may point at the key or at the value */
        const char *sep = strstr(needle, ": ");
        vc = sep ? wc + (int)(sep - needle) + 2 : wc;
    }
    for (size_t i = 0; i < e.n; i++) {
        if (strcmp(e.v[i].path, path) != 0 || !strstr(e.v[i].msg, msg))
            continue;
        if (needle && (e.v[i].line != wl || (e.v[i].col != wc && e.v[i].col != vc))) {
            fprintf(stderr, "%s:%d: error at %d:%d, expected %d:%d or %d:%d\n", __FILE__, line,
                    e.v[i].line, e.v[i].col, wl, wc, wl, vc);
            continue;
        }
        found = true;
    }
    if (rc != SK_ERR_CONFIG || s || !found) {
        fprintf(stderr, "%s:%d: expected error '%s' at %s (rc=%d), got:\n", __FILE__, line, msg,
                path, rc);
        sk_cfgerrs_print(&e, stderr);
        failures++;
    }
    sk_snapshot_unref(s);
    sk_cfgerrs_free(&e);
}
#define EXPECT_ERR(y, path, msg) expect_err((y), (path), (msg), NULL, NULL, __LINE__)
#define EXPECT_ERR_AT(y, path, msg, after, needle)                                                 \
    expect_err((y), (path), (msg), (after), (needle), __LINE__)

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    *len = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[*len] = 0;
    return buf;
}

static bool ep_is(const struct sk_endpoint *ep, const char *ip, uint16_t port)
{
    char buf[INET6_ADDRSTRLEN];
    if (ep->ip.sa.sa_family != AF_INET || ep->pipe)
        return false;
    const struct sockaddr_in *s4 = &ep->ip.in;
    inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof(buf));
    return strcmp(buf, ip) == 0 && ntohs(s4->sin_port) == port && ep->port == port;
}

/* ---- examples and quick mode ------------------------------------------------------ */

static void test_quickstart_example(void)
{
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "x");
    int rc = sk_config_load_file(SK_SRCDIR "/examples/quickstart.yaml", &s, &e);
    if (rc)
        sk_cfgerrs_print(&e, stderr);
    CHECK(rc == 0 && s);
    sk_cfgerrs_free(&e);
    if (!s)
        return;
    CHECK(atomic_load(&s->refs) == 1);
    CHECK(s->nlisteners == 1 && s->nclusters == 1);
    struct sk_listener *l = sk_snapshot_find_listener(s, "listener_http");
    CHECK(l && strcmp(l->addr_str, "127.0.0.1:10000") == 0);
    CHECK(l && l->bind_to_port && !l->use_original_dst && l->nchains == 1 && !l->default_chain);
    CHECK(l && l->per_connection_buffer_limit_bytes == 1024 * 1024 && l->tcp_backlog_size == 1024);
    struct sk_filter_chain *c = l ? &l->chains[0] : NULL;
    CHECK(c && c->kind == SK_CHAIN_HCM && c->hcm && !c->tcp && !c->tls);
    struct sk_hcm *h = c ? c->hcm : NULL;
    CHECK(h && strcmp(h->stat_prefix, "ingress_http") == 0 && h->codec_type == SK_CODEC_AUTO);
    CHECK(h && h->nfilters == 0 && !h->rds_name);
    /* Envoy's defaults */
    CHECK(h && h->max_headers_count == 100 && h->max_request_headers_kb == 60);
    CHECK(h && h->idle_timeout_ms == 3600000 && h->stream_idle_timeout_ms == 300000);
    CHECK(h && h->request_timeout_ms == SK_DUR_NONE &&
          h->request_headers_timeout_ms == SK_DUR_NONE);
    CHECK(h && h->drain_timeout_ms == 5000 && h->generate_request_id && !h->use_remote_address);
    CHECK(h && strcmp(h->server_name, "skiff") == 0 && h->max_stream_duration_ms == SK_DUR_NONE);
    CHECK(h && h->h2_max_concurrent_streams == 2147483647u && h->h2_hpack_table_size == 4096);
    struct sk_route_config *rc2 = h ? h->routes : NULL;
    CHECK(rc2 && strcmp(rc2->name, "local_route") == 0 && rc2->nvhosts == 1);
    struct sk_vhost *v = rc2 ? &rc2->vhosts[0] : NULL;
    CHECK(v && v->ndomains == 1 && strcmp(v->domains[0], "*") == 0 && v->nroutes == 1);
    struct sk_route *r = v ? &v->routes[0] : NULL;
    CHECK(r && r->match.path_kind == SK_PATH_PREFIX && strcmp(r->match.path, "/") == 0);
    CHECK(r && r->match.case_sensitive && r->action == SK_ROUTE_CLUSTER);
    CHECK(r && r->timeout_ms == 15000 && r->idle_timeout_ms == SK_DUR_NONE && !r->retry);
    CHECK(r && r->cluster_not_found_status == 503 && !r->idle_timeout_set);
    struct sk_cluster *cl = sk_snapshot_find_cluster(s, "local_service");
    CHECK(r && cl && r->cluster == cl && strcmp(r->cluster_name, "local_service") == 0);
    CHECK(cl && cl->type == SK_CLUSTER_STATIC && cl->lb_policy == SK_LB_ROUND_ROBIN);
    CHECK(cl && cl->connect_timeout_ms == 5000 && cl->upstream_proto == SK_UP_HTTP1);
    CHECK(cl && cl->nendpoints == 1 && ep_is(&cl->endpoints[0], "127.0.0.1", 8080));
    CHECK(cl && cl->endpoints[0].weight == 1 && cl->endpoints[0].health == SK_HEALTH_UNKNOWN);
    CHECK(cl && cl->cb.max_connections == 1024 && cl->cb.max_pending_requests == 1024);
    CHECK(cl && cl->cb.max_requests == 1024 && cl->cb.max_retries == 3);
    CHECK(cl && cl->idle_timeout_ms == 3600000 && cl->healthy_panic_percent == 50.0);
    CHECK(cl && cl->lr_choice_count == 2 && cl->dns_refresh_rate_ms == 5000);
    CHECK(cl && !cl->tls && !cl->outlier && !cl->health_checks);
    CHECK(s->admin.enabled && strcmp(s->admin.addr_str, "127.0.0.1:15000") == 0);
    CHECK(!s->xds.ads && !s->xds.cds && !s->xds.lds);
    CHECK(sk_snapshot_find_cluster(s, "nope") == NULL);
    CHECK(sk_snapshot_find_listener(s, "nope") == NULL);
    CHECK(sk_snapshot_ref(s) == s && atomic_load(&s->refs) == 2);
    sk_snapshot_unref(s);
    sk_snapshot_unref(s);
}

static void test_tcp_example(void)
{
    size_t len;
    char *buf = read_file(SK_SRCDIR "/examples/tcp-proxy.yaml", &len);
    CHECK(buf != NULL);
    if (!buf)
        return;
    struct sk_snapshot *s = LOAD_OK(buf);
    free(buf);
    if (!s)
        return;
    struct sk_listener *l = sk_snapshot_find_listener(s, "listener_tcp");
    CHECK(l && strcmp(l->addr_str, "127.0.0.1:10001") == 0 && l->nchains == 1);
    struct sk_tcp_proxy *p = l ? l->chains[0].tcp : NULL;
    CHECK(l && l->chains[0].kind == SK_CHAIN_TCP && p);
    CHECK(p && strcmp(p->stat_prefix, "tcp_service") == 0 && p->idle_timeout_ms == 3600000);
    CHECK(p && p->cluster == sk_snapshot_find_cluster(s, "tcp_service") && p->cluster);
    CHECK(p && p->max_connect_attempts == 1 && p->nweighted == 0);
    CHECK(s->admin.enabled && strcmp(s->admin.addr_str, "127.0.0.1:15001") == 0);
    sk_snapshot_unref(s);
}

static void test_quick_mode(void)
{
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "q");
    int rc = sk_config_quick("127.0.0.1:10000", "127.0.0.1:8080", NULL, &s, &e);
    if (rc)
        sk_cfgerrs_print(&e, stderr);
    CHECK(rc == 0 && s);
    if (s) {
        CHECK(s->nlisteners == 1 && strcmp(s->listeners[0].addr_str, "127.0.0.1:10000") == 0);
        struct sk_cluster *c = sk_snapshot_find_cluster(s, "local_service");
        CHECK(c && c->nendpoints == 1 && ep_is(&c->endpoints[0], "127.0.0.1", 8080));
        CHECK(s->listeners[0].chains[0].hcm->codec_type == SK_CODEC_AUTO);
        CHECK(s->listeners[0].chains[0].hcm->routes->vhosts[0].routes[0].cluster == c);
        CHECK(s->admin.enabled && strcmp(s->admin.addr_str, "127.0.0.1:15000") == 0);
        sk_snapshot_unref(s);
    }
    sk_cfgerrs_free(&e);

    s = NULL;
    sk_cfgerrs_init(&e, "q");
    rc = sk_config_quick("[::1]:10000", "[::1]:8080", "127.0.0.1:9901", &s, &e);
    CHECK(rc == 0 && s);
    if (s) {
        CHECK(strcmp(s->listeners[0].addr_str, "[::1]:10000") == 0);
        CHECK(s->listeners[0].addr.ss.ss_family == AF_INET6);
        CHECK(strcmp(s->admin.addr_str, "127.0.0.1:9901") == 0);
        sk_snapshot_unref(s);
    }
    sk_cfgerrs_free(&e);

    const char *bad[] = {"localhost:80", "127.0.0.1",    "127.0.0.1:0", "127.0.0.1:99999",
                         "::1:80",       "1.2.3.4:8\"0", NULL};
    for (int i = 0; bad[i]; i++) {
        s = NULL;
        sk_cfgerrs_init(&e, "q");
        rc = sk_config_quick(bad[i], "127.0.0.1:8080", NULL, &s, &e);
        CHECK(rc == SK_ERR_CONFIG && !s && e.n == 1 && strstr(e.v[0].msg, "invalid listen"));
        sk_cfgerrs_free(&e);
    }
    /* syntactically fine but not an IP: rejected by translate */
    s = NULL;
    sk_cfgerrs_init(&e, "q");
    rc = sk_config_quick("127.0.0.1:10000", "1.2.3:8080", NULL, &s, &e);
    CHECK(rc == SK_ERR_CONFIG && !s && e.n >= 1);
    sk_cfgerrs_free(&e);
}

static void test_pb_lookup(void)
{
    const char *names[] = {
        "envoy.config.bootstrap.v3.Bootstrap",
        "envoy.config.listener.v3.Listener",
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "envoy.config.route.v3.RouteConfiguration",
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
        "envoy.service.discovery.v3.DiscoveryResponse",
        "udpa.type.v1.TypedStruct",
        "xds.type.v3.TypedStruct",
        "google.protobuf.Any",
        "google.protobuf.Struct",
        "google.rpc.Status",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const ProtobufCMessageDescriptor *d = sk_pb_lookup_type(names[i]);
        CHECK(d && strcmp(d->name, names[i]) == 0);
        if (!d)
            fprintf(stderr, "  missing type %s\n", names[i]);
    }
    CHECK(sk_pb_lookup_type("envoy.config.listener.v3.Nope") == NULL);
    CHECK(sk_pb_lookup_type("") == NULL && sk_pb_lookup_type(NULL) == NULL);
    CHECK(sk_pb_lookup_type("type.googleapis.com/envoy.config.listener.v3.Listener") == NULL);
}

/* ---- a config using most of the supported surface -------------------------------- */

static const char full_yaml[] =
    "node: {id: node-1, cluster: mesh}\n" LISTENERS "  - name: http\n"
    "    address: {socket_address: {address: \"::\", port_value: 8000}}\n"
    "    bind_to_port: false\n"
    "    use_original_dst: true\n"
    "    per_connection_buffer_limit_bytes: 32768\n"
    "    tcp_backlog_size: 64\n"
    "    listener_filters:\n"
    "    - name: envoy.filters.listener.tls_inspector\n"
    "      typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}\n"
    "    - name: envoy.filters.listener.original_dst\n"
    "      typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}\n"
    "    - name: envoy.filters.listener.http_inspector\n"
    "      typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}\n"
    "    filter_chains:\n"
    "    - name: web\n"
    "      filter_chain_match:\n"
    "        destination_port: 8000\n"
    "        server_names: [Example.COM, \"*.example.org\"]\n"
    "        transport_protocol: raw_buffer\n"
    "        application_protocols: [http/1.1, h2c]\n"
    "      transport_socket:\n"
    "        name: envoy.transport_sockets.raw_buffer\n"
    "        typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}\n"
    "      filters:\n"
    "      - name: envoy.filters.network.http_connection_manager\n"
    "        typed_config:\n"
    "          \"@type\": " HCM_TYPE "\n"
    "          stat_prefix: web\n"
    "          codec_type: HTTP2\n"
    "          server_name: edge\n"
    "          server_header_transformation: PASS_THROUGH\n"
    "          max_request_headers_kb: 96\n"
    "          stream_idle_timeout: 0s\n"
    "          request_timeout: 30s\n"
    "          request_headers_timeout: 0.25s\n"
    "          drain_timeout: 2s\n"
    "          use_remote_address: true\n"
    "          xff_num_trusted_hops: 2\n"
    "          generate_request_id: false\n"
    "          preserve_external_request_id: true\n"
    "          normalize_path: true\n"
    "          merge_slashes: true\n"
    "          path_with_escaped_slashes_action: KEEP_UNCHANGED\n"
    "          common_http_protocol_options: {idle_timeout: 60s, max_headers_count: 50, "
    "max_stream_duration: 10s}\n"
    "          http2_protocol_options: {max_concurrent_streams: 10, initial_stream_window_size: "
    "65536}\n"
    "          upgrade_configs: [{upgrade_type: WebSocket}, {upgrade_type: CONNECT, enabled: "
    "false}]\n"
    "          access_log: [{name: envoy.access_loggers.stdout}]\n"
    "          http_filters:\n"
    "          - name: envoy.filters.http.fault\n"
    "            typed_config: {\"@type\": " FAULT_TYPE ", max_active_faults: 5}\n"
    "          - name: fault-off\n"
    "            disabled: true\n"
    "            typed_config: {\"@type\": " FAULT_TYPE "}\n"
    "          - name: optional-unknown\n"
    "            is_optional: true\n"
    "            typed_config: {\"@type\": " TCP_TYPE ", stat_prefix: x, cluster: x}\n"
    "          - " ROUTER "\n"
    "          route_config:\n"
    "            name: main\n"
    "            ignore_port_in_host_matching: true\n"
    "            request_headers_to_add: [{header: {key: X-RC, value: rc}}]\n"
    "            response_headers_to_remove: [Server]\n"
    "            virtual_hosts:\n"
    "            - name: api\n"
    "              domains: [API.example.com, \"*.api.example.com\", \"api.*\"]\n"
    "              include_request_attempt_count: true\n"
    "              retry_policy: {retry_on: \"5xx,reset\", num_retries: 3}\n"
    "              request_headers_to_add:\n"
    "              - {header: {key: X-Vh, value: a}, append: false}\n"
    "              - {header: {key: x-vh2, value: b}, append_action: ADD_IF_ABSENT, "
    "keep_empty_value: true}\n"
    "              routes:\n"
    "              - name: exact\n"
    "                match:\n"
    "                  path: /health\n"
    "                  case_sensitive: false\n"
    "                  headers:\n"
    "                  - {name: X-Exact, exact_match: yes}\n"
    "                  - {name: x-pre, prefix_match: ab}\n"
    "                  - {name: x-suf, suffix_match: yz}\n"
    "                  - {name: x-con, contains_match: mid}\n"
    "                  - {name: x-present, present_match: true}\n"
    "                  - {name: x-none}\n"
    "                  - {name: x-sm, string_match: {prefix: Foo, ignore_case: true}, "
    "invert_match: true}\n"
    "                  - {name: \":method\", string_match: {exact: GET}}\n"
    "                direct_response: {status: 200, body: {inline_string: ok}}\n"
    "              - match: {prefix: /split}\n"
    "                route:\n"
    "                  weighted_clusters:\n"
    "                    clusters:\n"
    "                    - {name: a, weight: 30, request_headers_to_add: [{header: {key: x-w, "
    "value: a}}]}\n"
    "                    - {name: b, weight: 70}\n"
    "                  timeout: 0s\n"
    "                  idle_timeout: 5s\n"
    "                  prefix_rewrite: /\n"
    "                  host_rewrite_literal: backend.local\n"
    "                  max_stream_duration: {max_stream_duration: 3s}\n"
    "                  retry_policy:\n"
    "                    retry_on: "
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\n"
    "                    num_retries: 2\n"
    "                    per_try_timeout: 1.5s\n"
    "                    retriable_status_codes: [503, 504]\n"
    "                    retry_back_off: {base_interval: 0.1s}\n"
    "                    host_selection_retry_max_attempts: 5\n"
    "                    retry_host_predicate:\n"
    "                    - name: envoy.retry_host_predicates.previous_hosts\n"
    "                      typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}\n"
    "                response_headers_to_add: [{header: {key: X-Route, value: split}}]\n"
    "              - match: {prefix: /}\n"
    "                route: {cluster: dns, auto_host_rewrite: true, "
    "cluster_not_found_response_code: NOT_FOUND}\n"
    "            - name: other\n"
    "              domains: [\"*\"]\n"
    "              routes:\n"
    "              - match: {prefix: \"\"}\n"
    "                direct_response: {status: 404, body: {inline_bytes: bm9wZQ==}}\n"
    "    default_filter_chain:\n"
    "      filters:\n"
    "      - name: envoy.filters.network.tcp_proxy\n"
    "        typed_config:\n"
    "          \"@type\": " TCP_TYPE "\n"
    "          stat_prefix: passthrough\n"
    "          weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}\n"
    "          idle_timeout: 0s\n"
    "          max_connect_attempts: 3\n" CLUSTERS "  - name: a\n"
    "    connect_timeout: 0.25s\n"
    "    lb_policy: LEAST_REQUEST\n"
    "    least_request_lb_config: {choice_count: 3}\n"
    "    per_connection_buffer_limit_bytes: 4096\n"
    "    http2_protocol_options: {max_concurrent_streams: 7}\n"
    "    circuit_breakers:\n"
    "      thresholds:\n"
    "      - {priority: HIGH, max_connections: 1}\n"
    "      - {max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 4}\n"
    "    common_lb_config: {healthy_panic_threshold: {value: 0}}\n"
    "    outlier_detection: {consecutive_5xx: 3}\n"
    "    health_checks: [{timeout: 1s, interval: 5s, unhealthy_threshold: 2, healthy_threshold: 1, "
    "tcp_health_check: {}}]\n"
    "    load_assignment:\n"
    "      cluster_name: a\n"
    "      endpoints:\n"
    "      - priority: 0\n"
    "        lb_endpoints:\n"
    "        - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 80}}}\n"
    "          load_balancing_weight: 5\n"
    "          health_status: HEALTHY\n"
    "      - priority: 1\n"
    "        lb_endpoints:\n"
    "        - endpoint: {address: {socket_address: {address: \"fd00::1\", port_value: 81}}}\n"
    "  - name: b\n"
    "    type: STRICT_DNS\n"
    "    lb_policy: RANDOM\n"
    "    dns_refresh_rate: 30s\n"
    "    dns_lookup_family: V4_ONLY\n"
    "    respect_dns_ttl: true\n"
    "    typed_extension_protocol_options:\n"
    "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
    "        \"@type\": "
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
    "        common_http_protocol_options: {idle_timeout: 0s, max_requests_per_connection: 100}\n"
    "        use_downstream_protocol_config: {http2_protocol_options: {max_concurrent_streams: "
    "9}}\n"
    "    load_assignment:\n"
    "      cluster_name: b\n"
    "      endpoints:\n"
    "      - lb_endpoints:\n"
    "        - endpoint: {address: {socket_address: {address: backend.example, port_value: "
    "8080}}}\n"
    "        - endpoint: {address: {socket_address: {address: 10.1.1.1, port_value: 8080}}}\n"
    "  - name: dns\n"
    "    type: LOGICAL_DNS\n"
    "    typed_extension_protocol_options:\n"
    "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
    "        \"@type\": "
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
    "        explicit_http_config: {http2_protocol_options: {}}\n"
    "    load_assignment:\n"
    "      cluster_name: dns\n"
    "      endpoints:\n"
    "      - lb_endpoints:\n"
    "        - endpoint: {address: {socket_address: {address: api.example, port_value: 443}}}\n";

static void test_full(void)
{
    struct sk_snapshot *s = LOAD_OK(full_yaml);
    if (!s)
        return;
    CHECK(strcmp(s->node_id, "node-1") == 0 && strcmp(s->node_cluster, "mesh") == 0);
    CHECK(!s->admin.enabled); /* no admin in the bootstrap: main adds its default */
    struct sk_listener *l = &s->listeners[0];
    CHECK(strcmp(l->addr_str, "[::]:8000") == 0 && !l->bind_to_port && l->use_original_dst);
    CHECK(l->per_connection_buffer_limit_bytes == 32768 && l->tcp_backlog_size == 64);
    struct sk_filter_chain *c = &l->chains[0];
    CHECK(strcmp(c->name, "web") == 0 && c->kind == SK_CHAIN_HCM && !c->tls);
    CHECK(c->match.destination_port == 8000 && c->match.nserver_names == 2);
    CHECK(strcmp(c->match.server_names[0], "example.com") == 0);
    CHECK(strcmp(c->match.server_names[1], "*.example.org") == 0);
    CHECK(strcmp(c->match.transport_protocol, "raw_buffer") == 0);
    CHECK(c->match.napplication_protocols == 2 &&
          strcmp(c->match.application_protocols[1], "h2c") == 0);

    struct sk_hcm *h = c->hcm;
    CHECK(h->codec_type == SK_CODEC_HTTP2 && strcmp(h->server_name, "edge") == 0);
    CHECK(h->server_header_transformation == 2 && h->max_request_headers_kb == 96);
    CHECK(h->stream_idle_timeout_ms == SK_DUR_NONE && h->request_timeout_ms == 30000);
    CHECK(h->request_headers_timeout_ms == 250 && h->drain_timeout_ms == 2000);
    CHECK(h->use_remote_address && h->xff_num_trusted_hops == 2 && !h->generate_request_id);
    CHECK(h->preserve_external_request_id && h->normalize_path && h->merge_slashes);
    CHECK(h->idle_timeout_ms == 60000 && h->max_headers_count == 50);
    CHECK(h->max_stream_duration_ms == 10000);
    CHECK(h->h2_max_concurrent_streams == 10 && h->h2_initial_stream_window_size == 65536);
    CHECK(h->h2_initial_connection_window_size == 268435456u);
    CHECK(h->allow_websocket && !h->allow_connect);
    /* fault translated; the disabled one kept (a route may enable it); optional unknown skipped */
    CHECK(h->nfilters == 2 && strcmp(h->filters[0].name, "envoy.filters.http.fault") == 0);
    CHECK(strcmp(h->filters[0].type_url, "envoy.extensions.filters.http.fault.v3.HTTPFault") == 0);
    CHECK(h->filters[0].config && !h->filters[0].disabled);
    if (h->filters[0].config) {
        const struct sk_fault_cfg *fc = h->filters[0].config;
        CHECK(fc->magic == SK_FAULT_CFG_MAGIC && fc->has_max_active && fc->max_active_faults == 5);
        CHECK(fc->delay_kind == SK_FAULT_DELAY_NONE && fc->abort_kind == SK_FAULT_ABORT_NONE);
    }
    CHECK(h->nfilters == 2 && strcmp(h->filters[1].name, "fault-off") == 0 &&
          h->filters[1].disabled && h->filters[1].config);

    struct sk_route_config *rc = h->routes;
    CHECK(strcmp(rc->name, "main") == 0 && rc->ignore_port_in_host_matching && rc->nvhosts == 2);
    CHECK(rc->hdrs_req.nadd == 1 && strcmp(rc->hdrs_req.add[0].key, "x-rc") == 0);
    CHECK(rc->hdrs_resp.nremove == 1 && strcmp(rc->hdrs_resp.remove[0], "server") == 0);
    struct sk_vhost *v = &rc->vhosts[0];
    CHECK(v->ndomains == 3 && strcmp(v->domains[0], "api.example.com") == 0);
    CHECK(strcmp(v->domains[2], "api.*") == 0 && v->include_request_attempt_count);
    CHECK(v->hdrs_req.nadd == 2 && strcmp(v->hdrs_req.add[0].key, "x-vh") == 0);
    CHECK(v->hdrs_req.add[0].action == SK_HDR_OVERWRITE_IF_EXISTS_OR_ADD);
    CHECK(v->hdrs_req.add[1].action == SK_HDR_ADD_IF_ABSENT && v->hdrs_req.add[1].keep_empty_value);
    CHECK(v->hdrs_req.add[1].value_len == 1 && strcmp(v->hdrs_req.add[1].value, "b") == 0);
    CHECK(v->nroutes == 3);

    struct sk_route *r0 = &v->routes[0];
    CHECK(strcmp(r0->name, "exact") == 0 && r0->action == SK_ROUTE_DIRECT);
    CHECK(r0->match.path_kind == SK_PATH_EXACT && strcmp(r0->match.path, "/health") == 0);
    CHECK(!r0->match.case_sensitive && r0->match.nheaders == 8);
    struct sk_header_match *hm = r0->match.headers;
    CHECK(strcmp(hm[0].name, "x-exact") == 0 && hm[0].kind == SK_STR_EXACT);
    CHECK(strcmp(hm[0].value, "yes") == 0 && hm[0].value_len == 3);
    CHECK(hm[1].kind == SK_STR_PREFIX && hm[2].kind == SK_STR_SUFFIX);
    CHECK(hm[3].kind == SK_STR_CONTAINS && strcmp(hm[3].value, "mid") == 0);
    CHECK(hm[4].kind == SK_STR_PRESENT && hm[4].present);
    CHECK(hm[5].kind == SK_STR_PRESENT && hm[5].present);
    CHECK(hm[6].kind == SK_STR_PREFIX && hm[6].ignore_case && hm[6].invert);
    CHECK(strcmp(hm[6].value, "Foo") == 0);
    CHECK(strcmp(hm[7].name, ":method") == 0 && hm[7].kind == SK_STR_EXACT);
    CHECK(r0->direct_status == 200 && r0->direct_body_len == 2);
    CHECK(memcmp(r0->direct_body, "ok", 2) == 0);
    CHECK(r0->retry == NULL); /* direct responses are never retried */

    struct sk_route *r1 = &v->routes[1];
    CHECK(r1->action == SK_ROUTE_WEIGHTED && r1->nweighted == 2 && r1->total_weight == 100);
    CHECK(r1->weighted[0].cluster == sk_snapshot_find_cluster(s, "a") && r1->weighted[0].cluster);
    CHECK(r1->weighted[1].cluster == sk_snapshot_find_cluster(s, "b") && r1->weighted[1].cluster);
    CHECK(r1->weighted[0].weight == 30 && r1->weighted[0].hdrs_req.nadd == 1);
    CHECK(r1->timeout_ms == SK_DUR_NONE && r1->idle_timeout_ms == 5000 && r1->idle_timeout_set);
    CHECK(strcmp(r1->prefix_rewrite, "/") == 0);
    CHECK(strcmp(r1->host_rewrite_literal, "backend.local") == 0);
    CHECK(r1->max_stream_duration_ms == 3000);
    CHECK(r1->hdrs_resp.nadd == 1 && strcmp(r1->hdrs_resp.add[0].key, "x-route") == 0);
    struct sk_retry_policy *rp = r1->retry;
    CHECK(rp && rp->retry_on == (SK_RETRY_ON_CONNECT_FAILURE | SK_RETRY_ON_REFUSED_STREAM |
                                 SK_RETRY_ON_GRPC_UNAVAILABLE | SK_RETRY_ON_GRPC_CANCELLED |
                                 SK_RETRY_ON_RETRIABLE_STATUS_CODES));
    CHECK(rp && rp->num_retries == 2 && rp->per_try_timeout_ms == 1500);
    CHECK(rp && rp->nretriable_status_codes == 2 && rp->retriable_status_codes[1] == 504);
    CHECK(rp && rp->base_interval_ms == 100 && rp->max_interval_ms == 1000);
    CHECK(rp && rp->retry_other_host && rp->host_selection_retry_max_attempts == 5);

    struct sk_route *r2 = &v->routes[2];
    CHECK(r2->action == SK_ROUTE_CLUSTER && r2->auto_host_rewrite);
    CHECK(r2->cluster == sk_snapshot_find_cluster(s, "dns") && r2->cluster_not_found_status == 404);
    /* the vhost retry policy applies to routes without one */
    CHECK(r2->retry && r2->retry->retry_on == (SK_RETRY_ON_5XX | SK_RETRY_ON_RESET));
    CHECK(r2->retry && r2->retry->num_retries == 3 && r2->retry->base_interval_ms == 25);
    CHECK(r2->retry && r2->retry->max_interval_ms == 250);
    CHECK(r2->retry && r2->retry->per_try_timeout_ms == SK_DUR_NONE);
    CHECK(r2->retry && !r2->retry->retry_other_host);
    struct sk_route *r3 = &rc->vhosts[1].routes[0];
    CHECK(r3->direct_status == 404 && r3->direct_body_len == 4);
    CHECK(memcmp(r3->direct_body, "nope", 4) == 0 && strcmp(r3->match.path, "") == 0);

    struct sk_filter_chain *dc = l->default_chain;
    CHECK(dc && dc->kind == SK_CHAIN_TCP && dc->tcp);
    CHECK(dc && dc->tcp->nweighted == 2 && dc->tcp->total_weight == 4 && !dc->tcp->cluster);
    CHECK(dc && dc->tcp->weighted[1].cluster == sk_snapshot_find_cluster(s, "b"));
    CHECK(dc && dc->tcp->idle_timeout_ms == SK_DUR_NONE && dc->tcp->max_connect_attempts == 3);

    struct sk_cluster *a = sk_snapshot_find_cluster(s, "a");
    CHECK(a && a->index == 0 && a->type == SK_CLUSTER_STATIC &&
          a->lb_policy == SK_LB_LEAST_REQUEST);
    CHECK(a && a->lr_choice_count == 3 && a->connect_timeout_ms == 250);
    CHECK(a && a->per_connection_buffer_limit_bytes == 4096);
    CHECK(a && a->upstream_proto == SK_UP_HTTP2 && a->h2_max_concurrent_streams == 7);
    CHECK(a && a->cb.max_connections == 10 && a->cb.max_pending_requests == 20);
    CHECK(a && a->cb.max_requests == 30 && a->cb.max_retries == 4);
    CHECK(a && a->healthy_panic_percent == 0.0);
    CHECK(a && a->outlier && a->outlier->consecutive_5xx == 3 && a->outlier->interval_ms == 10000);
    CHECK(a && a->health_checks && a->health_checks->n == 1);
    CHECK(a && a->health_checks && a->health_checks->v[0].kind == SK_HC_TCP);
    CHECK(a && a->health_checks && a->health_checks->v[0].send_len == 0);
    CHECK(a && a->cb.retry_budget_min_concurrency == 3 && !a->cb.retry_budget);
    CHECK(a && a->ring_hash_min_size == 1024 && a->maglev_table_size == 65537);
    CHECK(a && a->peak_ewma_decay_ms == 10000);
    CHECK(a && a->nendpoints == 2 && ep_is(&a->endpoints[0], "10.0.0.1", 80));
    CHECK(a && a->endpoints[0].weight == 5 && a->endpoints[0].health == SK_HEALTH_HEALTHY);
    CHECK(a && a->endpoints[1].priority == 1 && a->endpoints[1].ip.sa.sa_family == AF_INET6);
    struct sk_cluster *b = sk_snapshot_find_cluster(s, "b");
    CHECK(b && b->index == 1 && b->type == SK_CLUSTER_STRICT_DNS && b->lb_policy == SK_LB_RANDOM);
    CHECK(b && b->dns_refresh_rate_ms == 30000 && b->dns_lookup_family == 1 && b->respect_dns_ttl);
    CHECK(b && b->upstream_proto == SK_UP_USE_DOWNSTREAM && b->h2_max_concurrent_streams == 9);
    CHECK(b && b->idle_timeout_ms == SK_DUR_NONE && b->max_requests_per_connection == 100);
    CHECK(b && b->nendpoints == 2 && strcmp(b->endpoints[0].host, "backend.example") == 0);
    CHECK(b && b->endpoints[0].port == 8080 && !sk_endpoint_has_addr(&b->endpoints[0]));
    CHECK(b && sk_endpoint_has_addr(&b->endpoints[1])); /* IP literal in a DNS cluster: pre-resolved */
    struct sk_cluster *d = sk_snapshot_find_cluster(s, "dns");
    CHECK(d && d->type == SK_CLUSTER_LOGICAL_DNS && d->nendpoints == 1);
    CHECK(d && d->upstream_proto == SK_UP_HTTP2 && d->h2_max_concurrent_streams == 100);
    CHECK(s->clusters_by_name && strcmp(s->clusters_by_name[2]->name, "dns") == 0);
    sk_snapshot_unref(s);
}

/* ---- xDS-configured bootstraps ----------------------------------------------------- */

static const char dyn_yaml[] =
    "dynamic_resources:\n"
    "  ads_config:\n"
    "    api_type: GRPC\n"
    "    transport_api_version: V3\n"
    "    grpc_services: [{envoy_grpc: {cluster_name: xds}}]\n"
    "    set_node_on_first_message_only: true\n"
    "  cds_config: {ads: {}, resource_api_version: V3}\n"
    "  lds_config: {ads: {}}\n" LISTENERS LISTENER_HCM(
        "          rds: {route_config_name: \"8080\", config_source: {ads: {}}}\n"
        "          http_filters: [" ROUTER
        "]\n") "  - name: l1\n"
               "    address: {socket_address: {address: 127.0.0.1, port_value: 10001}}\n"
               "    filter_chains:\n"
               "    - filters:\n"
               "      - name: tcp\n"
               "        typed_config: {\"@type\": " TCP_TYPE
               ", stat_prefix: t, cluster: \"outbound|80||svc\"}\n" CLUSTERS "  - name: xds\n"
               "    type: STRICT_DNS\n"
               "    typed_extension_protocol_options:\n"
               "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
               "        \"@type\": "
               "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
               "        explicit_http_config: {http2_protocol_options: {}}\n"
               "    load_assignment:\n"
               "      cluster_name: xds\n"
               "      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "
               "istiod, port_value: 15010}}}}]}]\n"
               "  - name: eds\n"
               "    type: EDS\n"
               "    eds_cluster_config: {eds_config: {ads: {}}}\n";

static void test_dynamic(void)
{
    struct sk_snapshot *s = LOAD_OK(dyn_yaml);
    if (!s)
        return;
    CHECK(s->xds.ads && s->xds.cds && s->xds.lds && s->xds.set_node_on_first_message_only);
    CHECK(strcmp(s->xds.ads_cluster, "xds") == 0 &&
          s->xds.cluster == sk_snapshot_find_cluster(s, "xds"));
    struct sk_hcm *h = s->listeners[0].chains[0].hcm;
    CHECK(h && !h->routes && strcmp(h->rds_name, "8080") == 0);
    /* CDS configured: a dangling cluster name is allowed and left unresolved */
    struct sk_tcp_proxy *p = s->listeners[1].chains[0].tcp;
    CHECK(p && !p->cluster && strcmp(p->cluster_name, "outbound|80||svc") == 0);
    struct sk_cluster *e = sk_snapshot_find_cluster(s, "eds");
    CHECK(e && e->type == SK_CLUSTER_EDS && strcmp(e->eds_service_name, "eds") == 0);
    CHECK(e && e->nendpoints == 0);
    sk_snapshot_unref(s);
}

/* ---- rejected configs ------------------------------------------------------------- */

#define L0 "static_resources.listeners[0]"
#define HCM0 L0 ".filter_chains[0].filters[0].typed_config"
#define RC0 HCM0 ".route_config"
#define VH0 RC0 ".virtual_hosts[0]"
#define C0 "static_resources.clusters[0]"

static void test_unknown_cluster(void)
{
    static const char y[] = LISTENERS LISTENER_HCM("          route_config:\n"
                                                   "            virtual_hosts:\n"
                                                   "            - name: vh\n"
                                                   "              domains: [\"*\"]\n"
                                                   "              routes:\n"
                                                   "              - match: {prefix: /a}\n"
                                                   "                route: {cluster: c}\n"
                                                   "              - match: {prefix: /}\n"
                                                   "                route:\n"
                                                   "                  cluster: nope\n"
                                                   "          http_filters: [" ROUTER "]\n")
        CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR_AT(y, VH0 ".routes[1].route.cluster", "unknown cluster 'nope'", NULL,
                  "cluster: nope");
    /* the documented example path */
    EXPECT_ERR(y,
               "static_resources.listeners[0].filter_chains[0].filters[0].typed_config."
               "route_config.virtual_hosts[0].routes[1].route.cluster",
               "unknown cluster");

    static const char tcp[] =
        LISTENERS "  - name: t\n"
                  "    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
                  "    filter_chains:\n"
                  "    - filters:\n"
                  "      - name: tcp\n"
                  "        typed_config:\n"
                  "          \"@type\": " TCP_TYPE "\n"
                  "          stat_prefix: t\n"
                  "          weighted_clusters: {clusters: [{name: missing, weight: 1}]}\n";
    EXPECT_ERR_AT(tcp,
                  L0 ".filter_chains[0].filters[0].typed_config.weighted_clusters.clusters[0].name",
                  "unknown cluster 'missing'", NULL, "name: missing");
}

static void test_listener_errors(void)
{
    static const char dup[] =
        LISTENERS LISTENER_HCM(SIMPLE_ROUTES("c")) LISTENER_HCM(SIMPLE_ROUTES("c"))
            CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80") STATIC_CLUSTER("c", "127.0.0.2", "80");
    EXPECT_ERR_AT(dup, "static_resources.listeners[1].name", "duplicate listener name 'l0'",
                  "route: {cluster: c}", "name: l0\n");
    EXPECT_ERR(dup, "static_resources.listeners[1].address",
               "address 127.0.0.1:10000 is already "
               "used by listener 'l0'");
    EXPECT_ERR_AT(dup, "static_resources.clusters[1].name", "duplicate cluster name 'c'",
                  "127.0.0.1, port_value: 80", "name: c\n");

    static const char pipe[] = LISTENERS
        "  - name: p\n"
        "    address:\n"
        "      pipe: {path: /tmp/x.sock}\n"
        "    filter_chains: [{filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]}]\n" CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR_AT(pipe, L0 ".address.pipe", "pipe (unix socket) addresses are not supported yet",
                  NULL, "pipe:");

    static const char badaddr[] = LISTENERS
        "  - name: p\n"
        "    address: {socket_address: {address: localhost, port_value: 70000}}\n"
        "    filter_chains: [{filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]}]\n" CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR_AT(badaddr, L0 ".address.socket_address.port_value", "port 70000 out of range", NULL,
                  "port_value: 70000");
    EXPECT_ERR_AT(badaddr, L0 ".address.socket_address.address", "'localhost' is not an IP address",
                  NULL, "address: localhost");

    static const char nochain[] =
        LISTENERS "  - address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n";
    EXPECT_ERR(nochain, L0 ".name", "name is required");
    EXPECT_ERR(nochain, L0 ".filter_chains", "at least one filter chain");

    static const char notlast[] =
        LISTENERS "  - name: x\n"
                  "    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
                  "    filter_chains:\n"
                  "    - filters:\n"
                  "      - name: t\n"
                  "        typed_config: {\"@type\": " TCP_TYPE ", stat_prefix: t, cluster: c}\n"
                  "      - name: r\n"
                  "        typed_config: {\"@type\": " ROUTER_TYPE
                  "}\n" CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR_AT(notlast, L0 ".filter_chains[0].filters[0].typed_config",
                  "is a terminal filter and must be the last", NULL, "typed_config");
    EXPECT_ERR(notlast, L0 ".filter_chains[0].filters[1].typed_config",
               "unsupported network filter 'envoy.extensions.filters.http.router.v3.Router'");

    static const char tls[] = LISTENERS
        "  - name: x\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
        "    filter_chains:\n"
        "    - transport_socket:\n"
        "        name: envoy.transport_sockets.tls\n"
        "        typed_config:\n"
        "          \"@type\": "
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n"
        "          require_client_certificate: true\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n"
        "    listener_filters:\n"
        "    - name: odd\n"
        "      typed_config: {\"@type\": " ROUTER_TYPE "}\n"
        "    - name: ts\n"
        "      typed_config:\n"
        "        \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n"
        "        type_url: type.googleapis.com/istio.Whatever\n"
        "        value: {a: 1}\n" CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR_AT(tls, L0 ".filter_chains[0].transport_socket.typed_config.common_tls_context",
                  "needs a certificate", "transport_socket:", "typed_config");
    EXPECT_ERR_AT(tls,
                  L0 ".filter_chains[0].transport_socket.typed_config.require_client_certificate",
                  "needs a validation context", NULL, "require_client_certificate: true");
    EXPECT_ERR(tls, L0 ".listener_filters[0].typed_config", "unsupported listener filter");
    EXPECT_ERR(tls, L0 ".listener_filters[1].typed_config", "TypedStruct not supported yet");

    static const char match[] = LISTENERS
        "  - name: x\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
        "    use_proxy_proto: true\n"
        "    filter_chains:\n"
        "    - filter_chain_match: {prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}\n"
        "      use_proxy_proto: true\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n"
        "    - filter_chain_match: {server_names: [a.com]}\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n"
        "    - filter_chain_match: {server_names: [A.com]}\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n" CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    /* use_proxy_proto exists only on FilterChain: unknown on Listener (YAML loader) */
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    CHECK(load(match, &s, &e) == SK_ERR_CONFIG && !s);
    sk_cfgerrs_free(&e);
    static const char match2[] = LISTENERS
        "  - name: x\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
        "    filter_chains:\n"
        "    - filter_chain_match: {prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}\n"
        "      use_proxy_proto: true\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n"
        "    - filter_chain_match: {server_names: [a.com]}\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n"
        "    - filter_chain_match: {server_names: [A.com]}\n"
        "      filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c}}]\n" CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR(match2, L0 ".filter_chains[0].filter_chain_match.prefix_ranges",
               "prefix_ranges is not supported by skiff");
    EXPECT_ERR(match2, L0 ".filter_chains[0].use_proxy_proto", "use_proxy_proto is not supported");
    EXPECT_ERR(match2, L0 ".filter_chains[2].filter_chain_match",
               "filter chains [1] and [2] have the same filter_chain_match");
}

static void test_hcm_errors(void)
{
    static const char y[] = LISTENERS LISTENER_HCM(
        "          codec_type: HTTP3\n"
        "          rds: {route_config_name: r, config_source: {ads: {}}}\n"
        "          upgrade_configs: [{upgrade_type: h2c}]\n"
        "          http_filters:\n"
        "          - " ROUTER "\n"
        "          - name: f\n"
        "            typed_config: {\"@type\": " FAULT_TYPE "}\n"
        "          - name: x\n"
        "            typed_config: {\"@type\": " TCP_TYPE ", stat_prefix: x, cluster: x}\n");
    EXPECT_ERR_AT(y, HCM0 ".codec_type", "codec_type HTTP3 is not supported", NULL,
                  "codec_type: HTTP3");
    EXPECT_ERR_AT(y, HCM0 ".rds", "RDS requires xDS (not configured", NULL, "rds:");
    EXPECT_ERR_AT(y, HCM0 ".http_filters[0].typed_config",
                  "the router filter must be the last HTTP filter",
                  "http_filters:", "typed_config");
    EXPECT_ERR(y, HCM0 ".http_filters[2].typed_config",
               "unsupported HTTP filter 'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy'");
    EXPECT_ERR(y, HCM0 ".upgrade_configs[0].upgrade_type", "upgrade type 'h2c' is not supported");

    static const char nofilters[] =
        LISTENERS "  - name: l0\n"
                  "    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}\n"
                  "    filter_chains:\n"
                  "    - filters:\n"
                  "      - name: h\n"
                  "        typed_config: {\"@type\": " HCM_TYPE "}\n";
    EXPECT_ERR(nofilters, HCM0 ".stat_prefix", "stat_prefix is required");
    EXPECT_ERR(nofilters, HCM0, "one of route_config, rds is required");
    EXPECT_ERR(nofilters, HCM0 ".http_filters", "must end with the router filter");

    static const char unsup[] = LISTENERS LISTENER_HCM(
        "          via: proxy\n"
        "          forward_client_cert_details: APPEND_FORWARD\n"
        "          common_http_protocol_options: {max_connection_duration: 5s, idle_timeout: "
        "-1s}\n" SIMPLE_ROUTES("c")) CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR_AT(unsup, HCM0 ".via", "via is not supported by skiff", NULL, "via: proxy");
    /* forward_client_cert_details is supported now: APPEND_FORWARD is accepted */
    EXPECT_ERR(unsup, HCM0 ".common_http_protocol_options.max_connection_duration",
               "max_connection_duration is not supported by skiff");
}

/* vhost/route errors; they all are collected from one config */
static void test_route_errors(void)
{
    static const char y[] = LISTENERS LISTENER_HCM(
        "          route_config:\n"
        "            typed_per_filter_config:\n"
        "              envoy.filters.http.fault: {\"@type\": " FAULT_TYPE
        ", abort: {http_status: 99}}\n"
        "            virtual_hosts:\n"
        "            - name: a\n"
        "              domains: [\"*\", foo.com, \"a*b\"]\n"
        "              routes:\n"
        "              - match: {safe_regex: {regex: \"/x.*\"}}\n"
        "                route: {cluster: c}\n"
        "              - match: {prefix: /, query_parameters: [{name: q, present_match: true}]}\n"
        "                redirect: {path_redirect: /x}\n"
        "              - match: {prefix: /}\n"
        "                direct_response: {status: 700}\n"
        "              - match: {prefix: /w}\n"
        "                route:\n"
        "                  weighted_clusters: {clusters: [{name: c, weight: 0}]}\n"
        "              - match: {prefix: /r}\n"
        "                route: {cluster: c, retry_policy: {retry_on: \"5xx,bogus\"}}\n"
        "              - match: {prefix: /h, headers: [{name: \"bad name\", exact_match: x}]}\n"
        "                route: {cluster: c, regex_rewrite: {pattern: {regex: a}, substitution: "
        "b}}\n"
        "                request_headers_to_add: [{header: {key: \":path\", value: x}}]\n"
        "              - match: {prefix: /}\n"
        "            - name: a\n"
        "              domains: [FOO.com]\n"
        "          http_filters: [" ROUTER "]\n") CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR(y, RC0 ".typed_per_filter_config.envoy.filters.http.fault.abort.http_status",
               "http_status must be 200-599 (got 99)");
    EXPECT_ERR_AT(y, VH0 ".domains[2]", "invalid domain 'a*b'", NULL, "\"a*b\"");
    EXPECT_ERR_AT(y, VH0 ".routes[0].match.safe_regex", "regex path matching is not supported yet",
                  NULL, "safe_regex:");
    EXPECT_ERR(y, VH0 ".routes[1].match.query_parameters",
               "query_parameters matching is not supported");
    EXPECT_ERR_AT(y, VH0 ".routes[1].redirect", "redirect is not supported yet", NULL, "redirect:");
    EXPECT_ERR_AT(y, VH0 ".routes[2].direct_response.status", "status 700 out of range", NULL,
                  "status: 700");
    EXPECT_ERR(y, VH0 ".routes[3].route.weighted_clusters.clusters", "total weight must be");
    EXPECT_ERR(y, VH0 ".routes[4].route.retry_policy.retry_on", "unknown retry_on value 'bogus'");
    EXPECT_ERR(y, VH0 ".routes[5].match.headers[0].name", "invalid header name 'bad name'");
    EXPECT_ERR(y, VH0 ".routes[5].route.regex_rewrite", "regex_rewrite is not supported yet");
    EXPECT_ERR(y, VH0 ".routes[5].request_headers_to_add[0].header.key",
               "pseudo-header ':path' cannot be modified");
    EXPECT_ERR(y, VH0 ".routes[6]", "one of route, direct_response is required");
    EXPECT_ERR_AT(y, RC0 ".virtual_hosts[1].domains[0]",
                  "domain 'foo.com' is already used by "
                  "virtual host 'a'",
                  NULL, "FOO.com");
    EXPECT_ERR(y, RC0 ".virtual_hosts[1].name", "duplicate virtual host name 'a'");

    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    CHECK(load(y, &s, &e) == SK_ERR_CONFIG && !s && e.n == 14);
    if (e.n != 14)
        sk_cfgerrs_print(&e, stderr);
    sk_cfgerrs_free(&e);
}

static void test_cluster_errors(void)
{
    static const char y[] =
        "static_resources:\n" CLUSTERS "  - name: e\n"
        "    type: EDS\n"
        "  - name: o\n"
        "    type: ORIGINAL_DST\n"
        "    lb_policy: CLUSTER_PROVIDED\n"
        "  - name: ld\n"
        "    type: LOGICAL_DNS\n"
        "    load_assignment:\n"
        "      endpoints:\n"
        "      - lb_endpoints:\n"
        "        - endpoint: {address: {socket_address: {address: a.com, port_value: 80}}}\n"
        "        - endpoint: {address: {socket_address: {address: b.com, port_value: 80}}}\n"
        "  - name: st\n"
        "    connect_timeout: 0s\n"
        "    load_assignment:\n"
        "      endpoints:\n"
        "      - lb_endpoints:\n"
        "        - endpoint: {address: {socket_address: {address: a.com, port_value: 80}}}\n"
        "        - endpoint: {address: {socket_address: {address: 1.2.3.4, port_value: 80}}}\n"
        "          load_balancing_weight: 0\n"
        "  - name: tls\n"
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config: {\"@type\": "
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: "
        "x}\n"
        "    typed_extension_protocol_options:\n"
        "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        "        \"@type\": "
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
        "    http2_protocol_options: {}\n"
        "  - name: rh\n"
        "    lb_policy: LOAD_BALANCING_POLICY_CONFIG\n"
        "  secrets:\n"
        "  - name: s\n";
    EXPECT_ERR_AT(y, C0 ".type", "EDS clusters require xDS", NULL, "type: EDS");
    EXPECT_ERR_AT(y, "static_resources.clusters[1].type", "ORIGINAL_DST clusters are not supported",
                  NULL, "type: ORIGINAL_DST");
    EXPECT_ERR(y, "static_resources.clusters[1].lb_policy",
               "lb_policy CLUSTER_PROVIDED is not supported by skiff");
    EXPECT_ERR(y, "static_resources.clusters[2].load_assignment",
               "LOGICAL_DNS clusters need exactly one endpoint (got 2)");
    EXPECT_ERR(y, "static_resources.clusters[3].connect_timeout",
               "connect_timeout must be greater than 0");
    EXPECT_ERR_AT(y,
                  "static_resources.clusters[3].load_assignment.endpoints[0].lb_endpoints[0]."
                  "endpoint.address.socket_address.address",
                  "'a.com' is not an IP address", "name: st", "address: a.com");
    EXPECT_ERR(y,
               "static_resources.clusters[3].load_assignment.endpoints[0].lb_endpoints[1]."
               "load_balancing_weight",
               "load_balancing_weight must be at least 1");
    EXPECT_ERR(y,
               "static_resources.clusters[4].typed_extension_protocol_options[\"envoy.extensions."
               "upstreams.http.v3.HttpProtocolOptions\"]",
               "one of explicit_http_config, use_downstream_protocol_config is required");
    EXPECT_ERR(y, "static_resources.clusters[4].typed_extension_protocol_options",
               "cannot be combined with the deprecated");
    EXPECT_ERR(y, "static_resources.clusters[5].lb_policy",
               "lb_policy LOAD_BALANCING_POLICY_CONFIG needs load_balancing_policy");
    EXPECT_ERR(y, "static_resources.secrets", "static secrets are not supported yet");
}

static void test_dynamic_errors(void)
{
    static const char y[] = "dynamic_resources:\n"
                            "  ads_config:\n"
                            "    api_type: DELTA_GRPC\n"
                            "    grpc_services: [{envoy_grpc: {cluster_name: missing}}]\n"
                            "  lds_config: {api_config_source: {api_type: GRPC}}\n";
    EXPECT_ERR(y, "dynamic_resources.ads_config.api_type", "only api_type GRPC");
    EXPECT_ERR(y, "dynamic_resources.lds_config", "only ads and path_config_source config sources");
    EXPECT_ERR_AT(y, "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                  "unknown cluster 'missing'", NULL, "cluster_name: missing");

    static const char noads[] = "dynamic_resources:\n  cds_config: {ads: {}}\n";
    EXPECT_ERR(noads, "dynamic_resources.cds_config", "ads requires ads_config");

    static const char admin[] =
        "admin:\n"
        "  address: {socket_address: {address: 0.0.0.0, port_value: 70000}}\n"
        "  socket_options: [{level: 1, name: 2, int_value: 1}]\n";
    EXPECT_ERR(admin, "admin.address.socket_address.port_value", "out of range");
    EXPECT_ERR(admin, "admin.socket_options", "socket_options is not supported by skiff");
}

/* ---- resilience: outlier detection, health checks, circuit breakers, LB policies ---------- */

#define PEAK_EWMA_TYPE "type.googleapis.com/skiff.lb.v1.PeakEwma"
#define LBP_PREFIX "type.googleapis.com/envoy.extensions.load_balancing_policies."
#define RR_TYPE LBP_PREFIX "round_robin.v3.RoundRobin"
#define LR_TYPE LBP_PREFIX "least_request.v3.LeastRequest"
#define RANDOM_TYPE LBP_PREFIX "random.v3.Random"
#define RH_TYPE LBP_PREFIX "ring_hash.v3.RingHash"
#define MAGLEV_TYPE LBP_PREFIX "maglev.v3.Maglev"

static const char resil_yaml[] =
    "static_resources:\n" CLUSTERS "  - name: od\n"
    "    type: STATIC\n"
    "    outlier_detection:\n"
    "      consecutive_5xx: 7\n"
    "      interval: 2s\n"
    "      base_ejection_time: 400s\n"
    "      max_ejection_percent: 50\n"
    "      enforcing_consecutive_5xx: 90\n"
    "      enforcing_success_rate: 80\n"
    "      success_rate_minimum_hosts: 3\n"
    "      success_rate_request_volume: 20\n"
    "      success_rate_stdev_factor: 2500\n"
    "      consecutive_gateway_failure: 4\n"
    "      enforcing_consecutive_gateway_failure: 100\n"
    "      split_external_local_origin_errors: true\n"
    "      consecutive_local_origin_failure: 6\n"
    "      enforcing_consecutive_local_origin_failure: 70\n"
    "      enforcing_local_origin_success_rate: 60\n"
    "      failure_percentage_threshold: 40\n"
    "      enforcing_failure_percentage: 30\n"
    "      failure_percentage_minimum_hosts: 2\n"
    "      failure_percentage_request_volume: 10\n"
    "      max_ejection_time_jitter: 0.5s\n"
    "      successful_active_health_check_uneject_host: true\n"
    "      always_eject_one_host: false\n"
    "    health_checks:\n"
    "    - timeout: 1s\n"
    "      interval: 3s\n"
    "      initial_jitter: 0.1s\n"
    "      interval_jitter: 0.2s\n"
    "      interval_jitter_percent: 10\n"
    "      unhealthy_threshold: 4\n"
    "      healthy_threshold: 2\n"
    "      reuse_connection: true\n"
    "      no_traffic_interval: 30s\n"
    "      no_traffic_healthy_interval: 90s\n"
    "      unhealthy_interval: 7s\n"
    "      unhealthy_edge_interval: 8s\n"
    "      healthy_edge_interval: 9s\n"
    "      event_log_path: /dev/null\n"
    "      always_log_health_check_failures: true\n"
    "      http_health_check:\n"
    "        host: hc.local\n"
    "        path: /healthz\n"
    "        expected_statuses: [{start: 200, end: 300}, {start: 404, end: 405}]\n"
    "        request_headers_to_add: [{header: {key: X-HC, value: \"1\"}}]\n"
    "        request_headers_to_remove: [User-Agent]\n"
    "        codec_client_type: HTTP1\n"
    "        method: GET\n"
    "    circuit_breakers:\n"
    "      thresholds:\n"
    "      - priority: HIGH\n"
    "        max_connections: 1\n"
    "        max_connection_pools: 2\n"
    "        retry_budget: {budget_percent: {value: 500}}\n"
    "      - track_remaining: true\n"
    "        max_retries: 9\n"
    "        retry_budget: {budget_percent: {value: 25.5}, min_retry_concurrency: 7}\n"
    "    lb_policy: RING_HASH\n"
    "    ring_hash_lb_config: {minimum_ring_size: 64, maximum_ring_size: 4096, hash_function: "
    "XX_HASH}\n"
    /* [1] defaults everywhere */
    "  - name: dflt\n"
    "    type: STATIC\n"
    "    outlier_detection: {}\n"
    "    health_checks:\n"
    "    - {timeout: 1s, interval: 5s, unhealthy_threshold: 3, healthy_threshold: 1, "
    "http_health_check: {path: /}}\n"
    "    circuit_breakers: {thresholds: [{retry_budget: {}}]}\n"
    "    lb_policy: RING_HASH\n"
    /* [2] TCP health check, maglev */
    "  - name: tcp\n"
    "    type: STATIC\n"
    "    health_checks:\n"
    "    - timeout: 1s\n"
    "      interval: 5s\n"
    "      unhealthy_threshold: 1\n"
    "      healthy_threshold: 1\n"
    "      tcp_health_check:\n"
    "        send: {text: 50494e47}\n"
    "        receive: [{text: 504f4e47}, {binary: T0s=}]\n"
    "    lb_policy: MAGLEV\n"
    "    maglev_lb_config: {table_size: 251}\n"
    /* [3] maglev default */
    "  - name: mg\n"
    "    type: STATIC\n"
    "    lb_policy: MAGLEV\n"
    /* [4] peak EWMA through load_balancing_policy; an unknown (TypedStruct)
     * policy first is skipped, and lb_policy is ignored */
    "  - name: ewma\n"
    "    type: STATIC\n"
    "    lb_policy: CLUSTER_PROVIDED\n"
    "    load_balancing_policy:\n"
    "      policies:\n"
    "      - typed_extension_config:\n"
    "          name: custom\n"
    "          typed_config: {\"@type\": type.googleapis.com/xds.type.v3.TypedStruct, "
    "type_url: type.googleapis.com/acme.Lb}\n"
    "      - typed_extension_config:\n"
    "          name: skiff.lb.peak_ewma\n"
    "          typed_config: {\"@type\": " PEAK_EWMA_TYPE ", decay_time: 2.5s}\n"
    "      - typed_extension_config:\n"
    "          name: envoy.load_balancing_policies.round_robin\n"
    "          typed_config: {\"@type\": " RR_TYPE "}\n"
    /* [5] peak EWMA default decay */
    "  - name: ewma2\n"
    "    type: STATIC\n"
    "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
    "{\"@type\": " PEAK_EWMA_TYPE "}}}]}\n"
    /* [6..10] Envoy's own policy extensions */
    "  - name: x-rr\n"
    "    lb_policy: RANDOM\n"
    "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
    "{\"@type\": " RR_TYPE "}}}]}\n"
    "  - name: x-lr\n"
    "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
    "{\"@type\": " LR_TYPE ", choice_count: 4}}}]}\n"
    "  - name: x-rand\n"
    "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
    "{\"@type\": " RANDOM_TYPE "}}}]}\n"
    "  - name: x-rh\n"
    "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
    "{\"@type\": " RH_TYPE ", hash_function: XX_HASH, "
    "minimum_ring_size: 16, maximum_ring_size: 32}}}]}\n"
    "  - name: x-mg\n"
    "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
    "{\"@type\": " MAGLEV_TYPE ", table_size: 5000011}}}]}\n";

static void test_resilience(void)
{
    struct sk_snapshot *s = LOAD_OK(resil_yaml);
    if (!s)
        return;
    CHECK(s->nclusters == 11);
    struct sk_cluster *c = sk_snapshot_find_cluster(s, "od");
    struct sk_outlier *o = c ? c->outlier : NULL;
    CHECK(o != NULL);
    if (o) {
        CHECK(o->consecutive_5xx == 7 && o->interval_ms == 2000);
        /* max_ejection_time unset: max(300 s, base_ejection_time) */
        CHECK(o->base_ejection_time_ms == 400000 && o->max_ejection_time_ms == 400000);
        CHECK(o->max_ejection_percent == 50 && o->enforcing_consecutive_5xx == 90);
        CHECK(o->enforcing_success_rate == 80 && o->success_rate_minimum_hosts == 3);
        CHECK(o->success_rate_request_volume == 20 && o->success_rate_stdev_factor == 2500);
        CHECK(o->consecutive_gateway_failure == 4);
        CHECK(o->enforcing_consecutive_gateway_failure == 100);
        CHECK(o->split_external_local_origin_errors && o->consecutive_local_origin_failure == 6);
        CHECK(o->enforcing_consecutive_local_origin_failure == 70);
        CHECK(o->enforcing_local_origin_success_rate == 60);
        CHECK(o->failure_percentage_threshold == 40 && o->enforcing_failure_percentage == 30);
        CHECK(o->failure_percentage_minimum_hosts == 2);
        CHECK(o->failure_percentage_request_volume == 10);
        CHECK(o->max_ejection_time_jitter_ms == 500);
    }
    struct sk_health_checks *hcs = c ? c->health_checks : NULL;
    CHECK(hcs && hcs->n == 1);
    if (hcs && hcs->n == 1) {
        struct sk_health_check *h = &hcs->v[0];
        CHECK(h->kind == SK_HC_HTTP && h->timeout_ms == 1000 && h->interval_ms == 3000);
        CHECK(h->initial_jitter_ms == 100 && h->interval_jitter_ms == 200);
        CHECK(h->interval_jitter_percent == 10);
        CHECK(h->unhealthy_threshold == 4 && h->healthy_threshold == 2);
        CHECK(h->no_traffic_interval_ms == 30000 && h->no_traffic_healthy_interval_ms == 90000);
        CHECK(h->unhealthy_interval_ms == 7000 && h->unhealthy_edge_interval_ms == 8000);
        CHECK(h->healthy_edge_interval_ms == 9000);
        CHECK(strcmp(h->host, "hc.local") == 0 && strcmp(h->path, "/healthz") == 0);
        CHECK(h->nexpected == 2 && h->expected_statuses[0] == 200);
        CHECK(h->nexpected == 2 && h->expected_statuses[1] == 300);
        CHECK(h->nexpected == 2 && h->expected_statuses[2] == 404);
        CHECK(h->nexpected == 2 && h->expected_statuses[3] == 405);
        CHECK(h->req_hdrs.nadd == 1 && strcmp(h->req_hdrs.add[0].key, "x-hc") == 0);
        CHECK(h->req_hdrs.nadd == 1 && strcmp(h->req_hdrs.add[0].value, "1") == 0);
        CHECK(h->req_hdrs.nremove == 1 && strcmp(h->req_hdrs.remove[0], "user-agent") == 0);
        CHECK(h->send == NULL && h->nreceive == 0);
    }
    /* DEFAULT thresholds used; HIGH (with fields that would be errors for
     * DEFAULT) accepted and ignored */
    CHECK(c && c->cb.max_connections == 1024 && c->cb.max_retries == 9);
    CHECK(c && c->cb.track_remaining && c->cb.retry_budget);
    CHECK(c && c->cb.retry_budget_percent == 25.5 && c->cb.retry_budget_min_concurrency == 7);
    CHECK(c && c->lb_policy == SK_LB_RING_HASH);
    CHECK(c && c->ring_hash_min_size == 64 && c->ring_hash_max_size == 4096);

    c = sk_snapshot_find_cluster(s, "dflt");
    o = c ? c->outlier : NULL;
    CHECK(o != NULL);
    if (o) {
        CHECK(o->consecutive_5xx == 5 && o->consecutive_gateway_failure == 5);
        CHECK(o->consecutive_local_origin_failure == 5 && o->enforcing_consecutive_5xx == 100);
        CHECK(o->enforcing_consecutive_gateway_failure == 0);
        CHECK(o->enforcing_consecutive_local_origin_failure == 100);
        CHECK(o->enforcing_local_origin_success_rate == 100);
        CHECK(!o->split_external_local_origin_errors && o->interval_ms == 10000);
        CHECK(o->base_ejection_time_ms == 30000 && o->max_ejection_time_ms == 300000);
        CHECK(o->max_ejection_time_jitter_ms == 0 && o->max_ejection_percent == 10);
        CHECK(o->success_rate_minimum_hosts == 5 && o->success_rate_request_volume == 100);
        CHECK(o->success_rate_stdev_factor == 1900 && o->enforcing_success_rate == 100);
        CHECK(o->failure_percentage_threshold == 85 && o->failure_percentage_minimum_hosts == 5);
        CHECK(o->failure_percentage_request_volume == 50);
        CHECK(o->enforcing_failure_percentage == 0);
    }
    hcs = c ? c->health_checks : NULL;
    CHECK(hcs && hcs->n == 1);
    if (hcs && hcs->n == 1) {
        struct sk_health_check *h = &hcs->v[0];
        CHECK(h->kind == SK_HC_HTTP && h->initial_jitter_ms == 0 && h->interval_jitter_ms == 0);
        CHECK(h->interval_jitter_percent == 0 && h->no_traffic_interval_ms == 60000);
        CHECK(h->no_traffic_healthy_interval_ms == 60000);
        CHECK(h->unhealthy_interval_ms == 5000 && h->unhealthy_edge_interval_ms == 5000);
        CHECK(h->healthy_edge_interval_ms == 5000);
        CHECK(strcmp(h->host, "dflt") == 0 && strcmp(h->path, "/") == 0); /* host = cluster */
        CHECK(h->nexpected == 1 && h->expected_statuses[0] == 200);
        CHECK(h->nexpected == 1 && h->expected_statuses[1] == 201);
        CHECK(h->req_hdrs.nadd == 0 && h->req_hdrs.nremove == 0);
    }
    CHECK(c && c->cb.max_connections == 1024 && c->cb.max_pending_requests == 1024);
    CHECK(c && c->cb.max_requests == 1024 && c->cb.max_retries == 3);
    CHECK(c && !c->cb.track_remaining && c->cb.retry_budget);
    CHECK(c && c->cb.retry_budget_percent == 20.0 && c->cb.retry_budget_min_concurrency == 3);
    CHECK(c && c->lb_policy == SK_LB_RING_HASH);
    CHECK(c && c->ring_hash_min_size == 1024 && c->ring_hash_max_size == 8388608);

    c = sk_snapshot_find_cluster(s, "tcp");
    CHECK(c && !c->outlier && !c->cb.retry_budget && c->cb.retry_budget_percent == 0.0);
    hcs = c ? c->health_checks : NULL;
    CHECK(hcs && hcs->n == 1);
    if (hcs && hcs->n == 1) {
        struct sk_health_check *h = &hcs->v[0];
        CHECK(h->kind == SK_HC_TCP && !h->path);
        CHECK(h->send_len == 4 && memcmp(h->send, "PING", 4) == 0);
        CHECK(h->nreceive == 2 && h->receive_len[0] == 4 && memcmp(h->receive[0], "PONG", 4) == 0);
        CHECK(h->nreceive == 2 && h->receive_len[1] == 2 && memcmp(h->receive[1], "OK", 2) == 0);
    }
    CHECK(c && c->lb_policy == SK_LB_MAGLEV && c->maglev_table_size == 251);
    c = sk_snapshot_find_cluster(s, "mg");
    CHECK(c && c->lb_policy == SK_LB_MAGLEV && c->maglev_table_size == 65537);
    CHECK(c && !c->health_checks && !c->outlier);

    c = sk_snapshot_find_cluster(s, "ewma");
    CHECK(c && c->lb_policy == SK_LB_PEAK_EWMA && c->peak_ewma_decay_ms == 2500);
    c = sk_snapshot_find_cluster(s, "ewma2");
    CHECK(c && c->lb_policy == SK_LB_PEAK_EWMA && c->peak_ewma_decay_ms == 10000);
    c = sk_snapshot_find_cluster(s, "x-rr");
    CHECK(c && c->lb_policy == SK_LB_ROUND_ROBIN);
    c = sk_snapshot_find_cluster(s, "x-lr");
    CHECK(c && c->lb_policy == SK_LB_LEAST_REQUEST && c->lr_choice_count == 4);
    c = sk_snapshot_find_cluster(s, "x-rand");
    CHECK(c && c->lb_policy == SK_LB_RANDOM);
    c = sk_snapshot_find_cluster(s, "x-rh");
    CHECK(c && c->lb_policy == SK_LB_RING_HASH);
    CHECK(c && c->ring_hash_min_size == 16 && c->ring_hash_max_size == 32);
    c = sk_snapshot_find_cluster(s, "x-mg");
    CHECK(c && c->lb_policy == SK_LB_MAGLEV && c->maglev_table_size == 5000011);
    sk_snapshot_unref(s);
}

#define CL(i) "static_resources.clusters[" #i "]"

static void test_resilience_errors(void)
{
    static const char od[] =
        "static_resources:\n" CLUSTERS "  - name: a\n"
        "    outlier_detection:\n"
        "      max_ejection_percent: 101\n"
        "      enforcing_consecutive_5xx: 200\n"
        "      enforcing_success_rate: 101\n"
        "      enforcing_consecutive_gateway_failure: 101\n"
        "      enforcing_consecutive_local_origin_failure: 101\n"
        "      enforcing_local_origin_success_rate: 101\n"
        "      failure_percentage_threshold: 101\n"
        "      enforcing_failure_percentage: 101\n"
        "      interval: 0s\n"
        "      base_ejection_time: 60s\n"
        "      max_ejection_time: 10s\n"
        "      always_eject_one_host: true\n"
        "      successful_active_health_check_uneject_host: false\n"
        "      split_external_local_origin_errors: true\n"
        "      enforcing_failure_percentage_local_origin: 5\n"
        "  - name: b\n"
        "    outlier_detection: {base_ejection_time: -1s, max_ejection_time: 1s}\n";
    EXPECT_ERR_AT(od, CL(0) ".outlier_detection.max_ejection_percent",
                  "max_ejection_percent must be 0-100 (got 101)", NULL,
                  "max_ejection_percent: 101");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_consecutive_5xx", "must be 0-100 (got 200)");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_success_rate", "must be 0-100");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_consecutive_gateway_failure",
               "must be 0-100");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_consecutive_local_origin_failure",
               "must be 0-100");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_local_origin_success_rate", "must be 0-100");
    EXPECT_ERR(od, CL(0) ".outlier_detection.failure_percentage_threshold", "must be 0-100");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_failure_percentage", "must be 0-100");
    EXPECT_ERR_AT(od, CL(0) ".outlier_detection.interval", "interval must be greater than 0", NULL,
                  "interval: 0s");
    EXPECT_ERR(od, CL(0) ".outlier_detection.max_ejection_time",
               "max_ejection_time cannot be smaller than base_ejection_time");
    EXPECT_ERR(od, CL(0) ".outlier_detection.always_eject_one_host",
               "always_eject_one_host: true is not supported by skiff");
    EXPECT_ERR(od, CL(0) ".outlier_detection.successful_active_health_check_uneject_host",
               "successful_active_health_check_uneject_host: false is not supported");
    EXPECT_ERR(od, CL(0) ".outlier_detection.enforcing_failure_percentage_local_origin",
               "is not supported by skiff");
    EXPECT_ERR(od, CL(1) ".outlier_detection.base_ejection_time", "invalid duration");
    /* base_ejection_time falls back to its default (30 s) > max 1 s */
    EXPECT_ERR(od, CL(1) ".outlier_detection.max_ejection_time", "cannot be smaller");

    static const char hc[] =
        "static_resources:\n" CLUSTERS "  - name: a\n"
        "    health_checks:\n"
        "    - interval: 0s\n"
        "      alt_port: 9\n"
        "      reuse_connection: false\n"
        "      no_traffic_interval: 0s\n"
        "      http_health_check:\n"
        "        path: \"\"\n"
        "        codec_client_type: HTTP2\n"
        "        expected_statuses: [{start: 200, end: 200}, {start: 99, end: 200}, {start: 500, "
        "end: 601}]\n"
        "        retriable_statuses: [{start: 500, end: 501}]\n"
        "        service_name_matcher: {exact: x}\n"
        "        send: {text: \"00\"}\n"
        "        method: POST\n"
        "    - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, "
        "grpc_health_check: {}}\n"
        "    - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, "
        "custom_health_check: {name: x}}\n"
        "    - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1}\n"
        "    - timeout: 1s\n"
        "      interval: 1s\n"
        "      unhealthy_threshold: 1\n"
        "      healthy_threshold: 1\n"
        "      tcp_health_check:\n"
        "        send: {text: 0g}\n"
        "        receive: [{text: abc}, {}, {text: \"\"}]\n"
        "    - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, "
        "http_health_check: {path: /, method: CONNECT}}\n";
    EXPECT_ERR(hc, CL(0) ".health_checks", "multiple health checks are not supported");
#define HC(i) CL(0) ".health_checks[" #i "]"
    EXPECT_ERR(hc, HC(0) ".timeout", "timeout is required");
    EXPECT_ERR_AT(hc, HC(0) ".interval", "interval must be greater than 0", NULL, "interval: 0s");
    EXPECT_ERR(hc, HC(0) ".unhealthy_threshold", "unhealthy_threshold is required");
    EXPECT_ERR(hc, HC(0) ".healthy_threshold", "healthy_threshold is required");
    EXPECT_ERR(hc, HC(0) ".alt_port", "alt_port is not supported by skiff");
    EXPECT_ERR(hc, HC(0) ".reuse_connection", "reuse_connection: false is not supported");
    EXPECT_ERR(hc, HC(0) ".no_traffic_interval", "no_traffic_interval must be greater than 0");
    EXPECT_ERR(hc, HC(0) ".http_health_check.path", "path is required");
    EXPECT_ERR_AT(hc, HC(0) ".http_health_check.codec_client_type",
                  "codec_client_type HTTP2 is not supported by skiff (HTTP1 only)", NULL,
                  "codec_client_type: HTTP2");
    EXPECT_ERR(hc, HC(0) ".http_health_check.expected_statuses[0]",
               "invalid status range [200, 200)");
    EXPECT_ERR(hc, HC(0) ".http_health_check.expected_statuses[1]",
               "invalid status range [99, 200)");
    EXPECT_ERR(hc, HC(0) ".http_health_check.expected_statuses[2]",
               "invalid status range [500, 601)");
    EXPECT_ERR(hc, HC(0) ".http_health_check.retriable_statuses",
               "retriable_statuses is not supported by skiff");
    EXPECT_ERR(hc, HC(0) ".http_health_check.service_name_matcher", "is not supported by skiff");
    EXPECT_ERR(hc, HC(0) ".http_health_check.send", "send is not supported by skiff");
    EXPECT_ERR(hc, HC(0) ".http_health_check.method", "methods other than GET are not supported");
    EXPECT_ERR(hc, HC(1) ".grpc_health_check", "grpc_health_check is not supported by skiff");
    EXPECT_ERR(hc, HC(2) ".custom_health_check", "custom_health_check is not supported by skiff");
    EXPECT_ERR(hc, HC(3), "one of http_health_check, tcp_health_check is required");
    EXPECT_ERR_AT(hc, HC(4) ".tcp_health_check.send.text", "invalid hex string '0g'", NULL,
                  "text: 0g");
    EXPECT_ERR(hc, HC(4) ".tcp_health_check.receive[0].text", "invalid hex string 'abc'");
    EXPECT_ERR(hc, HC(4) ".tcp_health_check.receive[1]", "one of text, binary is required");
    EXPECT_ERR(hc, HC(4) ".tcp_health_check.receive[2].text", "text must not be empty");
    EXPECT_ERR(hc, HC(5) ".http_health_check.method", "method CONNECT is not allowed");
#undef HC

    static const char cb[] =
        "static_resources:\n" CLUSTERS "  - name: a\n"
        "    circuit_breakers:\n"
        "      thresholds:\n"
        "      - max_connection_pools: 3\n"
        "        retry_budget: {budget_percent: {value: 150}}\n"
        "      - {priority: HIGH, retry_budget: {budget_percent: {value: 150}}}\n"
        "  - name: b\n"
        "    circuit_breakers: {thresholds: [{retry_budget: {budget_percent: {value: -1}}}, "
        "{max_retries: 1}]}\n";
    EXPECT_ERR(cb, CL(0) ".circuit_breakers.thresholds[0].max_connection_pools",
               "max_connection_pools is not supported by skiff");
    EXPECT_ERR_AT(cb, CL(0) ".circuit_breakers.thresholds[0].retry_budget.budget_percent.value",
                  "budget_percent must be 0-100", NULL, "value: 150");
    EXPECT_ERR(cb, CL(1) ".circuit_breakers.thresholds[0].retry_budget.budget_percent.value",
               "budget_percent must be 0-100");
    EXPECT_ERR(cb, CL(1) ".circuit_breakers.thresholds[1].priority",
               "duplicate thresholds for priority DEFAULT");
    {
        struct sk_snapshot *s = NULL;
        struct sk_cfgerrs e;
        CHECK(load(cb, &s, &e) == SK_ERR_CONFIG && !s && e.n == 4); /* nothing from HIGH */
        if (e.n != 4)
            sk_cfgerrs_print(&e, stderr);
        sk_cfgerrs_free(&e);
    }

    static const char lb[] =
        "static_resources:\n" CLUSTERS "  - name: a\n"
        "    lb_policy: RING_HASH\n"
        "    ring_hash_lb_config: {minimum_ring_size: 2048, maximum_ring_size: 1024, "
        "hash_function: MURMUR_HASH_2}\n"
        "  - name: b\n"
        "    lb_policy: RING_HASH\n"
        "    ring_hash_lb_config: {maximum_ring_size: 8388609}\n"
        "  - name: c\n"
        "    lb_policy: MAGLEV\n"
        "    maglev_lb_config: {table_size: 65536}\n"
        "  - name: d\n"
        "    lb_policy: MAGLEV\n"
        "    maglev_lb_config: {table_size: 5000012}\n"
        "  - name: e\n"
        "    load_balancing_policy: {policies: [{typed_extension_config: {name: p, typed_config: "
        "{\"@type\": type.googleapis.com/xds.type.v3.TypedStruct, type_url: acme.Lb}}}]}\n"
        "  - name: f\n"
        "    load_balancing_policy: {}\n"
        "  - name: g\n"
        "    load_balancing_policy:\n"
        "      policies:\n"
        "      - typed_extension_config: {name: p, typed_config: {\"@type\": " PEAK_EWMA_TYPE
        ", decay_time: 0s}}\n"
        "  - name: h\n"
        "    load_balancing_policy:\n"
        "      policies:\n"
        "      - typed_extension_config: {name: p, typed_config: {\"@type\": " RH_TYPE
        ", hash_function: MURMUR_HASH_2, minimum_ring_size: "
        "9000000}}\n"
        "  - name: i\n"
        "    load_balancing_policy:\n"
        "      policies:\n"
        "      - typed_extension_config: {name: p, typed_config: {\"@type\": " LR_TYPE
        ", choice_count: 1}}\n"
        "  - name: j\n"
        "    load_balancing_policy:\n"
        "      policies:\n"
        "      - typed_extension_config: {name: p}\n"
        "  - name: k\n"
        "    load_balancing_policy:\n"
        "      policies:\n"
        "      - typed_extension_config: {name: p, typed_config: {\"@type\": " MAGLEV_TYPE
        ", table_size: 1}}\n";
    EXPECT_ERR(lb, CL(0) ".ring_hash_lb_config.hash_function",
               "only hash_function XX_HASH is supported by skiff");
    EXPECT_ERR(lb, CL(0) ".ring_hash_lb_config.minimum_ring_size",
               "minimum_ring_size (2048) must not be greater than maximum_ring_size (1024)");
    EXPECT_ERR(lb, CL(1) ".ring_hash_lb_config.maximum_ring_size",
               "maximum_ring_size must be at most 8388608");
    EXPECT_ERR_AT(lb, CL(2) ".maglev_lb_config.table_size", "table_size 65536 is not a prime", NULL,
                  "table_size: 65536");
    EXPECT_ERR(lb, CL(3) ".maglev_lb_config.table_size", "table_size must be at most 5000011");
    EXPECT_ERR(lb, CL(4) ".load_balancing_policy.policies",
               "none of the policies is supported by skiff");
    EXPECT_ERR(lb, CL(5) ".load_balancing_policy.policies", "at least one policy is required");
    EXPECT_ERR(lb,
               CL(6) ".load_balancing_policy.policies[0].typed_extension_config.typed_config."
                     "decay_time",
               "decay_time must be greater than 0");
    EXPECT_ERR(lb,
               CL(7) ".load_balancing_policy.policies[0].typed_extension_config.typed_config."
                     "hash_function",
               "only hash_function XX_HASH");
    EXPECT_ERR(lb,
               CL(7) ".load_balancing_policy.policies[0].typed_extension_config.typed_config."
                     "minimum_ring_size",
               "minimum_ring_size must be at most 8388608");
    EXPECT_ERR(lb,
               CL(8) ".load_balancing_policy.policies[0].typed_extension_config.typed_config."
                     "choice_count",
               "choice_count must be at least 2");
    EXPECT_ERR(lb, CL(9) ".load_balancing_policy.policies[0].typed_extension_config.typed_config",
               "typed_config with an @type is required");
    EXPECT_ERR(lb,
               CL(10) ".load_balancing_policy.policies[0].typed_extension_config.typed_config."
                      "table_size",
               "table_size 1 is not a prime number");
}

/* ---- route-level: hash policies, attempt count, buffer limits, retry policy ------------- */

static const char rt_yaml[] = LISTENERS LISTENER_HCM(
    "          route_config:\n"
    "            virtual_hosts:\n"
    "            - name: a\n"
    "              domains: [a]\n"
    "              include_request_attempt_count: true\n"
    "              per_request_buffer_limit_bytes: 4096\n"
    "              routes:\n"
    "              - match: {prefix: /h}\n"
    "                route:\n"
    "                  cluster: c\n"
    "                  hash_policy:\n"
    "                  - header: {header_name: X-User}\n"
    "                  - cookie: {name: Sess, ttl: 10s, path: /}\n"
    "                    terminal: true\n"
    "                  - connection_properties: {source_ip: true}\n"
    "                  - connection_properties: {source_ip: false}\n"
    "                  - query_parameter: {name: uid}\n"
    "                  - header: {header_name: \":authority\"}\n"
    "              - match: {prefix: /r}\n"
    "                per_request_buffer_limit_bytes: 100\n"
    "                route:\n"
    "                  cluster: c\n"
    "                  retry_policy:\n"
    "                    retry_on: \"5xx,gateway-error,reset,reset-before-request,connect-failure,"
    "envoy-ratelimited,retriable-4xx,refused-stream,retriable-status-codes,"
    "http3-post-connect-failure,cancelled,deadline-exceeded,internal,resource-exhausted,"
    "unavailable\"\n"
    "                    retry_back_off: {base_interval: 0.05s, max_interval: 2s}\n"
    "              - match: {prefix: /b}\n"
    "                request_body_buffer_limit: 70000\n"
    "                per_request_buffer_limit_bytes: 100\n"
    "                route: {cluster: c, retry_policy: {}}\n"
    "            - name: b\n"
    "              domains: [b]\n"
    "              request_body_buffer_limit: 5000000\n"
    "              per_request_buffer_limit_bytes: 100\n"
    "              routes:\n"
    "              - match: {prefix: /}\n"
    "                route: {cluster: c}\n"
    "            - name: d\n"
    "              domains: [\"*\"]\n"
    "              routes:\n"
    "              - match: {prefix: /}\n"
    "                route: {cluster: c}\n"
    "          http_filters: [" ROUTER "]\n") CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");

static void test_route_resilience(void)
{
    struct sk_snapshot *s = LOAD_OK(rt_yaml);
    if (!s)
        return;
    struct sk_route_config *rc = s->listeners[0].chains[0].hcm->routes;
    struct sk_vhost *a = &rc->vhosts[0];
    CHECK(a->nroutes == 3);
    struct sk_route *r = &a->routes[0];
    CHECK(r->include_attempt_count && r->per_request_buffer_limit_bytes == 4096);
    CHECK(r->nhash_policy == 5); /* source_ip: false yields no hash: left out */
    if (r->nhash_policy == 5) {
        struct sk_hash_policy *h = r->hash_policy;
        CHECK(h[0].kind == SK_HASH_HEADER && strcmp(h[0].name, "x-user") == 0 && !h[0].terminal);
        CHECK(h[1].kind == SK_HASH_COOKIE && strcmp(h[1].name, "Sess") == 0 && h[1].terminal);
        CHECK(h[2].kind == SK_HASH_SOURCE_IP && !h[2].name);
        CHECK(h[3].kind == SK_HASH_QUERY_PARAM && strcmp(h[3].name, "uid") == 0);
        CHECK(h[4].kind == SK_HASH_HEADER && strcmp(h[4].name, ":authority") == 0);
    }
    CHECK(r->retry == NULL);
    r = &a->routes[1];
    CHECK(r->include_attempt_count && r->per_request_buffer_limit_bytes == 100);
    CHECK(r->nhash_policy == 0 && !r->hash_policy);
    struct sk_retry_policy *rp = r->retry;
    CHECK(rp &&
          rp->retry_on == (SK_RETRY_ON_5XX | SK_RETRY_ON_GATEWAY_ERROR | SK_RETRY_ON_RESET |
                           SK_RETRY_ON_RESET_BEFORE_REQUEST | SK_RETRY_ON_CONNECT_FAILURE |
                           SK_RETRY_ON_ENVOY_RATELIMITED | SK_RETRY_ON_RETRIABLE_4XX |
                           SK_RETRY_ON_REFUSED_STREAM | SK_RETRY_ON_RETRIABLE_STATUS_CODES |
                           SK_RETRY_ON_HTTP3_POST_CONNECT_FAILURE | SK_RETRY_ON_GRPC_CANCELLED |
                           SK_RETRY_ON_GRPC_DEADLINE_EXCEEDED | SK_RETRY_ON_GRPC_INTERNAL |
                           SK_RETRY_ON_GRPC_RESOURCE_EXHAUSTED | SK_RETRY_ON_GRPC_UNAVAILABLE));
    CHECK(rp && rp->num_retries == 1 && rp->base_interval_ms == 50 && rp->max_interval_ms == 2000);
    r = &a->routes[2];
    /* request_body_buffer_limit wins over per_request_buffer_limit_bytes */
    CHECK(r->per_request_buffer_limit_bytes == 70000);
    rp = r->retry;
    CHECK(rp && rp->retry_on == 0 && rp->num_retries == 1);
    CHECK(rp && rp->per_try_timeout_ms == SK_DUR_NONE && rp->base_interval_ms == 25);
    CHECK(rp && rp->max_interval_ms == 250 && !rp->retry_other_host);
    CHECK(rp && rp->host_selection_retry_max_attempts == 1 && rp->nretriable_status_codes == 0);
    r = &rc->vhosts[1].routes[0];
    CHECK(!r->include_attempt_count && r->per_request_buffer_limit_bytes == 5000000);
    r = &rc->vhosts[2].routes[0];
    CHECK(!r->include_attempt_count && r->per_request_buffer_limit_bytes == 1024 * 1024);
    CHECK(r->nhash_policy == 0);
    sk_snapshot_unref(s);
}

static void test_route_resilience_errors(void)
{
    static const char y[] = LISTENERS LISTENER_HCM(
        "          route_config:\n"
        "            virtual_hosts:\n"
        "            - name: a\n"
        "              domains: [\"*\"]\n"
        "              retry_policy: {retry_on: \"5xx,retriable-headers\"}\n"
        "              routes:\n"
        "              - match: {prefix: /}\n"
        "                route:\n"
        "                  cluster: c\n"
        "                  hash_policy:\n"
        "                  - filter_state: {key: k}\n"
        "                  - header: {header_name: \"bad name\"}\n"
        "                  - cookie: {ttl: 1s}\n"
        "                  - query_parameter: {}\n"
        "                  - terminal: true\n"
        "                  - header: {header_name: x, regex_rewrite: {pattern: {regex: a}, "
        "substitution: b}}\n"
        "                  retry_policy:\n"
        "                    retry_on: \"5xx, gateway-error,Reset\"\n"
        "                    retry_back_off: {base_interval: 1s, max_interval: 0.5s}\n"
        "              - match: {prefix: /}\n"
        "                route:\n"
        "                  cluster: c\n"
        "                  retry_policy:\n"
        "                    retry_on: connect-failure\n"
        "                    retry_back_off: {base_interval: 0s}\n"
        "                    per_try_timeout: -1s\n"
        "              - match: {prefix: /}\n"
        "                route:\n"
        "                  cluster: c\n"
        "                  retry_policy: {retry_back_off: {max_interval: 1s}}\n"
        "          http_filters: [" ROUTER "]\n") CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
    EXPECT_ERR(y, VH0 ".retry_policy.retry_on",
               "retry_on 'retriable-headers' is not supported by skiff");
#define RA(i) VH0 ".routes[" #i "].route"
    EXPECT_ERR_AT(y, RA(0) ".hash_policy[0].filter_state",
                  "filter_state hash policy is not supported by skiff", NULL, "filter_state:");
    EXPECT_ERR(y, RA(0) ".hash_policy[1].header.header_name", "invalid header name 'bad name'");
    EXPECT_ERR(y, RA(0) ".hash_policy[2].cookie.name", "name is required");
    EXPECT_ERR(y, RA(0) ".hash_policy[3].query_parameter.name", "name is required");
    EXPECT_ERR(y, RA(0) ".hash_policy[4]",
               "one of header, cookie, connection_properties, query_parameter is required");
    EXPECT_ERR(y, RA(0) ".hash_policy[5].header.regex_rewrite",
               "regex_rewrite is not supported by skiff");
    EXPECT_ERR(y, RA(0) ".retry_policy.retry_on", "unknown retry_on value 'Reset'");
    EXPECT_ERR(y, RA(0) ".retry_policy.retry_back_off.max_interval",
               "max_interval must be at least base_interval");
    EXPECT_ERR(y, RA(1) ".retry_policy.retry_back_off.base_interval",
               "base_interval must be greater than 0");
    EXPECT_ERR(y, RA(1) ".retry_policy.per_try_timeout", "invalid duration");
    EXPECT_ERR(y, RA(2) ".retry_policy.retry_back_off.base_interval", "base_interval is required");
#undef RA
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    CHECK(load(y, &s, &e) == SK_ERR_CONFIG && !s && e.n == 12);
    if (e.n != 12)
        sk_cfgerrs_print(&e, stderr);
    sk_cfgerrs_free(&e);
}

/* an empty bootstrap is valid (nothing to serve) */
static void test_empty(void)
{
    struct sk_snapshot *s = LOAD_OK("{}\n");
    CHECK(s && s->nlisteners == 0 && s->nclusters == 0 && !s->admin.enabled);
    CHECK(s && s->node_id && strcmp(s->node_id, "") == 0);
    sk_snapshot_unref(s);
    s = LOAD_OK("admin: {access_log_path: /dev/null}\n");
    CHECK(s && !s->admin.enabled);
    sk_snapshot_unref(s);
}

/* ---- TLS (DownstreamTlsContext / UpstreamTlsContext) ----------------------------------- */

#define DOWN_TYPE                                                                                  \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
#define UP_TYPE "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

/* A TCP listener chain with a DownstreamTlsContext whose body (indent 10) is `ctx`,
 * and a cluster c0 with an UpstreamTlsContext whose body (indent 8) is `up`. */
#define TLS_YAML(ctx, up)                                                                          \
    LISTENERS                                                                                      \
    "  - name: l0\n"                                                                               \
    "    address: {socket_address: {address: 127.0.0.1, port_value: 10443}}\n"                     \
    "    filter_chains:\n"                                                                         \
    "    - filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE                                \
    ", stat_prefix: t, cluster: c0}}]\n"                                                           \
    "      transport_socket:\n"                                                                    \
    "        name: envoy.transport_sockets.tls\n"                                                  \
    "        typed_config:\n"                                                                      \
    "          \"@type\": " DOWN_TYPE "\n" ctx CLUSTERS STATIC_CLUSTER(                            \
        "c0", "127.0.0.1", "80") "    transport_socket:\n"                                         \
                                 "      name: envoy.transport_sockets.tls\n"                       \
                                 "      typed_config:\n"                                           \
                                 "        \"@type\": " UP_TYPE "\n" up

#define CERT_OK                                                                                    \
    "          common_tls_context:\n"                                                              \
    "            tls_certificates:\n"                                                              \
    "            - certificate_chain: {filename: /etc/certs/cert.pem}\n"                           \
    "              private_key: {filename: /etc/certs/key.pem}\n"
#define UP_OK "        sni: x.test\n"
#define TS0 L0 ".filter_chains[0].transport_socket.typed_config"
#define CTS0 C0 ".transport_socket.typed_config"

static void test_tls_full(void)
{
    static const char y[] = TLS_YAML(
        "          require_client_certificate: true\n"
        "          session_timeout: 300s\n"
        "          common_tls_context:\n"
        "            alpn_protocols: [h2, http/1.1]\n"
        "            tls_params:\n"
        "              tls_minimum_protocol_version: TLSv1_2\n"
        "              tls_maximum_protocol_version: TLSv1_3\n"
        "              cipher_suites: [ECDHE-ECDSA-AES128-GCM-SHA256, "
        "\"[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]\"]\n"
        "              ecdh_curves: [X25519, P-256]\n"
        "            tls_certificates:\n"
        "            - certificate_chain: {filename: /etc/certs/cert.pem}\n"
        "              private_key: {inline_string: \"-----BEGIN PRIVATE KEY-----\"}\n"
        "            validation_context:\n"
        "              trusted_ca: {environment_variable: ROOT_CA}\n"
        "              allow_expired_certificate: true\n"
        "              match_typed_subject_alt_names:\n"
        "              - {san_type: URI, matcher: {exact: \"spiffe://td/ns/a/sa/b\"}}\n"
        "              - {san_type: DNS, matcher: {suffix: .svc.test, ignore_case: true}}\n"
        "              - {san_type: EMAIL, matcher: {prefix: ops@}}\n"
        "              - {san_type: IP_ADDRESS, matcher: {contains: \"10.\"}}\n"
        "              match_subject_alt_names: [{exact: ignored-when-typed-given}]\n",
        "        sni: api.test\n"
        "        max_session_keys: 4\n"
        "        common_tls_context:\n"
        "          alpn_protocols: [h2]\n"
        "          tls_certificates:\n"
        "          - certificate_chain: {inline_bytes: \"Y2VydA==\"}\n"
        "            private_key: {filename: /k.pem}\n"
        "          validation_context:\n"
        "            trusted_ca: {filename: /ca.pem}\n"
        "            match_subject_alt_names: [{prefix: \"spiffe://td/\"}, {exact: a.test}]\n");
    struct sk_snapshot *s = LOAD_OK(y);
    if (!s)
        return;
    const struct sk_tls_cfg *t = s->listeners[0].chains[0].tls;
    CHECK(t && t->is_server && !t->rt);
    if (t) {
        CHECK(t->cert_chain.kind == SK_DS_FILE &&
              strcmp(t->cert_chain.filename, "/etc/certs/cert.pem") == 0);
        CHECK(t->private_key.kind == SK_DS_INLINE && t->private_key.len == 27 &&
              strcmp(t->private_key.data, "-----BEGIN PRIVATE KEY-----") == 0);
        CHECK(t->trusted_ca.kind == SK_DS_ENV && strcmp(t->trusted_ca.data, "ROOT_CA") == 0);
        CHECK(t->require_client_cert && t->allow_expired);
        CHECK(t->session_timeout_ms == 300000);
        CHECK(t->nalpn == 2 && strcmp(t->alpn[0], "h2") == 0 &&
              strcmp(t->alpn[1], "http/1.1") == 0);
        CHECK(t->min_version == 3 && t->max_version == 4);
        CHECK(t->cipher_suites &&
              strcmp(t->cipher_suites,
                     "ECDHE-ECDSA-AES128-GCM-SHA256:"
                     "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]") == 0);
        CHECK(t->ecdh_curves && strcmp(t->ecdh_curves, "X25519:P-256") == 0);
        CHECK(t->nsan == 4);
        if (t->nsan == 4) {
            CHECK(t->san[0].san_type == SK_SAN_URI && t->san[0].kind == SK_STR_EXACT &&
                  strcmp(t->san[0].value, "spiffe://td/ns/a/sa/b") == 0 && !t->san[0].ignore_case);
            CHECK(t->san[1].san_type == SK_SAN_DNS && t->san[1].kind == SK_STR_SUFFIX &&
                  t->san[1].ignore_case);
            CHECK(t->san[2].san_type == SK_SAN_EMAIL && t->san[2].kind == SK_STR_PREFIX);
            CHECK(t->san[3].san_type == SK_SAN_IP && t->san[3].kind == SK_STR_CONTAINS);
        }
        CHECK(!t->sni && !t->sds_cert_name && !t->sds_ca_name);
    }
    const struct sk_tls_cfg *u = s->clusters[0].tls;
    CHECK(u && !u->is_server);
    if (u) {
        CHECK(u->sni && strcmp(u->sni, "api.test") == 0);
        CHECK(u->max_session_keys == 4);
        CHECK(u->cert_chain.kind == SK_DS_INLINE && u->cert_chain.len == 4 &&
              memcmp(u->cert_chain.data, "cert", 4) == 0);
        CHECK(u->private_key.kind == SK_DS_FILE && u->trusted_ca.kind == SK_DS_FILE);
        CHECK(u->nalpn == 1 && u->min_version == 0 && u->max_version == 0);
        CHECK(u->nsan == 2 && u->san[0].san_type == SK_SAN_ANY && u->san[0].kind == SK_STR_PREFIX &&
              u->san[1].kind == SK_STR_EXACT && strcmp(u->san[1].value, "a.test") == 0);
        CHECK(!u->cipher_suites && !u->ecdh_curves && !u->require_client_cert);
    }
    sk_snapshot_unref(s);

    /* defaults; upstream without a CA is allowed (warned about); raw_buffer is plaintext */
    static const char d[] = TLS_YAML(CERT_OK, "        sni: \"\"\n");
    s = LOAD_OK(d);
    if (s) {
        t = s->listeners[0].chains[0].tls;
        u = s->clusters[0].tls;
        CHECK(t && !t->require_client_cert && t->nalpn == 0 && t->min_version == 0 &&
              t->trusted_ca.kind == SK_DS_NONE && t->nsan == 0 && t->session_timeout_ms == 0);
        CHECK(u && u->max_session_keys == 1 && !u->sni && u->cert_chain.kind == SK_DS_NONE &&
              u->trusted_ca.kind == SK_DS_NONE);
        sk_snapshot_unref(s);
    }
    static const char raw[] = LISTENERS
        "  - name: l0\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 10443}}\n"
        "    filter_chains:\n"
        "    - filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c0}}]\n"
        "      transport_socket: {name: raw, typed_config: {\"@type\": "
        "type.googleapis.com/"
        "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}\n" CLUSTERS STATIC_CLUSTER(
            "c0", "127.0.0.1", "80");
    s = LOAD_OK(raw);
    if (s) {
        CHECK(!s->listeners[0].chains[0].tls);
        sk_snapshot_unref(s);
    }
}

/* SDS names: allowed only with ADS */
static void test_tls_sds(void)
{
#define ADS                                                                                        \
    "dynamic_resources:\n"                                                                         \
    "  ads_config:\n"                                                                              \
    "    api_type: GRPC\n"                                                                         \
    "    grpc_services: [{envoy_grpc: {cluster_name: c0}}]\n"
#define SDS_CTX                                                                                    \
    "          common_tls_context:\n"                                                              \
    "            tls_certificate_sds_secret_configs: [{name: default, sds_config: {ads: {}}}]\n"   \
    "            combined_validation_context:\n"                                                   \
    "              default_validation_context:\n"                                                  \
    "                match_subject_alt_names: [{exact: \"spiffe://td/ns/x/sa/y\"}]\n"              \
    "              validation_context_sds_secret_config: {name: ROOTCA, sds_config: {ads: {}}}\n"
#define SDS_UP                                                                                     \
    "        common_tls_context:\n"                                                                \
    "          tls_certificate_sds_secret_configs: [{name: default}]\n"                            \
    "          validation_context_sds_secret_config: {name: ROOTCA}\n"
    static const char ok[] = ADS TLS_YAML(SDS_CTX, SDS_UP);
    struct sk_snapshot *s = LOAD_OK(ok);
    if (s) {
        const struct sk_tls_cfg *t = s->listeners[0].chains[0].tls, *u = s->clusters[0].tls;
        CHECK(t && t->sds_cert_name && strcmp(t->sds_cert_name, "default") == 0);
        CHECK(t && t->sds_ca_name && strcmp(t->sds_ca_name, "ROOTCA") == 0);
        CHECK(t && t->nsan == 1 && t->san[0].san_type == SK_SAN_ANY);
        CHECK(t && t->cert_chain.kind == SK_DS_NONE && t->trusted_ca.kind == SK_DS_NONE);
        CHECK(u && u->sds_cert_name && u->sds_ca_name && strcmp(u->sds_ca_name, "ROOTCA") == 0);
        sk_snapshot_unref(s);
    }
    static const char no_ads[] = TLS_YAML(SDS_CTX, SDS_UP);
    EXPECT_ERR(no_ads, TS0 ".common_tls_context.tls_certificate_sds_secret_configs[0]",
               "SDS requires xDS");
    EXPECT_ERR(
        no_ads,
        TS0 ".common_tls_context.combined_validation_context.validation_context_sds_secret_config",
        "SDS requires xDS");
    EXPECT_ERR(no_ads, CTS0 ".common_tls_context.validation_context_sds_secret_config",
               "SDS requires xDS");
    EXPECT_ERR(no_ads, CTS0 ".common_tls_context.tls_certificate_sds_secret_configs[0]",
               "SDS requires xDS");
}

static void test_tls_errors(void)
{
    static const char two[] =
        TLS_YAML("          common_tls_context:\n"
                 "            tls_certificates:\n"
                 "            - {certificate_chain: {filename: /a}, private_key: {filename: /b}}\n"
                 "            - {certificate_chain: {filename: /c}, private_key: {filename: /d}}\n",
                 UP_OK);
    EXPECT_ERR_AT(two, TS0 ".common_tls_context.tls_certificates", "only one certificate supported",
                  NULL, "tls_certificates:");
    static const char old[] =
        TLS_YAML(CERT_OK "            tls_params: {tls_minimum_protocol_version: TLSv1_0}\n",
                 "        common_tls_context:\n"
                 "          tls_params: {tls_maximum_protocol_version: TLSv1_1}\n");
    EXPECT_ERR_AT(old, TS0 ".common_tls_context.tls_params.tls_minimum_protocol_version",
                  "TLS < 1.2 not supported", NULL, "tls_minimum_protocol_version: TLSv1_0");
    EXPECT_ERR(old, CTS0 ".common_tls_context.tls_params.tls_maximum_protocol_version",
               "TLS < 1.2 not supported");
    static const char inverted[] =
        TLS_YAML(CERT_OK "            tls_params: {tls_minimum_protocol_version: TLSv1_3, "
                         "tls_maximum_protocol_version: TLSv1_2}\n",
                 UP_OK);
    EXPECT_ERR(inverted, TS0 ".common_tls_context.tls_params.tls_minimum_protocol_version",
               "above tls_maximum_protocol_version");
    static const char vc[] = TLS_YAML(
        CERT_OK
        "            validation_context:\n"
        "              trusted_ca: {filename: /ca}\n"
        "              verify_certificate_spki: [NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=]\n"
        "              verify_certificate_hash: "
        "[df6ff72fe9116521268f6f2dd4966f51df479883fe7037b39f75916ac3049d1a]\n"
        "              crl: {filename: /crl}\n"
        "              custom_validator_config: {name: envoy.tls.cert_validator.spiffe}\n",
        "        common_tls_context:\n"
        "          validation_context:\n"
        "            match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: x}}]\n");
    const char *vp = TS0 ".common_tls_context.validation_context";
    char path[256];
    snprintf(path, sizeof(path), "%s.verify_certificate_spki", vp);
    EXPECT_ERR(vc, path, "verify_certificate_spki is not supported");
    snprintf(path, sizeof(path), "%s.verify_certificate_hash", vp);
    EXPECT_ERR(vc, path, "verify_certificate_hash is not supported");
    snprintf(path, sizeof(path), "%s.crl", vp);
    EXPECT_ERR_AT(vc, path, "crl is not supported", NULL, "crl:");
    snprintf(path, sizeof(path), "%s.custom_validator_config", vp);
    EXPECT_ERR(vc, path, "custom_validator_config is not supported");
    /* SAN matchers without a CA are refused (Envoy too) */
    EXPECT_ERR(vc, CTS0 ".common_tls_context.validation_context", "without trusted_ca");
    static const char san[] =
        TLS_YAML(CERT_OK "            validation_context:\n"
                         "              trusted_ca: {filename: /ca}\n"
                         "              match_typed_subject_alt_names:\n"
                         "              - {matcher: {exact: x}}\n"
                         "              - {san_type: DNS}\n"
                         "              - {san_type: URI, matcher: {prefix: \"\"}}\n"
                         "              - {san_type: URI, matcher: {safe_regex: {regex: \".*\"}}}\n"
                         "              - {san_type: OTHER_NAME, matcher: {exact: x}}\n",
                 UP_OK);
    const char *sp = TS0 ".common_tls_context.validation_context.match_typed_subject_alt_names";
    snprintf(path, sizeof(path), "%s[0].san_type", sp);
    EXPECT_ERR(san, path, "san_type is required");
    snprintf(path, sizeof(path), "%s[1].matcher", sp);
    EXPECT_ERR(san, path, "matcher is required");
    snprintf(path, sizeof(path), "%s[2].matcher.prefix", sp);
    EXPECT_ERR(san, path, "prefix must not be empty");
    snprintf(path, sizeof(path), "%s[3].matcher.safe_regex", sp);
    EXPECT_ERR(san, path, "regex SAN matching is not supported");
    snprintf(path, sizeof(path), "%s[4].san_type", sp);
    EXPECT_ERR(san, path, "OTHER_NAME is not supported");
    static const char ds[] =
        TLS_YAML("          common_tls_context:\n"
                 "            tls_certificates:\n"
                 "            - certificate_chain: {filename: \"\"}\n"
                 "              private_key: {environment_variable: \"\"}\n"
                 "              password: {inline_string: secret}\n",
                 "        common_tls_context:\n"
                 "          tls_certificates: [{certificate_chain: {filename: /c}}]\n");
    EXPECT_ERR(ds, TS0 ".common_tls_context.tls_certificates[0].certificate_chain.filename",
               "filename must not be empty");
    EXPECT_ERR(ds, TS0 ".common_tls_context.tls_certificates[0].private_key.environment_variable",
               "environment_variable must not be empty");
    EXPECT_ERR(ds, TS0 ".common_tls_context.tls_certificates[0].password",
               "password is not supported");
    EXPECT_ERR(ds, CTS0 ".common_tls_context.tls_certificates[0].private_key",
               "private_key is required");
    static const char misc[] = TLS_YAML(
        CERT_OK "            tls_params: {cipher_suites: [\"A:B\"], signature_algorithms: [x]}\n"
                "            alpn_protocols: [\"\"]\n"
                "          require_sni: true\n"
                "          ocsp_staple_policy: MUST_STAPLE\n"
                "          session_ticket_keys: {keys: [{inline_string: k}]}\n",
        "        sni: x\n"
        "        allow_renegotiation: true\n"
        "        auto_host_sni: true\n");
    EXPECT_ERR(misc, TS0 ".common_tls_context.tls_params.cipher_suites[0]",
               "invalid cipher_suites entry 'A:B'");
    EXPECT_ERR(misc, TS0 ".common_tls_context.tls_params.signature_algorithms",
               "signature_algorithms is not supported");
    EXPECT_ERR(misc, TS0 ".common_tls_context.alpn_protocols[0]", "1-255 bytes");
    EXPECT_ERR(misc, TS0 ".require_sni", "require_sni is not supported");
    EXPECT_ERR(misc, TS0 ".ocsp_staple_policy", "ocsp_staple_policy is not supported");
    EXPECT_ERR(misc, TS0 ".session_ticket_keys", "session_ticket_keys is not supported");
    EXPECT_ERR(misc, CTS0 ".allow_renegotiation", "allow_renegotiation is not supported");
    EXPECT_ERR(misc, CTS0 ".auto_host_sni", "auto_host_sni is not supported");
    /* wrong context for the side */
    static const char swapped[] = LISTENERS
        "  - name: l0\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 10443}}\n"
        "    filter_chains:\n"
        "    - filters: [{name: t, typed_config: {\"@type\": " TCP_TYPE
        ", stat_prefix: t, cluster: c0}}]\n"
        "      transport_socket: {name: tls, typed_config: {\"@type\": " UP_TYPE
        "}}\n" CLUSTERS STATIC_CLUSTER(
            "c0", "127.0.0.1",
            "80") "    transport_socket: {name: tls, typed_config: {\"@type\": " DOWN_TYPE "}}\n";
    EXPECT_ERR(swapped, TS0, "use DownstreamTlsContext");
    EXPECT_ERR(swapped, CTS0, "use UpstreamTlsContext");
    /* a missing file is fine at translate time (rotation may create it) */
    static const char missing[] = TLS_YAML(CERT_OK, UP_OK);
    struct sk_snapshot *s = LOAD_OK(missing);
    sk_snapshot_unref(s);
}

/* ---- HTTP filters: fault, RBAC, typed_per_filter_config ------------------------------ */

#define RBAC_TYPE "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
#define RBAC_PR_TYPE "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
#define FCFG_TYPE "type.googleapis.com/envoy.config.route.v3.FilterConfig"

static const char filters_yaml[] = LISTENERS LISTENER_HCM(
    "          http_filters:\n"
    "          - name: fault\n"
    "            typed_config:\n"
    "              \"@type\": " FAULT_TYPE "\n"
    "              delay: {fixed_delay: 0.2s, percentage: {numerator: 20}}\n"
    "              abort: {grpc_status: 14, percentage: {numerator: 1000, denominator: "
    "TEN_THOUSAND}}\n"
    "              upstream_cluster: c\n"
    "              headers: [{name: x-fault, exact_match: \"yes\"}]\n"
    "              downstream_nodes: [n1, n2]\n"
    "              response_rate_limit: {fixed_limit: {limit_kbps: 64}, percentage: "
    "{numerator: 2000000, denominator: MILLION}}\n"
    "          - name: rbac\n"
    "            typed_config:\n"
    "              \"@type\": " RBAC_TYPE "\n"
    "              rules:\n"
    "                action: DENY\n"
    "                policies:\n"
    "                  zz:\n"
    "                    permissions: [{any: true}]\n"
    "                    principals: [{remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]\n"
    "                  aa:\n"
    "                    permissions:\n"
    "                    - and_rules:\n"
    "                        rules:\n"
    "                        - header: {name: \":method\", exact_match: GET}\n"
    "                        - url_path: {path: {prefix: /admin}}\n"
    "                        - not_rule: {destination_port: 80}\n"
    "                    principals:\n"
    "                    - authenticated: {principal_name: {exact: \"spiffe://x/ns/a/sa/b\"}}\n"
    "                    - or_ids: {ids: [{any: true}, {direct_remote_ip: {address_prefix: "
    "\"::1\"}}]}\n"
    "              shadow_rules: {action: ALLOW}\n"
    "          - " ROUTER "\n"
    "          route_config:\n"
    "            name: r\n"
    "            typed_per_filter_config:\n"
    "              rbac: {\"@type\": " RBAC_PR_TYPE "}\n"
    "            virtual_hosts:\n"
    "            - name: vh\n"
    "              domains: [\"*\"]\n"
    "              typed_per_filter_config:\n"
    "                fault: {\"@type\": " FAULT_TYPE
    ", abort: {header_abort: {}, percentage: {numerator: 100}}}\n"
    "              routes:\n"
    "              - match: {prefix: /a}\n"
    "                route: {cluster: c}\n"
    "                typed_per_filter_config:\n"
    "                  fault: {\"@type\": " FCFG_TYPE ", disabled: true}\n"
    "              - match: {prefix: /b}\n"
    "                route: {cluster: c}\n"
    "                typed_per_filter_config:\n"
    "                  rbac:\n"
    "                    \"@type\": " RBAC_PR_TYPE "\n"
    "                    rbac: {rules: {policies: {p: {permissions: [{any: true}], principals: "
    "[{any: true}]}}}}\n"
    "                  x: {\"@type\": " FCFG_TYPE ", is_optional: true, config: {\"@type\": " TCP_TYPE
    ", stat_prefix: x, cluster: c}}\n") CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");

static const struct sk_filter_override *override_of(const struct sk_route *r, const char *name)
{
    for (size_t i = 0; i < r->nfilter_overrides; i++)
        if (strcmp(r->filter_overrides[i].name, name) == 0)
            return &r->filter_overrides[i];
    return NULL;
}

static void test_filters(void)
{
    struct sk_snapshot *s = LOAD_OK(filters_yaml);
    if (!s)
        return;
    struct sk_hcm *h = s->listeners[0].chains[0].hcm;
    CHECK(h && h->nfilters == 2);
    if (!h || h->nfilters != 2) {
        sk_snapshot_unref(s);
        return;
    }
    const struct sk_fault_cfg *f = h->filters[0].config;
    CHECK(f && f->magic == SK_FAULT_CFG_MAGIC);
    CHECK(f->delay_kind == SK_FAULT_DELAY_FIXED && f->delay_ms == 200);
    CHECK(f->delay_pct.numerator == 20 && f->delay_pct.denominator == 100);
    CHECK(f->abort_kind == SK_FAULT_ABORT_GRPC && f->abort_grpc_status == 14);
    CHECK(f->abort_pct.numerator == 1000 && f->abort_pct.denominator == 10000);
    CHECK(f->upstream_cluster && strcmp(f->upstream_cluster, "c") == 0);
    CHECK(f->nheaders == 1 && strcmp(f->headers[0].name, "x-fault") == 0 &&
          f->headers[0].kind == SK_STR_EXACT && strcmp(f->headers[0].value, "yes") == 0);
    CHECK(f->ndownstream_nodes == 2 && strcmp(f->downstream_nodes[1], "n2") == 0);
    CHECK(!f->has_max_active);
    CHECK(f->rl_kind == SK_FAULT_RL_FIXED && f->rl_kbps == 64);
    /* numerator above the denominator is clamped to 100% */
    CHECK(f->rl_pct.numerator == 1000000 && f->rl_pct.denominator == 1000000);

    CHECK(strcmp(h->filters[1].type_url, "envoy.extensions.filters.http.rbac.v3.RBAC") == 0);
    const struct sk_rbac_cfg *rb = h->filters[1].config;
    CHECK(rb && rb->magic == SK_RBAC_CFG_MAGIC && rb->has_rules && rb->has_shadow);
    CHECK(rb->rules.action == SK_RBAC_DENY && rb->rules.npolicies == 2);
    CHECK(rb->shadow.action == SK_RBAC_ALLOW && rb->shadow.npolicies == 0);
    if (rb->rules.npolicies == 2) {
        /* sorted by name: Envoy evaluates policies in lexicographic order */
        const struct sk_rbac_policy *a = &rb->rules.policies[0], *z = &rb->rules.policies[1];
        CHECK(strcmp(a->name, "aa") == 0 && strcmp(z->name, "zz") == 0);
        CHECK(a->npermissions == 1 && a->permissions[0].kind == SK_RBAC_R_AND &&
              a->permissions[0].nsub == 3);
        if (a->permissions[0].nsub == 3) {
            const struct sk_rbac_rule *r = a->permissions[0].sub;
            CHECK(r[0].kind == SK_RBAC_R_HEADER && strcmp(r[0].header.name, ":method") == 0);
            CHECK(r[1].kind == SK_RBAC_R_URL_PATH && r[1].str.kind == SK_STR_PREFIX &&
                  strcmp(r[1].str.value, "/admin") == 0);
            CHECK(r[2].kind == SK_RBAC_R_NOT && r[2].nsub == 1 &&
                  r[2].sub[0].kind == SK_RBAC_R_DEST_PORT && r[2].sub[0].port_lo == 80);
        }
        CHECK(a->nprincipals == 2 && a->principals[0].kind == SK_RBAC_R_AUTHENTICATED &&
              a->principals[0].has_str &&
              strcmp(a->principals[0].str.value, "spiffe://x/ns/a/sa/b") == 0);
        CHECK(a->principals[1].kind == SK_RBAC_R_OR && a->principals[1].nsub == 2 &&
              a->principals[1].sub[1].kind == SK_RBAC_R_REMOTE_IP &&
              a->principals[1].sub[1].cidr.family == AF_INET6 &&
              a->principals[1].sub[1].cidr.prefix_len == 128);
        CHECK(z->nprincipals == 1 && z->principals[0].kind == SK_RBAC_R_REMOTE_IP &&
              z->principals[0].cidr.family == AF_INET && z->principals[0].cidr.prefix_len == 8 &&
              z->principals[0].cidr.addr[0] == 10);
    }

    const struct sk_vhost *vh = &h->routes->vhosts[0];
    /* /a: its own FilterConfig{disabled} wins over the vhost's fault; the route
     * config's empty RBACPerRoute disables rbac */
    const struct sk_route *ra = &vh->routes[0], *rbr = &vh->routes[1];
    CHECK(ra->nfilter_overrides == 2);
    const struct sk_filter_override *o = override_of(ra, "fault");
    CHECK(o && o->disabled && !o->config);
    o = override_of(ra, "rbac");
    CHECK(o && o->disabled && !o->config);
    /* /b: RBACPerRoute with rules; the optional unknown config is skipped; the
     * vhost's fault (header abort) applies */
    CHECK(rbr->nfilter_overrides == 2 && !override_of(rbr, "x"));
    o = override_of(rbr, "rbac");
    CHECK(o && !o->disabled && o->config);
    if (o && o->config) {
        const struct sk_rbac_cfg *pr = o->config;
        CHECK(pr->magic == SK_RBAC_CFG_MAGIC && pr->has_rules && !pr->has_shadow &&
              pr->rules.action == SK_RBAC_ALLOW && pr->rules.npolicies == 1);
    }
    o = override_of(rbr, "fault");
    CHECK(o && !o->disabled && o->config);
    if (o && o->config) {
        const struct sk_fault_cfg *vf = o->config;
        CHECK(vf->abort_kind == SK_FAULT_ABORT_HEADER && vf->abort_pct.numerator == 100 &&
              vf->delay_kind == SK_FAULT_DELAY_NONE);
    }
    sk_snapshot_unref(s);
}

static void test_filter_errors(void)
{
    static const char y[] = LISTENERS LISTENER_HCM(
        "          http_filters:\n"
        "          - name: fault\n"
        "            typed_config:\n"
        "              \"@type\": " FAULT_TYPE "\n"
        "              delay: {percentage: {numerator: 20}}\n"
        "              abort: {percentage: {numerator: 20}}\n"
        "              response_rate_limit: {fixed_limit: {limit_kbps: 0}}\n"
        "          - name: rbac\n"
        "            typed_config:\n"
        "              \"@type\": " RBAC_TYPE "\n"
        "              rules:\n"
        "                policies:\n"
        "                  p1:\n"
        "                    permissions: [{destination_ip: {address_prefix: 10.0.0.1}}]\n"
        "                  p2:\n"
        "                    permissions: [{and_rules: {rules: []}}]\n"
        "                    principals: [{remote_ip: {address_prefix: nope}}, "
        "{authenticated: {principal_name: {safe_regex: {regex: x}}}}]\n"
        "          - " ROUTER "\n"
        "          route_config:\n"
        "            virtual_hosts:\n"
        "            - name: vh\n"
        "              domains: [\"*\"]\n"
        "              routes:\n"
        "              - match: {prefix: /}\n"
        "                route: {cluster: c}\n"
        "                typed_per_filter_config:\n"
        "                  fault: {\"@type\": " FAULT_TYPE ", abort: {http_status: 600}}\n"
        "                  other: {\"@type\": " TCP_TYPE ", stat_prefix: x, cluster: c}\n")
        CLUSTERS STATIC_CLUSTER("c", "127.0.0.1", "80");
#define F0 HCM0 ".http_filters[0].typed_config"
#define R1 HCM0 ".http_filters[1].typed_config.rules.policies[\"p1\"]"
#define R2 HCM0 ".http_filters[1].typed_config.rules.policies[\"p2\"]"
#define PFC VH0 ".routes[0].typed_per_filter_config"
    EXPECT_ERR(y, F0 ".delay", "one of fixed_delay, header_delay is required");
    EXPECT_ERR(y, F0 ".abort", "one of http_status, grpc_status, header_abort is required");
    EXPECT_ERR(y, F0 ".response_rate_limit.fixed_limit.limit_kbps", "at least 1");
    EXPECT_ERR(y, R1 ".principals", "at least one principal is required");
    EXPECT_ERR(y, R1 ".permissions[0].destination_ip", "destination_ip is not supported yet");
    EXPECT_ERR(y, R2 ".permissions[0].and_rules.rules", "at least one rule is required");
    EXPECT_ERR(y, R2 ".principals[0].remote_ip.address_prefix", "'nope' is not an IP address");
    EXPECT_ERR(y, R2 ".principals[1].authenticated.principal_name.safe_regex",
               "regex matching is not supported yet");
    EXPECT_ERR(y, PFC ".fault.abort.http_status", "http_status must be 200-599 (got 600)");
    EXPECT_ERR(y, PFC ".other", "unsupported per-route config "
                                "'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy'");
#undef F0
#undef R1
#undef R2
#undef PFC
}

int main(void)
{
    test_pb_lookup();
    test_quickstart_example();
    test_tcp_example();
    test_quick_mode();
    test_full();
    test_dynamic();
    test_empty();
    test_unknown_cluster();
    test_listener_errors();
    test_hcm_errors();
    test_route_errors();
    test_cluster_errors();
    test_dynamic_errors();
    test_resilience();
    test_resilience_errors();
    test_route_resilience();
    test_route_resilience_errors();
    test_tls_full();
    test_tls_sds();
    test_tls_errors();
    test_filters();
    test_filter_errors();
    if (failures) {
        fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("translate: %d checks passed\n", checks);
    return 0;
}
