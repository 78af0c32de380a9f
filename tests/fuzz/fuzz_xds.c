/* libFuzzer target for src/xds (grpc.c framing, resources.c store + Bootstrap
 * assembly) on arbitrary DiscoveryResponse bytes.
 *
 * The input is
 *  1. fed through the gRPC decoder (in two parts, split at a data-derived
 *     offset), every decoded message unpacked as a DiscoveryResponse and handed
 *     to a resource store;
 *  2. unpacked whole as a DiscoveryResponse and handed to the store as each of
 *     the four resource types in turn (so one input reaches CDS, EDS, LDS and
 *     RDS assembly, inlining and the per-resource NACK path).
 * The store starts from a fixed bootstrap whose static listener uses RDS and
 * whose static cluster uses EDS, so RDS/EDS names are subscribed from the start.
 * Invariants: an ACK has no error and a NACK has one; a published snapshot is a
 * valid one (it exists); nothing leaks (ASan). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envoy.config.bootstrap.v3.pb-c.h"
#include "envoy.service.discovery.v3.pb-c.h"
#include "skiff/config.h"
#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/pbregion.h"
#include "skiff/buf.h"
#include "skiff/xds.h"
#include "skiff/yaml_pb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_xds: invariant failed %s:%d: %s\n", __FILE__, __LINE__, #c);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const char bootstrap_yaml[] =
    "node: {id: fuzz, cluster: fuzz}\n"
    "dynamic_resources:\n"
    "  ads_config:\n"
    "    api_type: GRPC\n"
    "    grpc_services: [{envoy_grpc: {cluster_name: xds}}]\n"
    "  lds_config: {ads: {}}\n"
    "  cds_config: {ads: {}}\n"
    "static_resources:\n"
    "  listeners:\n"
    "  - name: s\n"
    "    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}\n"
    "    filter_chains:\n"
    "    - filters:\n"
    "      - name: hcm\n"
    "        typed_config:\n"
    "          \"@type\": type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n"
    "          stat_prefix: s\n"
    "          rds: {route_config_name: r, config_source: {ads: {}}}\n"
    "          http_filters: [{name: router, typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]\n"
    "  clusters:\n"
    "  - name: xds\n"
    "    type: STATIC\n"
    "    load_assignment:\n"
    "      cluster_name: xds\n"
    "      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: "
    "{address: 127.0.0.1, port_value: 18000}}}}]}]\n"
    "  - name: e\n"
    "    type: EDS\n"
    "    eds_cluster_config: {eds_config: {ads: {}}}\n";

static int publish(void *arg, struct sk_snapshot *s)
{
    REQUIRE(s != NULL);
    sk_snapshot_unref(s);
    return 0;
}

static void check(const struct sk_xds_result *r)
{
    REQUIRE(r->ack == (r->error == NULL));
}

static int on_msg(void *arg, const uint8_t *m, size_t len)
{
    struct sk_xds_store *st = arg;
    /* as xds/ads.c: the response in a region, released wholesale */
    struct sk_pbregion rg;
    sk_pbregion_init(&rg);
    Envoy__Service__Discovery__V3__DiscoveryResponse *r =
        envoy__service__discovery__v3__discovery_response__unpack(sk_pbregion_allocator(&rg), len,
                                                                  m);
    if (r) {
        struct sk_xds_result res;
        sk_xds_store_handle(st, r, &res);
        check(&res);
        sk_xds_result_free(&res);
    }
    sk_pbregion_release(&rg);
    return 0;
}

static struct sk_xds_store *new_store(void)
{
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "<fuzz>");
    ProtobufCMessage *bs = NULL;
    int rc = sk_yaml_pb_parse(bootstrap_yaml, sizeof(bootstrap_yaml) - 1,
                              &envoy__config__bootstrap__v3__bootstrap__descriptor,
                              sk_pb_lookup_type, &bs, &e);
    sk_cfgerrs_free(&e);
    REQUIRE(rc == 0 && bs);
    struct sk_xds_hooks h = {NULL, publish, NULL};
    struct sk_xds_store *st = sk_xds_store_new((Envoy__Config__Bootstrap__V3__Bootstrap *)bs, &h);
    REQUIRE(st != NULL);
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sk_log_level = SK_LOG_ERROR; /* NACK warnings are expected */
    /* 1. framed */
    struct sk_xds_store *st = new_store();
    struct sk_grpc_dec d;
    sk_grpc_dec_init(&d);
    d.max = 1u << 20;
    size_t cut = size ? data[0] % (size + 1) : 0;
    int r = sk_grpc_dec_feed(&d, data, cut, on_msg, st);
    if (r == 0)
        r = sk_grpc_dec_feed(&d, data + cut, size - cut, on_msg, st);
    REQUIRE(r == 0 || r == SK_ERR_PROTO || r == SK_ERR_TOO_LARGE || r == SK_ERR_NOMEM);
    sk_grpc_dec_free(&d);
    sk_xds_store_free(st);

    /* 2. whole, as every type */
    Envoy__Service__Discovery__V3__DiscoveryResponse *resp =
        envoy__service__discovery__v3__discovery_response__unpack(NULL, size, data);
    if (!resp)
        return 0;
    st = new_store();
    char *orig = resp->type_url;
    for (int pass = 0; pass < 2; pass++)
        for (int t = -1; t < SK_XDS_NTYPES; t++) {
            resp->type_url = t < 0 ? orig : (char *)sk_xds_type_url(t);
            struct sk_xds_result res;
            sk_xds_store_handle(st, resp, &res);
            check(&res);
            sk_xds_result_free(&res);
        }
    resp->type_url = orig;
    /* every timer fires (does-not-exist rebuild), then the admin dump */
    sk_xds_store_arm(st, 1.0);
    struct sk_xds_result res;
    sk_xds_store_expire(st, 1e12, &res);
    check(&res);
    sk_xds_result_free(&res);
    struct sk_buf b;
    sk_buf_init(&b, 64u << 20);
    sk_xds_store_dump(st, &b);
    sk_buf_free(&b);
    sk_xds_store_free(st);
    envoy__service__discovery__v3__discovery_response__free_unpacked(resp, NULL);
    return 0;
}
