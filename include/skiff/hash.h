/* FNV-1a 64: the one hash for names and bytes (indexes, resource identity,
 * Envoy's version gauge). Not for anything an attacker must not collide. */
#ifndef SKIFF_HASH_H
#define SKIFF_HASH_H

#include <stddef.h>
#include <stdint.h>

#define SK_FNV_OFFSET 1469598103934665603ull
#define SK_FNV_PRIME 1099511628211ull

static inline uint64_t sk_fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = SK_FNV_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * SK_FNV_PRIME;
    return h;
}

static inline uint64_t sk_fnv1a_str(const char *s)
{
    uint64_t h = SK_FNV_OFFSET;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * SK_FNV_PRIME;
    return h;
}

#endif
