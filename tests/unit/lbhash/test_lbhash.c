/* Unit tests for src/upstream/lb_hash.c: xxHash64, ring hash, Maglev, peak
 * EWMA. Prints the measured numbers so the log documents them. */
#include "skiff/lb_hash.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define NKEYS 100000

static uint64_t rng_state = 0x853c49e6748fea9bULL;
static uint64_t rnd(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* request hashes: xxh64 of "user-<i>", as a header hash policy would give */
static uint64_t *make_keys(void)
{
    uint64_t *k = malloc(NKEYS * sizeof(*k));
    if (!k)
        abort();
    char buf[32];
    for (int i = 0; i < NKEYS; i++) {
        int l = snprintf(buf, sizeof(buf), "user-%d", i);
        k[i] = sk_hash64(buf, (size_t)l);
    }
    return k;
}

static const char *const HOSTS[] = {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080",
                                    "10.0.0.4:8080", "10.0.0.5:8080"};

/* ---- xxHash64 ---- */

static void test_xxh64(void)
{
    /* reference values from libxxhash 0.8.1 (XXH64) */
    static const struct {
        const char *s;
        uint64_t seed, h;
    } v[] = {
        {"", 0, 0xef46db3751d8e999ULL},
        {"", 1, 0xd5afba1336a3be4bULL},
        {"a", 0, 0xd24ec4f1a98c6e5bULL},
        {"a", 1, 0xdec2bc81c3cd46c6ULL},
        {"abc", 0, 0x44bc2cf5ad770999ULL},
        {"abc", 1, 0xbea9ca8199328908ULL},
        {"message digest", 0, 0x066ed728fceeb3beULL},
        {"message digest", 1, 0xcba434b6417dd0fdULL},
        {"Nobody inspects the spammish repetition", 0, 0xfbcea83c8a378bf1ULL},
        {"Nobody inspects the spammish repetition", 1, 0x43f425448d954db6ULL},
        {"10.0.0.1:80_0", 0, 0x75041381e7371a08ULL},
        {"10.0.0.1:80_0", 1, 0x0886565a2d161b779ULL},
        {"0123456789abcdef0123456789abcdef", 0, 0x642a94958e71e6c5ULL},
        {"0123456789abcdef0123456789abcdef", 1, 0x048b8b580878a4a4ULL},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint64_t h = sk_hash64_seed(v[i].s, strlen(v[i].s), v[i].seed);
        if (h != v[i].h)
            fprintf(stderr, "xxh64(\"%s\", %llu) = %016llx, want %016llx\n", v[i].s,
                    (unsigned long long)v[i].seed, (unsigned long long)h,
                    (unsigned long long)v[i].h);
        CHECK(h == v[i].h);
        if (v[i].seed == 0)
            CHECK(sk_hash64(v[i].s, strlen(v[i].s)) == v[i].h);
    }
    /* 1027 bytes: 32-byte stripes plus every tail path */
    unsigned char big[1027];
    for (size_t i = 0; i < 1024; i++)
        big[i] = (unsigned char)(i & 0xff);
    memcpy(big + 1024, "xyz", 3);
    CHECK(sk_hash64(big, sizeof(big)) == 0xe146cb31b65bc21aULL);
    CHECK(sk_hash64_seed(big, sizeof(big), 1) == 0x045e6446fcc80f3dULL);
    CHECK(sk_hash64(NULL, 0) == 0xef46db3751d8e999ULL);
    /* unaligned input gives the same result */
    unsigned char *un = malloc(sizeof(big) + 1);
    memcpy(un + 1, big, sizeof(big));
    CHECK(sk_hash64(un + 1, sizeof(big)) == 0xe146cb31b65bc21aULL);
    free(un);
    printf("xxh64: %zu vectors ok\n", sizeof(v) / sizeof(v[0]) + 2);
}

/* ---- ring hash ---- */

static void test_ring_basic(void)
{
    CHECK(sk_ring_build(HOSTS, NULL, 0, 1024, 0) == NULL);
    CHECK(sk_ring_build(NULL, NULL, 3, 1024, 0) == NULL);
    const char *bad[] = {"a", NULL};
    CHECK(sk_ring_build(bad, NULL, 2, 1024, 0) == NULL);
    const char *empty[] = {"a", ""};
    CHECK(sk_ring_build(empty, NULL, 2, 1024, 0) == NULL);
    CHECK(sk_ring_pick(NULL, 42) == -1);
    sk_ring_free(NULL);

    /* Envoy: scale = ceil(1/3 * 1024) / (1/3) = 1026, 342 per host */
    struct sk_ring *r = sk_ring_build(HOSTS, NULL, 3, 1024, 8u << 20);
    CHECK(r && sk_ring_size(r) == 1026);
    for (size_t i = 0; i < 3; i++)
        CHECK(sk_ring_host_entries(r, i) == 342);
    /* pick returns the host of the first entry >= hash, wrapping */
    CHECK(sk_ring_pick(r, 0) >= 0 && sk_ring_pick(r, UINT64_MAX) == sk_ring_pick(r, 0));
    sk_ring_free(r);

    /* weights 1:2 -> 342 and 684 entries */
    uint32_t w[] = {1, 2};
    r = sk_ring_build(HOSTS, w, 2, 1024, 0);
    CHECK(r && sk_ring_host_entries(r, 0) == 342 && sk_ring_host_entries(r, 1) == 684);
    sk_ring_free(r);

    /* max_size bounds the ring (and memory) */
    r = sk_ring_build(HOSTS, NULL, 3, 5000, 100);
    CHECK(r && sk_ring_size(r) >= 99 && sk_ring_size(r) <= 101);
    sk_ring_free(r);
    r = sk_ring_build(HOSTS, NULL, 3, UINT64_MAX, 3000);
    CHECK(r && sk_ring_size(r) <= 3001);
    sk_ring_free(r);

    /* single host takes everything; zero weight counts as 1 */
    uint32_t z[] = {0, 0};
    r = sk_ring_build(HOSTS, z, 1, 16, 0);
    CHECK(r && sk_ring_pick(r, 1) == 0 && sk_ring_pick(r, UINT64_MAX) == 0);
    sk_ring_free(r);
    r = sk_ring_build(HOSTS, z, 2, 16, 0);
    CHECK(r && sk_ring_host_entries(r, 0) == 8 && sk_ring_host_entries(r, 1) == 8);
    sk_ring_free(r);

    /* more hosts than max_size: still valid, every pick in range */
    r = sk_ring_build(HOSTS, NULL, 5, 1, 3);
    CHECK(r && sk_ring_size(r) <= 4);
    for (int i = 0; i < 1000; i++) {
        int h = sk_ring_pick(r, rnd());
        CHECK(h >= 0 && h < 5);
    }
    sk_ring_free(r);
}

static void count_picks_ring(const struct sk_ring *r, const uint64_t *keys, size_t *cnt, size_t n)
{
    memset(cnt, 0, n * sizeof(*cnt));
    for (int i = 0; i < NKEYS; i++) {
        int h = sk_ring_pick(r, keys[i]);
        if (h < 0 || (size_t)h >= n) {
            CHECK(0);
            continue;
        }
        cnt[h]++;
    }
}

static void test_ring_distribution(const uint64_t *keys)
{
    size_t cnt[5];
    struct sk_ring *r = sk_ring_build(HOSTS, NULL, 3, 1024, 0);
    CHECK(r != NULL);
    count_picks_ring(r, keys, cnt, 3);
    printf("ring 3 equal hosts (min 1024): %zu %zu %zu of %d (dev", cnt[0], cnt[1], cnt[2], NKEYS);
    for (int i = 0; i < 3; i++) {
        double dev = (double)cnt[i] / (NKEYS / 3.0) - 1.0;
        printf(" %+.1f%%", dev * 100);
        CHECK(fabs(dev) <= 0.10);
    }
    printf(")\n");
    sk_ring_free(r);

    /* 1:2 with the default ring: 342 vs 684 entries, so arc shares carry
     * roughly 1/sqrt(342) ~ 5% relative noise; a bigger ring converges */
    uint32_t w[] = {1, 2};
    r = sk_ring_build(HOSTS, w, 2, 1024, 0);
    count_picks_ring(r, keys, cnt, 2);
    double ratio = (double)cnt[1] / (double)cnt[0];
    printf("ring weights 1:2 (min 1024): %zu %zu ratio %.3f\n", cnt[0], cnt[1], ratio);
    CHECK(ratio > 1.6 && ratio < 2.4);
    sk_ring_free(r);
    r = sk_ring_build(HOSTS, w, 2, 65536, 0);
    count_picks_ring(r, keys, cnt, 2);
    ratio = (double)cnt[1] / (double)cnt[0];
    printf("ring weights 1:2 (min 65536): %zu %zu ratio %.3f\n", cnt[0], cnt[1], ratio);
    CHECK(ratio > 1.9 && ratio < 2.1);
    sk_ring_free(r);
}

struct moves {
    double stayed, to_new, among_old;
};

/* a = before (hosts 0..na-1), b = after; `added` is the host index only in
 * one of the two (or -1) */
static struct moves ring_moves(const struct sk_ring *a, const struct sk_ring *b,
                               const uint64_t *keys, int added)
{
    size_t stayed = 0, to_new = 0, among = 0;
    for (int i = 0; i < NKEYS; i++) {
        int x = sk_ring_pick(a, keys[i]), y = sk_ring_pick(b, keys[i]);
        if (x == y)
            stayed++;
        else if (y == added || x == added)
            to_new++;
        else
            among++;
    }
    struct moves m = {(double)stayed / NKEYS, (double)to_new / NKEYS, (double)among / NKEYS};
    return m;
}

static void test_ring_add_host(const uint64_t *keys)
{
    /* (a) Envoy defaults: min_size stays 1024, so per-host entries drop from
     * 342 to 256 and the tail entries of every old host disappear. */
    struct sk_ring *a = sk_ring_build(HOSTS, NULL, 3, 1024, 0);
    struct sk_ring *b = sk_ring_build(HOSTS, NULL, 4, 1024, 0);
    CHECK(a && b);
    struct moves m = ring_moves(a, b, keys, 3);
    double stay_not_new = m.stayed / (1.0 - m.to_new);
    printf("ring 3->4 hosts, fixed min_size 1024 (Envoy default): stayed %.1f%%, moved to new "
           "host %.1f%%, moved between old hosts %.1f%%; of keys not taken by the new host "
           "%.1f%% stayed\n",
           m.stayed * 100, m.to_new * 100, m.among_old * 100, stay_not_new * 100);
    /* expected: ~25% to the new host; ~1/4 of old arcs vanish -> ~1/8 of keys
     * move between old hosts (istio/istio#41814) */
    CHECK(m.to_new > 0.20 && m.to_new < 0.30);
    CHECK(m.among_old < 0.20);
    CHECK(m.stayed > 0.55);
    sk_ring_free(a);
    sk_ring_free(b);

    /* (b) fixed entries per host (min_size = n * 342): old hosts keep exactly
     * their entries, so keys move only to the new host. */
    a = sk_ring_build(HOSTS, NULL, 3, 3 * 342, 0);
    b = sk_ring_build(HOSTS, NULL, 4, 4 * 342, 0);
    CHECK(a && b && sk_ring_host_entries(b, 0) == 342 && sk_ring_host_entries(b, 3) == 342);
    m = ring_moves(a, b, keys, 3);
    stay_not_new = m.stayed / (1.0 - m.to_new);
    printf("ring 3->4 hosts, min_size = n*342: stayed %.1f%%, moved to new host %.1f%%, moved "
           "between old hosts %.3f%%; of keys not taken by the new host %.1f%% stayed\n",
           m.stayed * 100, m.to_new * 100, m.among_old * 100, stay_not_new * 100);
    CHECK(m.among_old == 0.0);
    CHECK(m.stayed > 0.70);
    CHECK(stay_not_new > 0.95);
    sk_ring_free(b);

    /* removing host 2 of 3: its keys spread, nobody else moves */
    b = sk_ring_build(HOSTS, NULL, 2, 2 * 342, 0);
    m = ring_moves(a, b, keys, 2);
    printf("ring 3->2 hosts, min_size = n*342: stayed %.1f%%, moved off removed host %.1f%%, "
           "moved between survivors %.3f%%\n",
           m.stayed * 100, m.to_new * 100, m.among_old * 100);
    CHECK(m.among_old == 0.0);
    sk_ring_free(a);
    sk_ring_free(b);
}

/* ---- Maglev ---- */

static void test_maglev_basic(void)
{
    CHECK(sk_is_prime(2) && sk_is_prime(3) && sk_is_prime(65537) && sk_is_prime(5000011));
    CHECK(!sk_is_prime(0) && !sk_is_prime(1) && !sk_is_prime(65536) && !sk_is_prime(65535));
    CHECK(!sk_is_prime(4294967297ULL)); /* 641 * 6700417 */
    CHECK(sk_maglev_build(HOSTS, NULL, 3, 65536) == NULL);
    CHECK(sk_maglev_build(HOSTS, NULL, 3, 1) == NULL);
    CHECK(sk_maglev_build(HOSTS, NULL, 3, 5000011ULL * 2 + 1) == NULL); /* over the limit */
    CHECK(sk_maglev_build(HOSTS, NULL, 0, 65537) == NULL);
    CHECK(sk_maglev_build(NULL, NULL, 3, 65537) == NULL);
    CHECK(sk_maglev_pick(NULL, 1) == -1);
    sk_maglev_free(NULL);

    struct sk_maglev *m = sk_maglev_build(HOSTS, NULL, 3, 0);
    CHECK(m && sk_maglev_table_size(m) == 65537);
    size_t tot = 0;
    for (size_t i = 0; i < 3; i++)
        tot += sk_maglev_host_entries(m, i);
    CHECK(tot == 65537);
    for (uint64_t s = 0; s < 65537; s++) {
        int h = sk_maglev_pick(m, s);
        CHECK(h >= 0 && h < 3);
    }
    sk_maglev_free(m);

    /* tiny table, more hosts than slots: still full and in range */
    m = sk_maglev_build(HOSTS, NULL, 5, 3);
    CHECK(m != NULL);
    for (uint64_t s = 0; s < 3; s++) {
        int h = sk_maglev_pick(m, s);
        CHECK(h >= 0 && h < 5);
    }
    sk_maglev_free(m);

    /* caller's host order does not change the key -> host mapping */
    const char *rev[] = {HOSTS[2], HOSTS[1], HOSTS[0]};
    struct sk_maglev *a = sk_maglev_build(HOSTS, NULL, 3, 65537);
    struct sk_maglev *b = sk_maglev_build(rev, NULL, 3, 65537);
    int same = 1;
    for (uint64_t s = 0; s < 65537; s++)
        same &= sk_maglev_pick(a, s) == 2 - sk_maglev_pick(b, s);
    CHECK(same);
    sk_maglev_free(a);
    sk_maglev_free(b);
}

static void test_maglev_distribution(const uint64_t *keys)
{
    struct sk_maglev *m = sk_maglev_build(HOSTS, NULL, 3, 65537);
    printf("maglev 3 equal hosts: slots");
    for (size_t i = 0; i < 3; i++) {
        double share = (double)sk_maglev_host_entries(m, i) / 65537.0;
        printf(" %zu (%.3f%%)", sk_maglev_host_entries(m, i), share * 100);
        CHECK(fabs(share - 1.0 / 3) <= 0.02 / 3); /* within +-2% of the fair share */
    }
    size_t cnt[3] = {0};
    for (int i = 0; i < NKEYS; i++)
        cnt[sk_maglev_pick(m, keys[i])]++;
    printf("; keys %zu %zu %zu\n", cnt[0], cnt[1], cnt[2]);
    for (int i = 0; i < 3; i++)
        CHECK(fabs((double)cnt[i] / (NKEYS / 3.0) - 1.0) <= 0.05);
    sk_maglev_free(m);

    uint32_t w[] = {1, 2, 1};
    m = sk_maglev_build(HOSTS, w, 3, 65537);
    double r = (double)sk_maglev_host_entries(m, 1) / (double)sk_maglev_host_entries(m, 0);
    printf("maglev weights 1:2:1: slots %zu %zu %zu (ratio %.3f)\n", sk_maglev_host_entries(m, 0),
           sk_maglev_host_entries(m, 1), sk_maglev_host_entries(m, 2), r);
    CHECK(r > 1.98 && r < 2.02);
    sk_maglev_free(m);
}

/* Slot-exact disruption: fraction of table slots whose host changed, split
 * into "to/from the added/removed host" and "between unchanged hosts". */
static void maglev_moves(size_t na, size_t nb, int changed, const char *what)
{
    struct sk_maglev *a = sk_maglev_build(HOSTS, NULL, na, 65537);
    struct sk_maglev *b = sk_maglev_build(HOSTS, NULL, nb, 65537);
    CHECK(a && b);
    size_t stayed = 0, to_new = 0, among = 0;
    for (uint64_t s = 0; s < 65537; s++) {
        int x = sk_maglev_pick(a, s), y = sk_maglev_pick(b, s);
        if (x == y)
            stayed++;
        else if (x == changed || y == changed)
            to_new++;
        else
            among++;
    }
    printf("maglev %s: stayed %.1f%%, to/from changed host %.1f%%, between unchanged hosts "
           "%.2f%%\n",
           what, stayed * 100.0 / 65537, to_new * 100.0 / 65537, among * 100.0 / 65537);
    CHECK(among * 100.0 / 65537 < 5.0);
    sk_maglev_free(a);
    sk_maglev_free(b);
}

/* Golden picks for "user-0".."user-39" from an independent Python model of
 * Envoy's Ring and MaglevTable builders (hashes via libxxhash 0.8.1). */
static void golden(const char *what, const char *want, int ring, const uint32_t *w, size_t n,
                   uint64_t size)
{
    struct sk_ring *r = ring ? sk_ring_build(HOSTS, w, n, size, 0) : NULL;
    struct sk_maglev *m = ring ? NULL : sk_maglev_build(HOSTS, w, n, size);
    CHECK(r || m);
    char got[41];
    for (int i = 0; i < 40; i++) {
        char buf[32];
        int l = snprintf(buf, sizeof(buf), "user-%d", i);
        uint64_t h = sk_hash64(buf, (size_t)l);
        int x = ring ? sk_ring_pick(r, h) : sk_maglev_pick(m, h);
        got[i] = (char)('0' + x);
    }
    got[40] = 0;
    if (strcmp(got, want) != 0)
        fprintf(stderr, "%s: got %s want %s\n", what, got, want);
    CHECK(strcmp(got, want) == 0);
    sk_ring_free(r);
    sk_maglev_free(m);
}

static void test_golden(void)
{
    static const uint32_t w132[] = {1, 3, 2}, w213[] = {2, 1, 3};
    golden("ring 3 equal", "0120022200122200221122210121011201202021", 1, NULL, 3, 1024);
    golden("ring 1:3:2", "2121021211122211221111210121111201201121", 1, w132, 3, 1024);
    golden("maglev 4 equal", "2103320232031222030331010322013112002103", 0, NULL, 4, 65537);
    golden("maglev 2:1:3 M=251", "2002121220220022021110202102011102012020", 0, w213, 3, 251);
    printf("golden picks vs independent model: 4 tables ok\n");
}

/* ---- Peak EWMA ---- */

static void test_ewma(void)
{
    const uint64_t D = 10000000; /* 10 s */
    /* peak: a higher sample replaces the estimate regardless of time */
    CHECK(sk_ewma_update(10000, 0, 60000, 1, D) == 60000);
    CHECK(sk_ewma_update(0, 0, 5000, 0, D) == 5000);
    /* lower sample with no time elapsed: no change */
    CHECK(sk_ewma_update(60000, 100, 10000, 100, D) == 60000);
    /* one decay period: 60000 e^-1 + 10000 (1 - e^-1) */
    double want = 60000 * exp(-1.0) + 10000 * (1 - exp(-1.0));
    uint64_t got = sk_ewma_update(60000, 0, 10000, (int64_t)D, D);
    printf("ewma: 60ms -> sample 10ms after one decay period: %llu us (want %.0f)\n",
           (unsigned long long)got, want);
    CHECK(fabs((double)got - want) <= 1.0);
    /* clock going backwards: treated as no elapsed time */
    CHECK(sk_ewma_update(60000, 1000, 10000, 0, D) == 60000);
    /* decay 0 -> default 10 s */
    CHECK(sk_ewma_update(60000, 0, 10000, (int64_t)D, 0) == got);

    /* converges to a steady lower latency: samples of 10 ms once a second */
    uint64_t e = 60000;
    int64_t stamp = 0;
    for (int t = 1; t <= 30; t++) {
        e = sk_ewma_update(e, stamp, 10000, (int64_t)t * 1000000, D);
        stamp = (int64_t)t * 1000000;
    }
    printf("ewma: 60ms then 30 x 10ms (1/s): %llu us\n", (unsigned long long)e);
    CHECK(e < 13000 && e > 10000);

    /* cost: 50 ms higher latency -> much higher cost */
    uint64_t ca = sk_ewma_cost(10000, 0, 0, 0, D);
    uint64_t cb = sk_ewma_cost(60000, 0, 0, 0, D);
    printf("ewma cost idle: 10ms host %llu, 60ms host %llu (x%.1f)\n", (unsigned long long)ca,
           (unsigned long long)cb, (double)cb / (double)ca);
    CHECK(ca == 10000 && cb == 60000);
    /* load multiplies: fast host with 4 in flight (50000) still beats slow
     * idle host, with 6 in flight (70000) it does not */
    CHECK(sk_ewma_cost(10000, 4, 0, 0, D) == 50000);
    CHECK(sk_ewma_cost(10000, 4, 0, 0, D) < cb);
    CHECK(sk_ewma_cost(10000, 6, 0, 0, D) > cb);
    /* idle decay toward 0 */
    uint64_t c1 = sk_ewma_cost(60000, 0, 0, (int64_t)D, D);
    uint64_t c10 = sk_ewma_cost(60000, 0, 0, (int64_t)D * 10, D);
    printf("ewma cost of a 60ms host idle 10s: %llu, idle 100s: %llu\n", (unsigned long long)c1,
           (unsigned long long)c10);
    CHECK(fabs((double)c1 - 60000 * exp(-1.0)) <= 1.0);
    CHECK(c10 <= 3);
    CHECK(sk_ewma_cost(60000, 0, 0, (int64_t)D * 1000, D) == 1); /* floor 1 us */
    /* unmeasured hosts are ordered by load */
    CHECK(sk_ewma_cost(0, 0, 0, 0, D) < sk_ewma_cost(0, 3, 0, 0, D));
    CHECK(sk_ewma_cost(0, -5, 0, 0, D) == 1);
    /* saturation */
    CHECK(sk_ewma_cost(UINT64_MAX, INT64_MAX, 0, 0, D) == UINT64_MAX);
    CHECK(sk_ewma_cost(UINT64_MAX / 2, 3, 0, 0, D) == UINT64_MAX);
    CHECK(sk_ewma_update(UINT64_MAX, 0, 1, INT64_MAX, D) < UINT64_MAX);
    CHECK(sk_ewma_update(UINT64_MAX, INT64_MIN, 0, INT64_MAX, D) == 0);
}

/* P2C with peak EWMA against one host that is 50 ms slower: 1 ms ticks,
 * 200 req/s Poisson-ish arrivals, latencies fixed per host. */
static void test_ewma_p2c_sim(void)
{
    enum { N = 5, TICKS = 60000 };
    const uint64_t D = 10000000;
    uint64_t lat_us[N] = {10000, 10000, 10000, 10000, 60000};
    uint64_t ewma[N] = {0};
    int64_t stamp[N] = {0};
    int64_t active[N] = {0};
    size_t picked[N] = {0};
    /* in-flight completions: ring of (finish_tick, host) */
    enum { MAXQ = 1 << 14 };
    static int64_t fin[MAXQ];
    static int fhost[MAXQ];
    size_t nq = 0, total = 0;
    for (int64_t t = 0; t < TICKS; t++) {
        int64_t now = t * 1000;
        /* complete finished requests */
        for (size_t q = 0; q < nq;) {
            if (fin[q] <= t) {
                int h = fhost[q];
                ewma[h] = sk_ewma_update(ewma[h], stamp[h], lat_us[h], now, D);
                stamp[h] = now;
                active[h]--;
                fin[q] = fin[nq - 1];
                fhost[q] = fhost[nq - 1];
                nq--;
            } else {
                q++;
            }
        }
        if (rnd() % 5 != 0) /* 200 req/s */
            continue;
        int a = (int)(rnd() % N), b = (int)(rnd() % (N - 1));
        if (b >= a)
            b++;
        uint64_t ca = sk_ewma_cost(ewma[a], active[a], stamp[a], now, D);
        uint64_t cb = sk_ewma_cost(ewma[b], active[b], stamp[b], now, D);
        int h = cb < ca ? b : a;
        picked[h]++;
        total++;
        active[h]++;
        if (nq < MAXQ) {
            fin[nq] = t + (int64_t)(lat_us[h] / 1000);
            fhost[nq++] = h;
        }
    }
    double slow = (double)picked[N - 1] / (double)total;
    printf("p2c peak-ewma sim: %zu requests, slow (60ms) host got %.2f%% (fair share 20%%)\n",
           total, slow * 100);
    CHECK(slow < 0.05);
}

int main(void)
{
    uint64_t *keys = make_keys();
    test_xxh64();
    test_ring_basic();
    test_ring_distribution(keys);
    test_ring_add_host(keys);
    test_maglev_basic();
    test_maglev_distribution(keys);
    test_golden();
    maglev_moves(3, 4, 3, "3->4 hosts");
    maglev_moves(4, 3, 3, "4->3 hosts");
    maglev_moves(4, 5, 4, "4->5 hosts");
    test_ewma();
    test_ewma_p2c_sim();
    free(keys);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all lb_hash tests passed\n");
    return 0;
}
