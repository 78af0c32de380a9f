/* Bump region over anonymous mappings for transient protobuf-c trees
 * (include/skiff/pbregion.h). */
#include "skiff/pbregion.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define SK_PBREGION_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SK_PBREGION_MALLOC 1
#endif
#endif

/* At the start of every mapping (or malloc'd block): keeps what follows
 * 16-byte aligned. */
struct sk_pbregion_chunk {
    struct sk_pbregion_chunk *next;
    size_t size; /* of the mapping, header included */
};
_Static_assert(sizeof(struct sk_pbregion_chunk) % 16 == 0, "chunk header keeps 16-byte alignment");

#define HDR sizeof(struct sk_pbregion_chunk)

static void *pa_alloc(void *data, size_t n)
{
    return sk_pbregion_alloc(data, n);
}

static void pa_free(void *data, void *p)
{
    (void)data;
    (void)p; /* released with the region */
}

void sk_pbregion_init(struct sk_pbregion *r)
{
    memset(r, 0, sizeof(*r));
    r->pa.alloc = pa_alloc;
    r->pa.free = pa_free;
    r->pa.allocator_data = r;
}

#ifdef SK_PBREGION_MALLOC

void *sk_pbregion_alloc(struct sk_pbregion *r, size_t n)
{
    if (n > SIZE_MAX - HDR)
        return NULL;
    struct sk_pbregion_chunk *c = malloc(HDR + n);
    if (!c)
        return NULL;
    c->next = r->chunks;
    c->size = HDR + n;
    r->chunks = c;
    r->used += n;
    return c + 1;
}

void sk_pbregion_release(struct sk_pbregion *r)
{
    for (struct sk_pbregion_chunk *c = r->chunks, *nx; c; c = nx) {
        nx = c->next;
        free(c);
    }
    sk_pbregion_init(r);
}

void sk_pbregion_reset(struct sk_pbregion *r)
{
    sk_pbregion_release(r);
}

#else

static struct sk_pbregion_chunk *map_chunk(struct sk_pbregion *r, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    struct sk_pbregion_chunk *c = p;
    c->next = r->chunks;
    c->size = size;
    r->chunks = c;
    r->mapped += size;
    return c;
}

void *sk_pbregion_alloc(struct sk_pbregion *r, size_t n)
{
    if (n > SIZE_MAX - 4096 - HDR)
        return NULL;
    size_t need = (n + 15) & ~(size_t)15;
    if (r->cur && (size_t)(r->end - r->cur) >= need) {
        void *p = r->cur;
        r->cur += need;
        r->used += need;
        return p;
    }
    if (need > SK_PBREGION_CHUNK / 4) { /* its own mapping; the current chunk stays */
        struct sk_pbregion_chunk *c = map_chunk(r, (HDR + need + 4095) & ~(size_t)4095);
        if (!c)
            return NULL;
        r->used += need;
        return c + 1;
    }
    struct sk_pbregion_chunk *c = map_chunk(r, SK_PBREGION_CHUNK);
    if (!c)
        return NULL;
    r->cur = (unsigned char *)(c + 1) + need;
    r->end = (unsigned char *)c + SK_PBREGION_CHUNK;
    r->used += need;
    return c + 1;
}

void sk_pbregion_release(struct sk_pbregion *r)
{
    for (struct sk_pbregion_chunk *c = r->chunks, *nx; c; c = nx) {
        nx = c->next;
        munmap(c, c->size);
    }
    sk_pbregion_init(r);
}

void sk_pbregion_reset(struct sk_pbregion *r)
{
    struct sk_pbregion_chunk *keep =
        r->end ? (struct sk_pbregion_chunk *)(r->end - SK_PBREGION_CHUNK) : NULL;
    size_t mapped = 0;
    for (struct sk_pbregion_chunk *c = r->chunks, *nx; c; c = nx) {
        nx = c->next;
        if (c == keep)
            continue;
        mapped += c->size;
        munmap(c, c->size);
    }
    r->chunks = keep;
    r->mapped -= mapped;
    r->used = 0;
    if (keep) {
        keep->next = NULL;
        r->cur = (unsigned char *)(keep + 1);
    }
}

#endif
