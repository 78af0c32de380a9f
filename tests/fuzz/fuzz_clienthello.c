/* libFuzzer target for src/net/tls_inspect.c (sk_tls_inspect).
 *
 * The input is the first bytes of a connection (corpus: real ClientHellos,
 * fragmented ones, and garbage). Invariants checked:
 *  - the result is -1, 0 or 1, and *out is consistent (NUL-terminated,
 *    lower-case SNI within bounds, at most SK_CH_MAX_ALPN protocols);
 *  - prefixes are consistent with the whole: a prefix that is decided (1 or
 *    -1) gives the same answer as the whole input (the inspector decides only
 *    from bytes it has), and a prefix never says "not TLS" when the whole says
 *    TLS (except that after SK_CH_INSPECT_MAX bytes the inspector gives up
 *    waiting and reports TLS without SNI); each prefix is an exact-size heap copy so ASan catches
 * over-reads.
 */
#include "skiff/tls.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_clienthello: invariant failed %s:%d: %s\n", __FILE__, __LINE__,  \
                    #c);                                                                           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_out(int r, const struct sk_client_hello *h)
{
    REQUIRE(r == -1 || r == 0 || r == 1);
    if (r != 1) {
        REQUIRE(!h->is_tls);
        return;
    }
    REQUIRE(h->is_tls);
    REQUIRE(h->sni_len < sizeof(h->sni) && h->sni[h->sni_len] == 0 && strlen(h->sni) == h->sni_len);
    for (size_t i = 0; i < h->sni_len; i++)
        REQUIRE(!(h->sni[i] >= 'A' && h->sni[i] <= 'Z'));
    REQUIRE(h->nalpn <= SK_CH_MAX_ALPN);
    for (size_t i = 0; i < h->nalpn; i++)
        REQUIRE(h->alpn_len[i] >= 1 && h->alpn_len[i] <= 255 && h->alpn[i][h->alpn_len[i]] == 0);
}

static int run(const uint8_t *data, size_t n, struct sk_client_hello *h)
{
    uint8_t *copy = malloc(n ? n : 1);
    REQUIRE(copy != NULL);
    if (n)
        memcpy(copy, data, n);
    int r = sk_tls_inspect(copy, n, h);
    free(copy);
    check_out(r, h);
    return r;
}

static int same(const struct sk_client_hello *a, const struct sk_client_hello *b)
{
    if (a->is_tls != b->is_tls || a->sni_len != b->sni_len || a->nalpn != b->nalpn ||
        strcmp(a->sni, b->sni) != 0)
        return 0;
    for (size_t i = 0; i < a->nalpn; i++)
        if (a->alpn_len[i] != b->alpn_len[i] || strcmp(a->alpn[i], b->alpn[i]) != 0)
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct sk_client_hello whole, part; /* large: keep them off the stack */
    int rw = run(data, size, &whole);
    /* every prefix for small inputs, a spread of them for large ones */
    size_t step = size <= 600 ? 1 : size / 300;
    for (size_t k = 0; k < size; k += step) {
        int rp = run(data, k, &part);
        if (rp == 1 && k >= SK_CH_INSPECT_MAX) {
            /* gave up waiting (bounded buffering): the whole may decide otherwise */
            REQUIRE(part.sni_len == 0 && part.nalpn == 0);
        } else if (rp == 1) {
            REQUIRE(rw == 1);
            REQUIRE(same(&part, &whole));
        } else if (rp == -1) {
            REQUIRE(rw == -1);
        }
    }
    return 0;
}
