/* libFuzzer target for src/config/yaml_pb.c (YAML -> protobuf-c).
 *
 * The input is parsed as YAML into:
 *  1. skiff.test.All (tests/unit/yaml/skiff.test.proto: every field kind, Any
 *     resolving skiff.test.* and every type skiff knows);
 *  2. envoy.config.bootstrap.v3.Bootstrap (what skiff really loads), if known;
 *  3. google.protobuf.Struct (free-form JSON).
 * Invariants: success <=> a message and no error; failure <=> no message and
 * at least one error; a parsed message packs, unpacks and re-packs to the same
 * bytes; nothing leaks (ASan/valgrind). Limits are lowered (node budget) so
 * alias bombs stay fast; the depth limit is derived from the input so both
 * small and default limits get exercised.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google.protobuf.pb-c.h"
#include "skiff.test.pb-c.h"
#include "skiff/config.h"
#include "skiff/err.h"
#include "skiff/yaml_pb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_yaml: invariant failed %s:%d: %s\n", __FILE__, __LINE__, #c);    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static const ProtobufCMessageDescriptor *lookup(const char *name)
{
    if (!strcmp(name, "skiff.test.All"))
        return &skiff__test__all__descriptor;
    if (!strcmp(name, "skiff.test.Inner"))
        return &skiff__test__inner__descriptor;
    return sk_pb_lookup_type(name);
}

static void one(const uint8_t *data, size_t size, const ProtobufCMessageDescriptor *d,
                const struct sk_yaml_pb_opts *o)
{
    struct sk_cfgerrs e;
    ProtobufCMessage *m = (ProtobufCMessage *)&e; /* must be overwritten */
    sk_cfgerrs_init(&e, "fuzz.yaml");
    int rc = sk_yaml_pb_parse_opts((const char *)data, size, d, lookup, o, &m, &e);
    if (rc == 0) {
        REQUIRE(m != NULL && e.n == 0);
        size_t n = protobuf_c_message_get_packed_size(m);
        uint8_t *b1 = malloc(n ? n : 1);
        REQUIRE(b1 && protobuf_c_message_pack(m, b1) == n);
        ProtobufCMessage *u = protobuf_c_message_unpack(d, NULL, n, b1);
        REQUIRE(u != NULL);
        size_t n2 = protobuf_c_message_get_packed_size(u);
        uint8_t *b2 = malloc(n2 ? n2 : 1);
        REQUIRE(b2 && protobuf_c_message_pack(u, b2) == n2);
        REQUIRE(n2 == n && memcmp(b1, b2, n) == 0);
        free(b1);
        free(b2);
        protobuf_c_message_free_unpacked(u, NULL);
        protobuf_c_message_free_unpacked(m, NULL);
    } else {
        REQUIRE(m == NULL && e.n >= 1 && (rc == SK_ERR_CONFIG || rc == SK_ERR_NOMEM));
        for (size_t i = 0; i < e.n; i++)
            REQUIRE(e.v[i].msg != NULL && e.v[i].path != NULL);
        char *j = sk_cfgerrs_join(&e);
        free(j);
        /* later stages look positions up by path */
        sk_cfgerrs_add(&e, "static_resources.clusters[0].name", "x");
    }
    sk_cfgerrs_free(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned h = 2166136261u;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    struct sk_yaml_pb_opts o = {
        .max_depth = (h & 3) == 0 ? 8 : 0,
        .max_nodes = 20000,
        .max_errors = (h & 4) ? 5 : 0,
    };
    one(data, size, &skiff__test__all__descriptor, &o);
    const ProtobufCMessageDescriptor *boot = sk_pb_lookup_type("envoy.config.bootstrap.v3.Bootstrap");
    if (boot)
        one(data, size, boot, &o);
    one(data, size, &google__protobuf__struct__descriptor, &o);
    return 0;
}
