/* nghttp2 allocator that counts a session's memory and refuses allocations
 * past a cap (one per connection), so a peer cannot make one session grow
 * without bound. Shared by the HTTP/2 server and client. */
#ifndef SKIFF_NGMEM_H
#define SKIFF_NGMEM_H

#include <nghttp2/nghttp2.h>
#include <stddef.h>

struct sk_ngmem {
    size_t used; /* bytes nghttp2 holds now */
    size_t cap;  /* refuse allocations beyond this */
};

/* Fill *out with allocator callbacks that account into *m (which must
 * outlive the session). */
void sk_ngmem_init(nghttp2_mem *out, struct sk_ngmem *m);
/* Bring the calling thread's cache of small blocks back to its base size
 * (it may grow up to the peak in use; call when the thread's streams are
 * done). */
void sk_ngmem_thread_trim(void);
/* Free the calling thread's cached small blocks (thread exit). */
void sk_ngmem_thread_cache_free(void);

#endif
