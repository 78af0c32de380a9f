/* Arena allocator: many small allocations freed together. Not thread-safe;
 * an arena belongs to one owner (a config snapshot, a connection, a stream). */
#ifndef SKIFF_ARENA_H
#define SKIFF_ARENA_H

#include <stddef.h>

struct sk_arena_block;
struct sk_arena {
    struct sk_arena_block *head;
    size_t block_size; /* size of ordinary blocks */
    size_t total;      /* bytes handed out, for stats */
};

void sk_arena_init(struct sk_arena *a, size_t block_size);
/* Returns zeroed memory aligned to 16, or NULL on allocation failure. */
void *sk_arena_alloc(struct sk_arena *a, size_t n);
/* The same without zeroing, for callers that write every byte they use. */
void *sk_arena_alloc_nz(struct sk_arena *a, size_t n);
char *sk_arena_strndup(struct sk_arena *a, const char *s, size_t n);
char *sk_arena_strdup(struct sk_arena *a, const char *s); /* NULL in -> NULL out */
void sk_arena_free(struct sk_arena *a);                   /* frees all blocks; reusable after */
/* Forget all allocations but keep one ordinary block for reuse (pooled owners). */
void sk_arena_reset(struct sk_arena *a);

#endif
