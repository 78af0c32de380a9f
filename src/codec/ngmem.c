/* Counted, capped allocator for nghttp2 sessions (see ngmem.h). */
#include "skiff/ngmem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mem_hdr {
    size_t n;
    size_t pad; /* keep 16-byte alignment */
};

/* Per-thread free lists for small blocks, by 64-byte size class. nghttp2
 * allocates ~6 small objects per stream (stream, header buffers, outbound
 * items) and frees them when the stream closes; with hundreds of streams in
 * flight glibc's tcache (7 per size) misses and every one goes through
 * _int_malloc/_int_free. A class's blocks are always allocated at the class
 * size, so any request of that class fits. Bounded in bytes per thread: up to
 * CACHE_BYTES_MAX, or beyond while cached + in use stays within the peak in
 * use (streams finish in bursts as large as the concurrency: a smaller cache
 * sends the rest of a burst through free and back through malloc), until
 * sk_ngmem_thread_trim. A session's accounting (used/cap) still counts the
 * requested bytes. */
#define SMALL_MAX 512
#define CLASS_SZ 64
#define NCLASS (SMALL_MAX / CLASS_SZ)
#define CACHE_BYTES_MAX (256 * 1024) /* per thread: streams come and go in bursts */
struct free_blk {
    struct free_blk *next;
};
static __thread struct free_blk *free_list[NCLASS];
static __thread size_t free_bytes;
static __thread size_t small_out;  /* small blocks handed out (class sizes) */
static __thread size_t small_peak; /* highest small_out since the last trim */

static inline unsigned size_class(size_t n)
{
    return n ? (unsigned)((n - 1) / CLASS_SZ) : 0; /* n <= SMALL_MAX: 0 .. NCLASS-1 */
}

static void *ng_malloc(size_t n, void *ud)
{
    struct sk_ngmem *m = ud;
    if (n > m->cap || m->used + n > m->cap)
        return NULL;
    struct mem_hdr *h;
    if (n <= SMALL_MAX) {
        unsigned k = size_class(n);
        size_t sz = (size_t)(k + 1) * CLASS_SZ;
        struct free_blk *f = free_list[k];
        if (f) {
            free_list[k] = f->next;
            free_bytes -= sz;
            h = (struct mem_hdr *)f;
        } else {
            h = malloc(sizeof(*h) + sz);
            if (!h)
                return NULL;
        }
        small_out += sz;
        if (small_out > small_peak)
            small_peak = small_out;
    } else {
        h = malloc(sizeof(*h) + n);
    }
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
    size_t n = h->n;
    m->used -= n;
    if (n <= SMALL_MAX) {
        unsigned k = size_class(n);
        size_t sz = (size_t)(k + 1) * CLASS_SZ;
        small_out = small_out >= sz ? small_out - sz : 0; /* (a block of another thread) */
        if (free_bytes + sz <= CACHE_BYTES_MAX || free_bytes + sz + small_out <= small_peak) {
            struct free_blk *f = (struct free_blk *)h;
            f->next = free_list[k];
            free_list[k] = f;
            free_bytes += sz;
            return;
        }
    }
    free(h);
}

void sk_ngmem_thread_trim(void)
{
    for (unsigned k = NCLASS; k-- > 0 && free_bytes > CACHE_BYTES_MAX;) {
        while (free_list[k] && free_bytes > CACHE_BYTES_MAX) {
            struct free_blk *f = free_list[k];
            free_list[k] = f->next;
            free_bytes -= (size_t)(k + 1) * CLASS_SZ;
            free(f);
        }
    }
    small_peak = small_out;
}

void sk_ngmem_thread_cache_free(void)
{
    for (unsigned k = 0; k < NCLASS; k++) {
        while (free_list[k]) {
            struct free_blk *f = free_list[k];
            free_list[k] = f->next;
            free(f);
        }
    }
    free_bytes = 0;
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
    if (n <= SMALL_MAX || old <= SMALL_MAX) {
        /* a small block's real size is its class's: move it (nghttp2
         * reallocates only its rare growing buffers) */
        m->used -= old; /* the cap applies to the new size only, as for realloc */
        void *q = ng_malloc(n, ud);
        m->used += old;
        if (!q)
            return NULL;
        memcpy(q, p, old < n ? old : n);
        ng_free(p, ud);
        return q;
    }
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
