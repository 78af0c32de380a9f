/* libFuzzer target for the runtime chaos rule parser (src/filters/chaos_json.c).
 *
 * The input is a POST /chaos/faults body. It is parsed from an exact-size heap
 * copy (ASan catches any read past `len`); the parser must never crash, must
 * always leave a NUL-terminated message on failure, and an accepted rule must
 * satisfy every documented bound. A second parse of the same bytes must give
 * the same answer (no hidden state). */
#include "skiff/chaos.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_chaos: invariant failed %s:%d: %s\n", __FILE__, __LINE__, #c);   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    static struct sk_chaos_spec s1, s2;
    char e1[256], e2[256];
    int r1 = sk_chaos_parse(copy, size, &s1, e1, sizeof(e1));
    int r2 = sk_chaos_parse(copy, size, &s2, e2, sizeof(e2));
    REQUIRE(r1 == r2);
    REQUIRE(memchr(e1, 0, sizeof(e1)) != NULL);
    if (r1 < 0) {
        REQUIRE(e1[0] != 0);
        REQUIRE(strcmp(e1, e2) == 0);
    } else {
        REQUIRE(memcmp(&s1, &s2, sizeof(s1)) == 0);
        REQUIRE(s1.target_kind >= SK_CHAOS_T_LISTENER && s1.target_kind <= SK_CHAOS_T_CLUSTER);
        REQUIRE(s1.target[0] && memchr(s1.target, 0, sizeof(s1.target)));
        REQUIRE(s1.ttl_s >= 0.1 && s1.ttl_s <= SK_CHAOS_TTL_MAX_S);
        REQUIRE(s1.nhdrs <= SK_CHAOS_MAX_HEADERS);
        REQUIRE(s1.has_delay || s1.has_rl || s1.abort_kind != SK_CHAOS_ABORT_NONE ||
                s1.mid_kind != SK_CHAOS_MID_NONE);
        if (s1.mid_kind != SK_CHAOS_MID_NONE)
            REQUIRE(s1.mid_kind <= SK_CHAOS_MID_GRPC && s1.mid_ppm >= 1 && s1.mid_ppm <= 1000000 &&
                    s1.mid_after_bytes <= SK_CHAOS_MID_MAX_BYTES && s1.mid_grpc_status >= 1 &&
                    s1.mid_grpc_status <= 16);
        if (s1.has_delay)
            REQUIRE(s1.delay_ms >= 1 && s1.delay_ms <= SK_CHAOS_DELAY_MAX_MS && s1.delay_ppm >= 1 &&
                    s1.delay_ppm <= 1000000);
        if (s1.abort_kind != SK_CHAOS_ABORT_NONE)
            REQUIRE(s1.abort_ppm >= 1 && s1.abort_ppm <= 1000000);
        if (s1.abort_kind == SK_CHAOS_ABORT_HTTP)
            REQUIRE(s1.abort_code >= 200 && s1.abort_code <= 599);
        if (s1.has_rl)
            REQUIRE(s1.rl_kbps >= 1 && s1.rl_kbps <= SK_CHAOS_RL_MAX_KBPS);
        if (s1.leg == SK_CHAOS_LEG_UPSTREAM)
            REQUIRE(!s1.has_delay && !s1.has_rl && s1.mid_kind == SK_CHAOS_MID_NONE &&
                    (s1.abort_kind == SK_CHAOS_ABORT_RESET ||
                     (s1.abort_kind == SK_CHAOS_ABORT_HTTP && s1.abort_code >= 500)));
        else
            REQUIRE(s1.abort_kind != SK_CHAOS_ABORT_RESET);
    }
    free(copy);
    return 0;
}
