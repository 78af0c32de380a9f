/* Consistent-hashing and peak-EWMA load balancing algorithms (see
 * include/skiff/lb_hash.h). Floating-point steps mirror Envoy's
 * (RingHashLoadBalancer::Ring, MaglevTable) so that the same host keys and
 * weights build the same tables. */
#include "skiff/lb_hash.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- xxHash64 ---- */

#define P64_1 0x9E3779B185EBCA87ULL
#define P64_2 0xC2B2AE3D27D4EB4FULL
#define P64_3 0x165667B19E3779F9ULL
#define P64_4 0x85EBCA77C2B2AE63ULL
#define P64_5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t rd64(const unsigned char *p)
{
    /* little-endian read independent of host byte order */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static inline uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t input)
{
    acc += input * P64_2;
    acc = rotl64(acc, 31);
    return acc * P64_1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t val)
{
    acc ^= xxh_round(0, val);
    return acc * P64_1 + P64_4;
}

uint64_t sk_hash64_seed(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    const unsigned char *end = p + len;
    uint64_t h;
    if (!p)
        p = end = (const unsigned char *)"";
    if (len >= 32) {
        const unsigned char *limit = end - 32;
        uint64_t v1 = seed + P64_1 + P64_2;
        uint64_t v2 = seed + P64_2;
        uint64_t v3 = seed;
        uint64_t v4 = seed - P64_1;
        do {
            v1 = xxh_round(v1, rd64(p));
            v2 = xxh_round(v2, rd64(p + 8));
            v3 = xxh_round(v3, rd64(p + 16));
            v4 = xxh_round(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + P64_5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xxh_round(0, rd64(p));
        h = rotl64(h, 27) * P64_1 + P64_4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * P64_1;
        h = rotl64(h, 23) * P64_2 + P64_3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)*p * P64_5;
        h = rotl64(h, 11) * P64_1;
        p++;
    }
    h ^= h >> 33;
    h *= P64_2;
    h ^= h >> 29;
    h *= P64_3;
    h ^= h >> 32;
    return h;
}

uint64_t sk_hash64(const void *data, size_t len)
{
    return sk_hash64_seed(data, len, 0);
}

/* ---- shared helpers ---- */

static inline uint32_t eff_weight(const uint32_t *weights, size_t i)
{
    return weights && weights[i] ? weights[i] : 1;
}

static bool keys_ok(const char *const *host_keys, size_t n)
{
    if (!host_keys || n == 0 || n > (size_t)INT_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!host_keys[i] || !host_keys[i][0])
            return false;
    return true;
}

/* ---- Ring hash ---- */

struct ring_entry {
    uint64_t hash;
    uint32_t host;
};

struct sk_ring {
    struct ring_entry *e;
    size_t size;
    size_t nhosts;
    size_t *per_host; /* entries per host, for stats */
};

static int ring_entry_cmp(const void *a, const void *b)
{
    const struct ring_entry *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    /* Envoy's std::sort leaves ties unspecified; ours are deterministic */
    return x->host < y->host ? -1 : x->host > y->host;
}

struct sk_ring *sk_ring_build(const char *const *host_keys, const uint32_t *weights, size_t n,
                              uint64_t min_size, uint64_t max_size)
{
    if (!keys_ok(host_keys, n))
        return NULL;
    if (min_size == 0)
        min_size = SK_RING_DEFAULT_MIN_SIZE;
    if (max_size == 0)
        max_size = SK_RING_DEFAULT_MAX_SIZE;
    if (min_size > SK_RING_MAX_SIZE)
        min_size = SK_RING_MAX_SIZE;
    if (max_size > SK_RING_MAX_SIZE)
        max_size = SK_RING_MAX_SIZE;

    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += eff_weight(weights, i);
    double min_w = 1.0;
    for (size_t i = 0; i < n; i++) {
        double w = (double)eff_weight(weights, i) / (double)sum;
        if (w < min_w)
            min_w = w;
    }
    double scale = fmin(ceil(min_w * (double)min_size) / min_w, (double)max_size);
    double ring_sz = ceil(scale);
    if (!(ring_sz >= 1.0))
        return NULL;
    /* running sums may round one entry past ceil(scale); never past cap */
    size_t cap = (size_t)ring_sz + 1;

    struct sk_ring *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->nhosts = n;
    r->e = malloc(cap * sizeof(*r->e));
    r->per_host = calloc(n, sizeof(*r->per_host));
    size_t maxkey = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(host_keys[i]);
        if (l > maxkey)
            maxkey = l;
    }
    char *buf = malloc(maxkey + 24); /* key + '_' + up to 20 digits + NUL */
    if (!r->e || !r->per_host || !buf) {
        free(buf);
        sk_ring_free(r);
        return NULL;
    }

    double current = 0.0, target = 0.0;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(host_keys[i]);
        memcpy(buf, host_keys[i], kl);
        buf[kl] = '_';
        target += scale * ((double)eff_weight(weights, i) / (double)sum);
        uint64_t k = 0;
        while (current < target && used < cap) {
            /* decimal k, as absl::StrCat */
            char digits[24];
            size_t nd = 0;
            uint64_t v = k;
            do {
                digits[nd++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            for (size_t d = 0; d < nd; d++)
                buf[kl + 1 + d] = digits[nd - 1 - d];
            r->e[used].hash = sk_hash64(buf, kl + 1 + nd);
            r->e[used].host = (uint32_t)i;
            used++;
            k++;
            current += 1.0;
        }
        r->per_host[i] = (size_t)k;
    }
    free(buf);
    if (used == 0) {
        sk_ring_free(r);
        return NULL;
    }
    r->size = used;
    qsort(r->e, used, sizeof(*r->e), ring_entry_cmp);
    return r;
}

int sk_ring_pick(const struct sk_ring *r, uint64_t hash)
{
    if (!r || r->size == 0)
        return -1;
    /* first entry with entry.hash >= hash, wrapping to the first entry */
    size_t lo = 0, hi = r->size;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->e[mid].hash < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == r->size)
        lo = 0;
    return (int)r->e[lo].host;
}

size_t sk_ring_size(const struct sk_ring *r)
{
    return r ? r->size : 0;
}

size_t sk_ring_host_entries(const struct sk_ring *r, size_t idx)
{
    return r && idx < r->nhosts ? r->per_host[idx] : 0;
}

void sk_ring_free(struct sk_ring *r)
{
    if (!r)
        return;
    free(r->e);
    free(r->per_host);
    free(r);
}

/* ---- Maglev ---- */

bool sk_is_prime(uint64_t v)
{
    if (v < 2)
        return false;
    if (v < 4)
        return true;
    if (v % 2 == 0 || v % 3 == 0)
        return false;
    for (uint64_t d = 5; d <= v / d; d += 6)
        if (v % d == 0 || v % (d + 2) == 0)
            return false;
    return true;
}

struct maglev_build {
    const char *key;
    uint32_t host;
    uint64_t offset, skip, next;
    double weight, target;
};

static int maglev_build_cmp(const void *a, const void *b)
{
    const struct maglev_build *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c)
        return c;
    return x->host < y->host ? -1 : x->host > y->host;
}

struct sk_maglev {
    uint32_t *table;
    uint64_t size;
    size_t nhosts;
    size_t *per_host;
};

struct sk_maglev *sk_maglev_build(const char *const *host_keys, const uint32_t *weights, size_t n,
                                  uint64_t table_size)
{
    if (!keys_ok(host_keys, n))
        return NULL;
    if (table_size == 0)
        table_size = SK_MAGLEV_DEFAULT_TABLE_SIZE;
    if (table_size > SK_MAGLEV_MAX_TABLE_SIZE || !sk_is_prime(table_size))
        return NULL;
    const uint64_t M = table_size;

    struct sk_maglev *m = calloc(1, sizeof(*m));
    struct maglev_build *b = calloc(n, sizeof(*b));
    if (!m || !b) {
        free(m);
        free(b);
        return NULL;
    }
    m->size = M;
    m->nhosts = n;
    m->table = malloc(M * sizeof(*m->table));
    m->per_host = calloc(n, sizeof(*m->per_host));
    if (!m->table || !m->per_host) {
        free(b);
        sk_maglev_free(m);
        return NULL;
    }

    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += eff_weight(weights, i);
    double max_w = 0.0;
    for (size_t i = 0; i < n; i++) {
        b[i].key = host_keys[i];
        b[i].host = (uint32_t)i;
        b[i].weight = (double)eff_weight(weights, i) / (double)sum;
        if (b[i].weight > max_w)
            max_w = b[i].weight;
    }
    /* fill order must not depend on the caller's host order */
    qsort(b, n, sizeof(*b), maglev_build_cmp);
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(b[i].key);
        b[i].offset = sk_hash64_seed(b[i].key, kl, 0) % M;
        b[i].skip = sk_hash64_seed(b[i].key, kl, 1) % (M - 1) + 1;
    }

    const uint32_t EMPTY = UINT32_MAX;
    for (uint64_t s = 0; s < M; s++)
        m->table[s] = EMPTY;
    uint64_t filled = 0;
    /* The max-weight host takes a turn every round, so at most M rounds; each
     * permutation visits every slot (M prime, 1 <= skip < M), so each probe
     * loop ends within M steps. */
    for (uint32_t iteration = 1; filled < M; iteration++) {
        for (size_t i = 0; i < n && filled < M; i++) {
            struct maglev_build *e = &b[i];
            if ((double)iteration * e->weight < e->target)
                continue;
            e->target += max_w;
            uint64_t c = (e->offset + e->skip * (e->next % M)) % M;
            while (m->table[c] != EMPTY) {
                e->next++;
                c = (e->offset + e->skip * (e->next % M)) % M;
            }
            m->table[c] = e->host;
            m->per_host[e->host]++;
            e->next++;
            filled++;
        }
    }
    free(b);
    return m;
}

int sk_maglev_pick(const struct sk_maglev *m, uint64_t hash)
{
    if (!m || !m->table)
        return -1;
    return (int)m->table[hash % m->size];
}

uint64_t sk_maglev_table_size(const struct sk_maglev *m)
{
    return m ? m->size : 0;
}

size_t sk_maglev_host_entries(const struct sk_maglev *m, size_t idx)
{
    return m && idx < m->nhosts ? m->per_host[idx] : 0;
}

void sk_maglev_free(struct sk_maglev *m)
{
    if (!m)
        return;
    free(m->table);
    free(m->per_host);
    free(m);
}

/* ---- Peak EWMA ---- */

static double decay_factor(int64_t last_stamp_us, int64_t now_us, uint64_t decay_us)
{
    if (decay_us == 0)
        decay_us = SK_EWMA_DEFAULT_DECAY_US;
    if (now_us <= last_stamp_us)
        return 1.0;
    /* difference computed in unsigned to avoid signed overflow */
    double elapsed = (double)((uint64_t)now_us - (uint64_t)last_stamp_us);
    return exp(-elapsed / (double)decay_us);
}

static uint64_t to_u64(double v)
{
    /* round to nearest; NaN and negatives give 0, >= 2^64 saturates */
    if (!(v > 0.0))
        return 0;
    v += 0.5;
    if (v >= 18446744073709551616.0)
        return UINT64_MAX;
    return (uint64_t)v;
}

uint64_t sk_ewma_update(uint64_t cur_us, int64_t last_stamp_us, uint64_t sample_us, int64_t now_us,
                        uint64_t decay_us)
{
    if (sample_us > cur_us)
        return sample_us; /* peak: jump up immediately */
    double w = decay_factor(last_stamp_us, now_us, decay_us);
    return to_u64((double)cur_us * w + (double)sample_us * (1.0 - w));
}

uint64_t sk_ewma_cost(uint64_t ewma_us, int64_t active_rq, int64_t last_stamp_us, int64_t now_us,
                      uint64_t decay_us)
{
    double est = (double)ewma_us * decay_factor(last_stamp_us, now_us, decay_us);
    if (est < 1.0)
        est = 1.0;
    double load = active_rq > 0 ? (double)active_rq + 1.0 : 1.0;
    return to_u64(est * load);
}
