/* Consistent-hashing (ring hash, Maglev) and latency-aware (peak EWMA) load
 * balancing algorithms.
 *
 * Pure module: no event loop, no sockets, no global state. Callers pass host
 * keys (Envoy hashes the host's address string, e.g. "10.0.0.1:8080" or
 * "[::1]:80") and weights, and get back host *indices* into the arrays they
 * passed. Tables are immutable after build and may be shared read-only
 * between threads.
 *
 * Weights: NULL means all 1; a weight of 0 is treated as 1 (Envoy's config
 * validation requires weights >= 1).
 */
#ifndef SKIFF_LB_HASH_H
#define SKIFF_LB_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* xxHash64 (XXH64) with seed 0: Envoy's HashUtil::xxHash64 and the ring hash
 * default hash function (RingHashLbConfig.hash_function XX_HASH). */
uint64_t sk_hash64(const void *data, size_t len);
uint64_t sk_hash64_seed(const void *data, size_t len, uint64_t seed);

/* ---- Ring hash (ketama), Envoy semantics ----
 *
 * scale = min(ceil(min_w * min_size) / min_w, max_size) where min_w is the
 * smallest normalized weight (weight / sum of weights); every host gets
 * scale * its normalized weight entries (running sums, so fractional counts
 * are distributed stably), entry i of a host hashing "<key>_<i>".
 * sk_ring_pick returns the host of the first entry whose hash is >= `hash`,
 * wrapping around to the first entry.
 *
 * Envoy defaults: min_size 1024, max_size 8M. min_size 0 means 1024,
 * max_size 0 means 8M; sizes are clamped to SK_RING_MAX_SIZE (Envoy's config
 * limit). If min_size > max_size, max_size wins (Envoy rejects such configs).
 *
 * Note (inherited from Envoy): with a fixed min_size the per-host entry count
 * is ceil(min_size / n), so adding a host removes the tail entries of every
 * existing host and some keys move between existing hosts (~1/8 of keys
 * going from 3 to 4 hosts). Passing min_size = n * K (a fixed K entries per
 * unit of weight) makes existing hosts' entries unchanged, and then keys
 * only ever move to the added host. */
#define SK_RING_DEFAULT_MIN_SIZE 1024u
#define SK_RING_DEFAULT_MAX_SIZE (8u * 1024u * 1024u)
#define SK_RING_MAX_SIZE (8u * 1024u * 1024u)

struct sk_ring;

/* NULL on n == 0, host_keys == NULL or a NULL key, or allocation failure. */
struct sk_ring *sk_ring_build(const char *const *host_keys, const uint32_t *weights, size_t n,
                              uint64_t min_size, uint64_t max_size);
/* Host index in [0, n), or -1 when r is NULL / empty. */
int sk_ring_pick(const struct sk_ring *r, uint64_t hash);
size_t sk_ring_size(const struct sk_ring *r);
/* Number of ring entries owned by host `idx` (stats: min/max hashes per host). */
size_t sk_ring_host_entries(const struct sk_ring *r, size_t idx);
void sk_ring_free(struct sk_ring *r);

/* ---- Maglev (Eisenbud et al., NSDI 2016), Envoy semantics ----
 *
 * Hosts are sorted by key; host j's permutation is offset = XXH64(key, 0) %
 * M, skip = XXH64(key, 1) % (M - 1) + 1. Weighted filling as in Envoy: in
 * round r a host takes a turn only if r * w_j >= (turns taken) * w_max, so
 * hosts fill slots in proportion to their weight. M must be prime (Envoy
 * rejects non-prime table sizes); 0 means the default 65537. */
#define SK_MAGLEV_DEFAULT_TABLE_SIZE 65537u
#define SK_MAGLEV_MAX_TABLE_SIZE 5000011u /* Envoy's config limit */

struct sk_maglev;

/* NULL on n == 0, NULL/empty keys, table_size not prime or > the limit, or
 * allocation failure. */
struct sk_maglev *sk_maglev_build(const char *const *host_keys, const uint32_t *weights, size_t n,
                                  uint64_t table_size);
/* Host index (table[hash % M]), or -1 when m is NULL. */
int sk_maglev_pick(const struct sk_maglev *m, uint64_t hash);
uint64_t sk_maglev_table_size(const struct sk_maglev *m);
size_t sk_maglev_host_entries(const struct sk_maglev *m, size_t idx);
void sk_maglev_free(struct sk_maglev *m);

bool sk_is_prime(uint64_t v);

/* ---- Peak EWMA (Finagle / linkerd2-proxy / tower) ----
 *
 * The estimate is an exponentially weighted moving average of request
 * latency whose memory is time based: a sample observed `elapsed` after the
 * previous update gets weight 1 - exp(-elapsed / decay). A sample above the
 * current estimate replaces it immediately (peak sensitivity). While a host
 * is idle its estimate decays toward 0 with the same time constant.
 *
 * decay_us 0 means 10 s (linkerd's default). Times are microseconds on any
 * monotonic clock; a `now` before the stamp counts as no time elapsed. */
#define SK_EWMA_DEFAULT_DECAY_US 10000000u

/* New estimate after observing `sample_us` at `now_us`; the caller stores it
 * together with now_us as the new stamp. */
uint64_t sk_ewma_update(uint64_t cur_us, int64_t last_stamp_us, uint64_t sample_us, int64_t now_us,
                        uint64_t decay_us);
/* P2C comparison cost, lower is better: the estimate decayed to now (never
 * below 1 us, so an unmeasured host is still ordered by its load) times
 * (active_rq + 1); saturates at UINT64_MAX. Negative active_rq counts as 0.
 * Does not modify anything: seed new hosts' estimate with a default RTT to
 * keep them from absorbing every request until their first response. */
uint64_t sk_ewma_cost(uint64_t ewma_us, int64_t active_rq, int64_t last_stamp_us, int64_t now_us,
                      uint64_t decay_us);

#endif
