#include "skiff/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct sk_arena_block {
    struct sk_arena_block *next;
    size_t size;
    size_t used;
    _Alignas(16) unsigned char mem[];
};

void sk_arena_init(struct sk_arena *a, size_t block_size)
{
    a->head = NULL;
    a->block_size = block_size ? block_size : 4096;
    a->total = 0;
}

void *sk_arena_alloc_nz(struct sk_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0)
        n = 16;
    struct sk_arena_block *b = a->head;
    if (!b || b->size - b->used < n) {
        /* big allocations get a block of their own so they do not waste the
         * rest of an ordinary block */
        size_t sz = n > a->block_size / 2 ? n : a->block_size;
        b = malloc(sizeof(*b) + sz);
        if (!b)
            return NULL;
        b->size = sz;
        b->used = 0;
        if (sz == n && a->head) {
            /* keep the partially used head block current */
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b->next = a->head;
            a->head = b;
        }
    }
    void *p = b->mem + b->used;
    b->used += n;
    a->total += n;
    return p;
}

void *sk_arena_alloc(struct sk_arena *a, size_t n)
{
    void *p = sk_arena_alloc_nz(a, n);
    if (p)
        memset(p, 0, n);
    return p;
}

char *sk_arena_strndup(struct sk_arena *a, const char *s, size_t n)
{
    char *p = sk_arena_alloc_nz(a, n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

char *sk_arena_strdup(struct sk_arena *a, const char *s)
{
    return s ? sk_arena_strndup(a, s, strlen(s)) : NULL;
}

void sk_arena_free(struct sk_arena *a)
{
    struct sk_arena_block *b = a->head;
    while (b) {
        struct sk_arena_block *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
    a->total = 0;
}

void sk_arena_reset(struct sk_arena *a)
{
    struct sk_arena_block *keep = NULL, *b = a->head;
    while (b) {
        struct sk_arena_block *n = b->next;
        if (!keep && b->size == a->block_size)
            keep = b;
        else
            free(b);
        b = n;
    }
    if (keep) {
        keep->next = NULL;
        keep->used = 0;
    }
    a->head = keep;
    a->total = 0;
}
