/* ASCII case helpers, 8 bytes at a time (SWAR). */
#ifndef SKIFF_ASCII_H
#define SKIFF_ASCII_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 0x80 in each byte of x that is 'A'..'Z', 0 elsewhere (7-bit sums never
 * carry into the next byte; bytes >= 0x80 are never flagged). */
static inline uint64_t sk_ascii_upper8(uint64_t x)
{
    uint64_t lo = x & 0x7f7f7f7f7f7f7f7full;
    uint64_t ge_a = lo + 0x3f3f3f3f3f3f3f3full; /* high bit: >= 'A' (0x41) */
    uint64_t gt_z = lo + 0x2525252525252525ull; /* high bit: > 'Z' (0x5a) */
    return (ge_a ^ gt_z) & ~x & 0x8080808080808080ull;
}

/* x with each 'A'..'Z' byte lower-cased. */
static inline uint64_t sk_ascii_lower8(uint64_t x)
{
    return x | (sk_ascii_upper8(x) >> 2);
}

/* Copy n bytes of src to dst lower-cased (dst == src is fine). */
static inline void sk_ascii_lower_copy(char *dst, const char *src, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, src + i, 8);
        x = sk_ascii_lower8(x);
        memcpy(dst + i, &x, 8);
    }
    for (; i < n; i++) {
        char c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
    }
}

/* Any 'A'..'Z' in p[0..n)? */
static inline int sk_ascii_has_upper(const char *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        if (sk_ascii_upper8(x))
            return 1;
    }
    for (; i < n; i++)
        if (p[i] >= 'A' && p[i] <= 'Z')
            return 1;
    return 0;
}

#endif
