/* Counted, capped allocator for nghttp2 sessions (see ngmem.h). */
#include "skiff/ngmem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mem_hdr {
    size_t n;
    size_t pad; /* keep 16-byte alignment */
};

static void *ng_malloc(size_t n, void *ud)
{
    struct sk_ngmem *m = ud;
    if (n > m->cap || m->used + n > m->cap)
        return NULL;
    struct mem_hdr *h = malloc(sizeof(*h) + n);
    if (!h)
        return NULL;
    h->n = n;
    m->used += n;
    return h + 1;
}

static void ng_free(void *p, void *ud)
{
    if (!p)
        return;
    struct sk_ngmem *m = ud;
    struct mem_hdr *h = (struct mem_hdr *)p - 1;
    m->used -= h->n;
    free(h);
}

static void *ng_calloc(size_t nm, size_t sz, void *ud)
{
    if (sz && nm > SIZE_MAX / sz)
        return NULL;
    void *p = ng_malloc(nm * sz, ud);
    if (p)
        memset(p, 0, nm * sz);
    return p;
}

static void *ng_realloc(void *p, size_t n, void *ud)
{
    struct sk_ngmem *m = ud;
    if (!p)
        return ng_malloc(n, ud);
    struct mem_hdr *h = (struct mem_hdr *)p - 1;
    size_t old = h->n;
    if (n > old && m->used + (n - old) > m->cap)
        return NULL;
    struct mem_hdr *nh = realloc(h, sizeof(*nh) + n);
    if (!nh)
        return NULL;
    nh->n = n;
    m->used = m->used - old + n;
    return nh + 1;
}

void sk_ngmem_init(nghttp2_mem *out, struct sk_ngmem *m)
{
    out->mem_user_data = m;
    out->malloc = ng_malloc;
    out->free = ng_free;
    out->calloc = ng_calloc;
    out->realloc = ng_realloc;
}
