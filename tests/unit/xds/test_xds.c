/* Unit tests for src/xds: gRPC framing (grpc.c) and the resource store
 * (resources.c): Bootstrap assembly (RDS inlined, EDS inlined as STATIC),
 * warming, subscriptions, ACK / per-resource NACK, identical re-push. The
 * resources are written as YAML and packed into Any, like a control plane
 * would send them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff/buf.h"
#include "skiff/config.h"
#include "skiff/err.h"
#include "skiff/model.h"
#include "skiff/xds.h"
#include "skiff/yaml_pb.h"

#include "envoy.config.bootstrap.v3.pb-c.h"
#include "envoy.config.cluster.v3.pb-c.h"
#include "envoy.config.endpoint.v3.pb-c.h"
#include "envoy.config.listener.v3.pb-c.h"
#include "envoy.config.route.v3.pb-c.h"
#include "envoy.extensions.transport_sockets.tls.v3.pb-c.h"
#include "envoy.service.discovery.v3.pb-c.h"

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

/* ---- framing ------------------------------------------------------------------------ */

struct got {
    int n;
    size_t lens[8];
    char first[64];
};

static int on_msg(void *arg, const uint8_t *m, size_t len)
{
    struct got *g = arg;
    if (g->n < 8)
        g->lens[g->n] = len;
    if (g->n == 0) {
        size_t k = len < sizeof(g->first) - 1 ? len : sizeof(g->first) - 1;
        memcpy(g->first, m, k);
        g->first[k] = 0;
    }
    g->n++;
    return 0;
}

static void test_framing(void)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest rq =
        ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    rq.type_url = (char *)"type.googleapis.com/envoy.config.cluster.v3.Cluster";
    rq.version_info = (char *)"7";
    uint8_t *f;
    size_t flen;
    CHECK(sk_grpc_frame(&rq.base, &f, &flen) == 0);
    CHECK(flen > 5 && f[0] == 0);
    size_t body = ((size_t)f[1] << 24) | ((size_t)f[2] << 16) | ((size_t)f[3] << 8) | f[4];
    CHECK(body == flen - 5);
    Envoy__Service__Discovery__V3__DiscoveryRequest *back =
        envoy__service__discovery__v3__discovery_request__unpack(NULL, body, f + 5);
    CHECK(back && strcmp(back->version_info, "7") == 0);
    if (back)
        envoy__service__discovery__v3__discovery_request__free_unpacked(back, NULL);

    /* byte by byte, three messages back to back, one empty */
    uint8_t buf[512];
    size_t n = 0;
    memcpy(buf + n, f, flen);
    n += flen;
    static const uint8_t empty[5] = {0, 0, 0, 0, 0};
    memcpy(buf + n, empty, 5);
    n += 5;
    memcpy(buf + n, f, flen);
    n += flen;
    struct sk_grpc_dec d;
    sk_grpc_dec_init(&d);
    struct got g = {0};
    for (size_t i = 0; i < n; i++)
        CHECK(sk_grpc_dec_feed(&d, buf + i, 1, on_msg, &g) == 0);
    CHECK(g.n == 3 && g.lens[0] == body && g.lens[1] == 0 && g.lens[2] == body);
    sk_grpc_dec_free(&d);

    /* all in one feed */
    sk_grpc_dec_init(&d);
    memset(&g, 0, sizeof(g));
    CHECK(sk_grpc_dec_feed(&d, buf, n, on_msg, &g) == 0 && g.n == 3);
    /* a partial message stays pending */
    CHECK(sk_grpc_dec_feed(&d, f, flen - 1, on_msg, &g) == 0 && g.n == 3);
    CHECK(sk_grpc_dec_feed(&d, f + flen - 1, 1, on_msg, &g) == 0 && g.n == 4);
    sk_grpc_dec_free(&d);
    free(f);

    /* compressed flag: we never negotiate compression */
    sk_grpc_dec_init(&d);
    static const uint8_t comp[6] = {1, 0, 0, 0, 1, 'x'};
    CHECK(sk_grpc_dec_feed(&d, comp, sizeof(comp), on_msg, &g) == SK_ERR_PROTO);
    sk_grpc_dec_free(&d);

    /* over 16 MiB announced: rejected before anything is allocated */
    sk_grpc_dec_init(&d);
    static const uint8_t big[5] = {0, 0x01, 0x00, 0x00, 0x01};
    CHECK(sk_grpc_dec_feed(&d, big, sizeof(big), on_msg, &g) == SK_ERR_TOO_LARGE);
    sk_grpc_dec_free(&d);
    sk_grpc_dec_init(&d);
    static const uint8_t max[5] = {0, 0x01, 0x00, 0x00, 0x00}; /* exactly 16 MiB: allowed */
    CHECK(sk_grpc_dec_feed(&d, max, sizeof(max), on_msg, &g) == 0);
    sk_grpc_dec_free(&d);

    /* a callback's non-zero return stops decoding */
    sk_grpc_dec_init(&d);
    CHECK(sk_grpc_dec_feed(&d, empty, 5, NULL, NULL) == 0);
    sk_grpc_dec_free(&d);
}

/* ---- resources ------------------------------------------------------------------------ */

#define HCM_TYPE                                                                                   \
    "type.googleapis.com/"                                                                         \
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
#define ROUTER_TYPE "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

static const char bootstrap_yaml[] =
    "node: {id: n1, cluster: c1}\n"
    "dynamic_resources:\n"
    "  ads_config:\n"
    "    api_type: GRPC\n"
    "    grpc_services: [{envoy_grpc: {cluster_name: xds}}]\n"
    "  lds_config: {ads: {}}\n"
    "  cds_config: {ads: {}}\n"
    "static_resources:\n"
    "  clusters:\n"
    "  - name: xds\n"
    "    type: STATIC\n"
    "    load_assignment:\n"
    "      cluster_name: xds\n"
    "      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: "
    "{address: 127.0.0.1, port_value: 18000}}}}]}]\n";

static ProtobufCMessage *parse(const ProtobufCMessageDescriptor *d, const char *yaml)
{
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "<test>");
    ProtobufCMessage *m = NULL;
    int r = sk_yaml_pb_parse(yaml, strlen(yaml), d, sk_pb_lookup_type, &m, &e);
    if (r != 0) {
        sk_cfgerrs_print(&e, stderr);
        m = NULL;
    }
    sk_cfgerrs_free(&e);
    return m;
}

/* A DiscoveryResponse under construction. */
struct resp {
    Envoy__Service__Discovery__V3__DiscoveryResponse r;
    Google__Protobuf__Any anys[8];
    Google__Protobuf__Any *ptrs[8];
};

static void resp_init(struct resp *x, int type, const char *version)
{
    Envoy__Service__Discovery__V3__DiscoveryResponse i =
        ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_RESPONSE__INIT;
    x->r = i;
    x->r.type_url = (char *)sk_xds_type_url(type);
    x->r.version_info = (char *)version;
    x->r.nonce = (char *)"n";
    x->r.resources = x->ptrs;
}

static const ProtobufCMessageDescriptor *desc_of(int type)
{
    switch (type) {
    case SK_XDS_CDS:
        return &envoy__config__cluster__v3__cluster__descriptor;
    case SK_XDS_EDS:
        return &envoy__config__endpoint__v3__cluster_load_assignment__descriptor;
    case SK_XDS_LDS:
        return &envoy__config__listener__v3__listener__descriptor;
    case SK_XDS_SDS:
        return &envoy__extensions__transport_sockets__tls__v3__secret__descriptor;
    default:
        return &envoy__config__route__v3__route_configuration__descriptor;
    }
}

static void resp_add(struct resp *x, int type, const char *yaml)
{
    ProtobufCMessage *m = parse(desc_of(type), yaml);
    CHECK(m != NULL);
    if (!m)
        return;
    size_t i = x->r.n_resources++;
    Google__Protobuf__Any a = GOOGLE__PROTOBUF__ANY__INIT;
    x->anys[i] = a;
    x->anys[i].type_url = (char *)sk_xds_type_url(type);
    x->anys[i].value.len = protobuf_c_message_get_packed_size(m);
    x->anys[i].value.data = malloc(x->anys[i].value.len + 1);
    protobuf_c_message_pack(m, x->anys[i].value.data);
    x->ptrs[i] = &x->anys[i];
    protobuf_c_message_free_unpacked(m, NULL);
}

static void resp_free(struct resp *x)
{
    for (size_t i = 0; i < x->r.n_resources; i++)
        free(x->anys[i].value.data);
}

static struct sk_snapshot *published;
static int npublished;

static int publish(void *arg, struct sk_snapshot *s)
{
    if (published)
        sk_snapshot_unref(published);
    published = s;
    npublished++;
    return 0;
}

static struct sk_xds_result handle(struct sk_xds_store *st, struct resp *x)
{
    struct sk_xds_result r;
    sk_xds_store_handle(st, &x->r, &r);
    return r;
}

static int handle_one(struct sk_xds_store *st, int type, const char *version, const char *yaml,
                      struct sk_xds_result *out)
{
    struct resp x;
    resp_init(&x, type, version);
    if (yaml)
        resp_add(&x, type, yaml);
    *out = handle(st, &x);
    resp_free(&x);
    return out->ack;
}

#define EDS_CLUSTER(name, extra)                                                                   \
    "name: " name "\n"                                                                             \
    "type: EDS\n"                                                                                  \
    "connect_timeout: 1s\n"                                                                        \
    "eds_cluster_config: {eds_config: {ads: {}}, service_name: " name "-svc}\n" extra

#define CLA(name, port)                                                                            \
    "cluster_name: " name "-svc\n"                                                                 \
    "endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: "                           \
    "{address: 127.0.0.1, port_value: " port "}}}}]}]\n"

#define RDS_LISTENER(name, port, rc)                                                               \
    "name: " name "\n"                                                                             \
    "address: {socket_address: {address: 127.0.0.1, port_value: " port "}}\n"                      \
    "filter_chains:\n"                                                                             \
    "- filters:\n"                                                                                 \
    "  - name: hcm\n"                                                                              \
    "    typed_config:\n"                                                                          \
    "      \"@type\": " HCM_TYPE "\n"                                                              \
    "      stat_prefix: " name "\n"                                                                \
    "      rds: {route_config_name: " rc ", config_source: {ads: {}}}\n"                           \
    "      http_filters: [{name: router, typed_config: {\"@type\": " ROUTER_TYPE "}}]\n"

#define ROUTES(name, cluster, extra)                                                               \
    "name: " name "\n"                                                                             \
    "virtual_hosts:\n"                                                                             \
    "- name: vh\n"                                                                                 \
    "  domains: [\"*\"]\n"                                                                         \
    "  routes:\n"                                                                                  \
    "  - match: {prefix: \"/\"}\n"                                                                 \
    "    route: {cluster: " cluster extra "}\n"

static void test_store(void)
{
    Envoy__Config__Bootstrap__V3__Bootstrap *bs = (Envoy__Config__Bootstrap__V3__Bootstrap *)parse(
        &envoy__config__bootstrap__v3__bootstrap__descriptor, bootstrap_yaml);
    CHECK(bs != NULL);
    if (!bs)
        return;
    struct sk_xds_hooks hooks = {NULL, publish, NULL};
    struct sk_xds_store *st = sk_xds_store_new(bs, &hooks);
    CHECK(st != NULL);
    CHECK(sk_xds_store_wants(st, SK_XDS_CDS) && sk_xds_store_wants(st, SK_XDS_LDS));
    CHECK(!sk_xds_store_wants(st, SK_XDS_EDS) && !sk_xds_store_wants(st, SK_XDS_RDS));
    CHECK(!sk_xds_store_warm(st));
    const char *const *names;
    struct sk_xds_result r;

    /* CDS: an EDS cluster -> EDS subscription, still warming */
    CHECK(handle_one(st, SK_XDS_CDS, "c1", EDS_CLUSTER("web", ""), &r));
    CHECK(r.rebuilt && !r.published && r.names_changed[SK_XDS_EDS]);
    CHECK(sk_xds_store_names(st, SK_XDS_EDS, &names) == 1 && strcmp(names[0], "web-svc") == 0);
    CHECK(strcmp(sk_xds_store_version(st, SK_XDS_CDS), "c1") == 0);
    sk_xds_result_free(&r);

    /* LDS: a listener with rds -> RDS subscription */
    CHECK(handle_one(st, SK_XDS_LDS, "l1", RDS_LISTENER("ingress", "10000", "r1"), &r));
    CHECK(!r.published && r.names_changed[SK_XDS_RDS]);
    CHECK(sk_xds_store_names(st, SK_XDS_RDS, &names) == 1 && strcmp(names[0], "r1") == 0);
    sk_xds_result_free(&r);

    /* EDS: unrequested names are ignored */
    struct resp x;
    resp_init(&x, SK_XDS_EDS, "e1");
    resp_add(&x, SK_XDS_EDS, CLA("web", "8080"));
    resp_add(&x, SK_XDS_EDS, CLA("other", "8081"));
    r = handle(st, &x);
    resp_free(&x);
    CHECK(r.ack && !r.published && !sk_xds_store_warm(st));
    CHECK(sk_xds_store_count(st, SK_XDS_EDS) == 1);
    sk_xds_result_free(&r);

    /* RDS completes the config: published */
    CHECK(handle_one(st, SK_XDS_RDS, "r1", ROUTES("r1", "web", ""), &r));
    CHECK(r.published && sk_xds_store_warm(st) && npublished == 1);
    sk_xds_result_free(&r);
    struct sk_snapshot *s = published;
    CHECK(s && s->nlisteners == 1 && s->nclusters == 2);
    if (s && s->nlisteners == 1 && s->nclusters == 2) {
        const struct sk_cluster *web = sk_snapshot_find_cluster(s, "web");
        CHECK(web && web->type == SK_CLUSTER_STATIC && web->nendpoints == 1 &&
              web->endpoints[0].port == 8080);
        const struct sk_listener *l = sk_snapshot_find_listener(s, "ingress");
        CHECK(l && l->nchains == 1 && l->chains[0].hcm && l->chains[0].hcm->routes &&
              l->chains[0].hcm->routes->nvhosts == 1 &&
              l->chains[0].hcm->routes->vhosts[0].routes[0].cluster == web);
    }

    /* identical re-push: nothing built, version taken */
    uint64_t builds = sk_xds_store_builds(st);
    CHECK(handle_one(st, SK_XDS_CDS, "c2", EDS_CLUSTER("web", ""), &r));
    CHECK(r.unchanged && !r.rebuilt && sk_xds_store_builds(st) == builds && npublished == 1);
    CHECK(strcmp(sk_xds_store_version(st, SK_XDS_CDS), "c2") == 0);
    sk_xds_result_free(&r);

    /* a bad cluster next to a good one: the good one is applied, the bad one
     * named in the NACK, the version stays */
    resp_init(&x, SK_XDS_CDS, "c3");
    resp_add(&x, SK_XDS_CDS, EDS_CLUSTER("web", ""));
    resp_add(&x, SK_XDS_CDS, EDS_CLUSTER("api", ""));
    resp_add(&x, SK_XDS_CDS, EDS_CLUSTER("bad", "lb_policy: 42\n"));
    r = handle(st, &x);
    CHECK(!r.ack && r.rejected == 1 && r.error && strstr(r.error, "Cluster 'bad'") &&
          strstr(r.error, "lb_policy") && !strstr(r.error, "'api'"));
    CHECK(strcmp(sk_xds_store_version(st, SK_XDS_CDS), "c2") == 0);
    CHECK(sk_xds_store_count(st, SK_XDS_CDS) == 2);
    CHECK(r.published && npublished == 2);
    CHECK(sk_xds_store_names(st, SK_XDS_EDS, &names) == 2 && strcmp(names[0], "api-svc") == 0);
    sk_xds_result_free(&r);
    /* the same response again: rejected again without a build */
    builds = sk_xds_store_builds(st);
    r = handle(st, &x);
    CHECK(!r.ack && r.error && strstr(r.error, "Cluster 'bad'") &&
          sk_xds_store_builds(st) == builds);
    sk_xds_result_free(&r);
    resp_free(&x);
    /* the warming cluster 'api' (no endpoints yet) is in the snapshot, empty */
    s = published;
    const struct sk_cluster *api = s ? sk_snapshot_find_cluster(s, "api") : NULL;
    CHECK(api && api->nendpoints == 0);

    /* a bad route config: NACK naming it, nothing published */
    CHECK(!handle_one(st, SK_XDS_RDS, "r2", ROUTES("r1", "web", ", timeout: -1s"), &r));
    CHECK(r.error && strstr(r.error, "RouteConfiguration 'r1'") && strstr(r.error, "timeout"));
    CHECK(!r.published && npublished == 2);
    CHECK(strcmp(sk_xds_store_version(st, SK_XDS_RDS), "r1") == 0);
    sk_xds_result_free(&r);

    /* a changed listener waiting for a new route config: the version in service
     * keeps serving until it arrives */
    CHECK(handle_one(st, SK_XDS_LDS, "l2", RDS_LISTENER("ingress", "10000", "r9"), &r));
    CHECK(r.ack && r.published);
    sk_xds_result_free(&r);
    s = published;
    CHECK(s && s->nlisteners == 1 && s->listeners[0].chains[0].hcm &&
          strcmp(s->listeners[0].chains[0].hcm->routes->name, "r1") == 0);
    CHECK(sk_xds_store_names(st, SK_XDS_RDS, &names) == 2);
    CHECK(handle_one(st, SK_XDS_RDS, "r3", ROUTES("r9", "api", ""), &r));
    CHECK(r.published);
    sk_xds_result_free(&r);
    s = published;
    CHECK(s && s->nlisteners == 1 && s->listeners[0].chains[0].hcm &&
          strcmp(s->listeners[0].chains[0].hcm->routes->name, "r9") == 0);
    CHECK(sk_xds_store_names(st, SK_XDS_RDS, &names) == 1 && strcmp(names[0], "r9") == 0);
    CHECK(sk_xds_store_count(st, SK_XDS_RDS) == 1);

    /* malformed responses are rejected whole */
    resp_init(&x, SK_XDS_CDS, "c4");
    resp_add(&x, SK_XDS_CDS, EDS_CLUSTER("web", ""));
    resp_add(&x, SK_XDS_CDS, EDS_CLUSTER("web", ""));
    r = handle(st, &x);
    CHECK(!r.ack && r.error && strstr(r.error, "duplicate"));
    sk_xds_result_free(&r);
    x.anys[1].type_url = (char *)sk_xds_type_url(SK_XDS_LDS);
    r = handle(st, &x);
    CHECK(!r.ack && r.error && strstr(r.error, "does not match"));
    sk_xds_result_free(&r);
    x.anys[1].type_url = (char *)sk_xds_type_url(SK_XDS_CDS);
    x.anys[1].value.len = 3;
    x.anys[1].value.data[0] = 0xff;
    r = handle(st, &x);
    CHECK(!r.ack && r.error && strstr(r.error, "cannot decode"));
    sk_xds_result_free(&r);
    resp_free(&x);
    resp_init(&x, SK_XDS_CDS, "c5");
    x.r.type_url = (char *)"type.googleapis.com/envoy.config.core.v3.Nothing";
    r = handle(st, &x);
    CHECK(!r.ack && r.error && strstr(r.error, "unsupported type_url"));
    sk_xds_result_free(&r);

    /* a second listener on the same address: that listener is rejected */
    resp_init(&x, SK_XDS_LDS, "l2");
    resp_add(&x, SK_XDS_LDS, RDS_LISTENER("ingress", "10000", "r9"));
    resp_add(&x, SK_XDS_LDS, RDS_LISTENER("dup", "10000", "r9"));
    r = handle(st, &x);
    /* (nothing else changed: a plain NACK) */
    CHECK(!r.ack && r.rejected == 0 && r.error && strstr(r.error, "Listener 'dup'"));
    CHECK(sk_xds_store_count(st, SK_XDS_LDS) == 1);
    sk_xds_result_free(&r);
    resp_free(&x);

    /* removing the listener drops its RDS subscription and cached routes */
    CHECK(handle_one(st, SK_XDS_LDS, "l3", NULL, &r));
    CHECK(r.published && r.names_changed[SK_XDS_RDS]);
    CHECK(sk_xds_store_names(st, SK_XDS_RDS, &names) == 0);
    CHECK(sk_xds_store_count(st, SK_XDS_RDS) == 0);
    CHECK(published && published->nlisteners == 0);
    sk_xds_result_free(&r);

    sk_xds_store_free(st);
    if (published)
        sk_snapshot_unref(published);
    published = NULL;
}

/* initial_fetch_timeout: RDS/EDS names become does-not-exist, CDS/LDS count as
 * answered; a resent rejected response is damped; /config_dump JSON. */
static void test_timeouts_and_damping(void)
{
    Envoy__Config__Bootstrap__V3__Bootstrap *bs = (Envoy__Config__Bootstrap__V3__Bootstrap *)parse(
        &envoy__config__bootstrap__v3__bootstrap__descriptor, bootstrap_yaml);
    CHECK(bs != NULL);
    if (!bs)
        return;
    struct sk_xds_hooks hooks = {NULL, publish, NULL};
    struct sk_xds_store *st = sk_xds_store_new(bs, &hooks);
    struct sk_xds_result r;
    npublished = 0;

    /* nothing armed before arm(); CDS/LDS wait 15 s by default */
    CHECK(sk_xds_store_next_deadline(st) == 0);
    sk_xds_store_arm(st, 100.0);
    CHECK(sk_xds_store_next_deadline(st) == 115.0);
    CHECK(sk_xds_store_expire(st, 114.9, &r) == 0);
    sk_xds_result_free(&r);

    /* CDS arrives; LDS never does: at 115 LDS counts as answered (empty) */
    CHECK(handle_one(st, SK_XDS_CDS, "c1", EDS_CLUSTER("web", ""), &r));
    sk_xds_result_free(&r);
    /* the EDS name was learnt; its timer starts on arm (1 s configured? no: 15 s) */
    sk_xds_store_arm(st, 101.0);
    CHECK(sk_xds_store_next_deadline(st) == 115.0); /* LDS first */
    CHECK(sk_xds_store_expire(st, 115.0, &r) == 1);
    CHECK(!r.published && !sk_xds_store_warm(st)); /* EDS still missing */
    sk_xds_result_free(&r);
    CHECK(sk_xds_store_init_fetch_timeouts(st, SK_XDS_LDS) == 1);
    CHECK(sk_xds_store_next_deadline(st) == 116.0);
    CHECK(!sk_xds_store_does_not_exist(st, SK_XDS_EDS, "web-svc"));
    /* the stream drops: running timers restart on the next stream */
    sk_xds_store_disarm(st);
    CHECK(sk_xds_store_next_deadline(st) == 0);
    sk_xds_store_arm(st, 200.0);
    CHECK(sk_xds_store_next_deadline(st) == 215.0);
    CHECK(sk_xds_store_expire(st, 215.0, &r) == 1);
    CHECK(r.published && sk_xds_store_warm(st)); /* complete: web without endpoints */
    sk_xds_result_free(&r);
    CHECK(sk_xds_store_does_not_exist(st, SK_XDS_EDS, "web-svc"));
    CHECK(sk_xds_store_init_fetch_timeouts(st, SK_XDS_EDS) == 1);
    CHECK(published && published->nclusters == 2);
    for (size_t i = 0; published && i < published->nclusters; i++)
        if (strcmp(published->clusters[i].name, "web") == 0)
            CHECK(published->clusters[i].nendpoints == 0);
    /* it arrives late: applied */
    CHECK(handle_one(st, SK_XDS_EDS, "e1", CLA("web", "9001"), &r));
    CHECK(r.published);
    sk_xds_result_free(&r);
    CHECK(!sk_xds_store_does_not_exist(st, SK_XDS_EDS, "web-svc"));

    /* a listener with an RDS config_source timeout of 0.5 s */
    CHECK(handle_one(st, SK_XDS_LDS, "l1",
                     "name: ing\n"
                     "address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
                     "filter_chains:\n"
                     "- filters:\n"
                     "  - name: hcm\n"
                     "    typed_config:\n"
                     "      \"@type\": " HCM_TYPE "\n"
                     "      stat_prefix: ing\n"
                     "      rds: {route_config_name: r1, config_source: {ads: {}, "
                     "initial_fetch_timeout: 0.5s}}\n"
                     "      http_filters: [{name: router, typed_config: {\"@type\": " ROUTER_TYPE
                     "}}]\n",
                     &r));
    CHECK(r.names_changed[SK_XDS_RDS]);
    sk_xds_result_free(&r);
    size_t nl = published ? published->nlisteners : 99;
    CHECK(nl == 0); /* warming: not published yet */
    sk_xds_store_arm(st, 300.0);
    CHECK(sk_xds_store_next_deadline(st) == 300.5);
    CHECK(sk_xds_store_expire(st, 300.5, &r) == 1);
    CHECK(r.published);
    sk_xds_result_free(&r);
    CHECK(published && published->nlisteners == 1);
    CHECK(sk_xds_store_does_not_exist(st, SK_XDS_RDS, "r1"));

    /* damping: the same rejected CDS again is NACKed without a build */
    uint64_t b0 = sk_xds_store_builds(st);
    CHECK(!handle_one(st, SK_XDS_CDS, "c2", EDS_CLUSTER("web", "lb_policy: 42\n"), &r));
    CHECK(!r.damped && r.rebuilt && r.error && strstr(r.error, "lb_policy"));
    sk_xds_result_free(&r);
    uint64_t b1 = sk_xds_store_builds(st);
    for (int i = 0; i < 3; i++) {
        CHECK(!handle_one(st, SK_XDS_CDS, "c2", EDS_CLUSTER("web", "lb_policy: 42\n"), &r));
        CHECK(r.damped && !r.rebuilt && r.error && strstr(r.error, "lb_policy"));
        sk_xds_result_free(&r);
    }
    CHECK(sk_xds_store_builds(st) == b1);
    (void)b0;
    /* dump: versions, last NACK, does-not-exist */
    struct sk_buf b;
    sk_buf_init(&b, 1 << 20);
    sk_xds_store_dump(st, &b);
    sk_buf_append(&b, "", 1);
    const char *j = (const char *)sk_buf_rptr(&b);
    CHECK(strstr(j, "\"does_not_exist\": [\"r1\"]") != NULL);
    CHECK(strstr(j, "\"last_nack\": {\"version_info\": \"c2\"") != NULL);
    CHECK(strstr(j, "{\"name\": \"web\", \"version_info\": \"c1\"") != NULL);
    sk_buf_free(&b);

    sk_xds_store_free(st);
    if (published)
        sk_snapshot_unref(published);
    published = NULL;
}

/* Like sk_tls_prepare for SDS: a TLS context still naming a Secret has no
 * material. */
static int prepare_sds(struct sk_snapshot *s, struct sk_cfgerrs *errs)
{
    for (size_t i = 0; i < s->nlisteners; i++)
        for (size_t c = 0; c < s->listeners[i].nchains; c++) {
            const struct sk_tls_cfg *t = s->listeners[i].chains[c].tls;
            if (t && t->sds_cert_name && t->cert_chain.kind == SK_DS_NONE) {
                sk_cfgerrs_add(errs, "", "SDS secret '%s' is not available", t->sds_cert_name);
                return -1;
            }
        }
    return 0;
}

/* SDS: a TLS listener waits for its Secret, gets it inlined, or stays out once
 * the Secret's initial fetch timed out. */
static void test_sds(void)
{
    Envoy__Config__Bootstrap__V3__Bootstrap *bs = (Envoy__Config__Bootstrap__V3__Bootstrap *)parse(
        &envoy__config__bootstrap__v3__bootstrap__descriptor, bootstrap_yaml);
    CHECK(bs != NULL);
    if (!bs)
        return;
    struct sk_xds_hooks hooks = {prepare_sds, publish, NULL};
    struct sk_xds_store *st = sk_xds_store_new(bs, &hooks);
    struct sk_xds_result r;
    const char *const *names;
    CHECK(handle_one(st, SK_XDS_CDS, "c1", NULL, &r));
    sk_xds_result_free(&r);
#define TLS_LISTENER(name, port)                                                                   \
    "name: " name "\n"                                                                             \
    "address: {socket_address: {address: 127.0.0.1, port_value: " port "}}\n"                      \
    "filter_chains:\n"                                                                             \
    "- filters:\n"                                                                                 \
    "  - name: tcp\n"                                                                              \
    "    typed_config:\n"                                                                          \
    "      \"@type\": "                                                                            \
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n"                 \
    "      stat_prefix: t\n"                                                                       \
    "      cluster: xds\n"                                                                         \
    "  transport_socket:\n"                                                                        \
    "    name: tls\n"                                                                              \
    "    typed_config:\n"                                                                          \
    "      \"@type\": type.googleapis.com/"                                                        \
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n"                             \
    "      common_tls_context:\n"                                                                  \
    "        tls_certificate_sds_secret_configs:\n"                                                \
    "        - {name: cert, sds_config: {ads: {}, initial_fetch_timeout: 2s}}\n"
    CHECK(handle_one(st, SK_XDS_LDS, "l1", TLS_LISTENER("tls", "1"), &r));
    CHECK(r.names_changed[SK_XDS_SDS] && !r.published);
    sk_xds_result_free(&r);
    CHECK(sk_xds_store_wants(st, SK_XDS_SDS));
    CHECK(sk_xds_store_names(st, SK_XDS_SDS, &names) == 1 && strcmp(names[0], "cert") == 0);
    CHECK(!sk_xds_store_warm(st));
    /* the Secret arrives: published with the certificate inlined */
    CHECK(handle_one(st, SK_XDS_SDS, "s1",
                     "name: cert\n"
                     "tls_certificate:\n"
                     "  certificate_chain: {inline_string: CERT-PEM}\n"
                     "  private_key: {inline_string: KEY-PEM}\n",
                     &r));
    CHECK(r.published && sk_xds_store_warm(st));
    sk_xds_result_free(&r);
    const struct sk_tls_cfg *tls =
        published && published->nlisteners == 1 && published->listeners[0].nchains == 1
            ? published->listeners[0].chains[0].tls
            : NULL;
    CHECK(tls && !tls->sds_cert_name && tls->cert_chain.kind == SK_DS_INLINE &&
          tls->cert_chain.len == 8 && memcmp(tls->cert_chain.data, "CERT-PEM", 8) == 0);
    /* a Secret of the wrong kind is rejected (translate: not available) */
    int np = npublished;
    CHECK(!handle_one(st, SK_XDS_SDS, "s2", "name: cert\nvalidation_context: {}\n", &r));
    CHECK(r.error && strstr(r.error, "SDS secret 'cert' is not available"));
    sk_xds_result_free(&r);
    CHECK(npublished == np && strcmp(sk_xds_store_version(st, SK_XDS_SDS), "s1") == 0);
    sk_xds_store_free(st);
    if (published)
        sk_snapshot_unref(published);
    published = NULL;

    /* does-not-exist: a fresh store, the Secret never arrives */
    bs = (Envoy__Config__Bootstrap__V3__Bootstrap *)parse(
        &envoy__config__bootstrap__v3__bootstrap__descriptor, bootstrap_yaml);
    st = sk_xds_store_new(bs, &hooks);
    CHECK(handle_one(st, SK_XDS_CDS, "c1", NULL, &r));
    sk_xds_result_free(&r);
    CHECK(handle_one(st, SK_XDS_LDS, "l1", TLS_LISTENER("tls", "1"), &r));
    sk_xds_result_free(&r);
    sk_xds_store_arm(st, 10.0);
    CHECK(sk_xds_store_next_deadline(st) == 12.0);
    CHECK(sk_xds_store_expire(st, 12.0, &r) == 1);
    CHECK(r.published); /* complete: without the listener */
    sk_xds_result_free(&r);
    CHECK(published && published->nlisteners == 0);
    CHECK(sk_xds_store_does_not_exist(st, SK_XDS_SDS, "cert"));
    sk_xds_store_free(st);
    if (published)
        sk_snapshot_unref(published);
    published = NULL;
#undef TLS_LISTENER
}

int main(void)
{
    test_framing();
    test_store();
    test_timeouts_and_damping();
    test_sds();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
