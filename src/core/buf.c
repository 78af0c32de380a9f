#include "skiff/buf.h"
#include "skiff/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Per-thread cache of the two buffer sizes every request allocates (1 KiB
 * heads, 16 KiB reads): keep-alive traffic frees a connection's buffers when
 * it goes idle (idle connections hold no memory) and takes them back on the
 * next request without going through malloc. Bounded per thread. */
#define CACHE_MAX 64
#define CACHE_SMALL_MAX 256 /* 256 KiB: h2 multiplexing keeps hundreds of heads in flight */
static __thread void *cache_small[CACHE_SMALL_MAX], *cache_big[CACHE_MAX];
static __thread unsigned ncache_small, ncache_big;

static void *buf_alloc(size_t sz)
{
    if (sz == 1024 && ncache_small)
        return cache_small[--ncache_small];
    if (sz == 16384 && ncache_big)
        return cache_big[--ncache_big];
    return malloc(sz);
}

static void buf_release(void *p, size_t sz)
{
    if (!p)
        return;
    if (sz == 1024 && ncache_small < CACHE_SMALL_MAX) {
        cache_small[ncache_small++] = p;
        return;
    }
    if (sz == 16384 && ncache_big < CACHE_MAX) {
        cache_big[ncache_big++] = p;
        return;
    }
    free(p);
}

void sk_buf_thread_cache_free(void)
{
    while (ncache_small)
        free(cache_small[--ncache_small]);
    while (ncache_big)
        free(cache_big[--ncache_big]);
}

void sk_buf_init(struct sk_buf *b, size_t cap)
{
    memset(b, 0, sizeof(*b));
    b->cap = cap;
}

void sk_buf_free(struct sk_buf *b)
{
    buf_release(b->data, b->size);
    b->data = NULL;
    b->off = b->len = b->size = 0;
}

size_t sk_buf_room(const struct sk_buf *b)
{
    size_t used = sk_buf_used(b);
    return used >= b->cap ? 0 : b->cap - used;
}

char *sk_buf_wptr(struct sk_buf *b, size_t want, size_t *avail)
{
    if (want == 0)
        want = 1;
    if (b->size - b->len >= want) {
        *avail = b->size - b->len;
        return b->data + b->len;
    }
    size_t used = sk_buf_used(b);
    /* compact first: cheaper than growing, and keeps memory bounded */
    if (b->off > 0 && b->size - used >= want) {
        memmove(b->data, b->data + b->off, used);
        b->off = 0;
        b->len = used;
        *avail = b->size - b->len;
        return b->data + b->len;
    }
    if (used >= b->cap)
        return NULL;
    size_t need = used + want;
    if (need > b->cap)
        need = b->cap;
    size_t nsz = b->size ? b->size : 1024;
    while (nsz < need)
        nsz *= 2;
    if (nsz > b->cap)
        nsz = b->cap;
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, used);
        b->off = 0;
        b->len = used;
    }
    if (nsz > b->size) {
        char *d;
        if (!b->data) {
            d = buf_alloc(nsz);
        } else if (b->size == 1024 || b->size == 16384) {
            /* grow out of a cached size class: copy, give the old one back */
            d = malloc(nsz);
            if (d) {
                memcpy(d, b->data, b->len);
                buf_release(b->data, b->size);
            }
        } else {
            d = realloc(b->data, nsz);
        }
        if (!d)
            return NULL;
        b->data = d;
        b->size = nsz;
    }
    if (b->size == b->len)
        return NULL;
    *avail = b->size - b->len;
    return b->data + b->len;
}

void sk_buf_commit(struct sk_buf *b, size_t n)
{
    b->len += n;
}

void sk_buf_consume(struct sk_buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

int sk_buf_append_slow(struct sk_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (sk_buf_used(b) + n > b->cap)
        return SK_ERR_TOO_LARGE;
    size_t avail;
    char *w = sk_buf_wptr(b, n, &avail);
    if (!w || avail < n)
        return SK_ERR_NOMEM;
    memcpy(w, p, n);
    b->len += n;
    return 0;
}

int sk_buf_appendf(struct sk_buf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return SK_ERR_INVAL;
    if ((size_t)n < sizeof(tmp))
        return sk_buf_append(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return SK_ERR_NOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int r = sk_buf_append(b, big, (size_t)n);
    free(big);
    return r;
}

void sk_buf_shrink(struct sk_buf *b)
{
    if (sk_buf_used(b) == 0 && b->data) {
        buf_release(b->data, b->size);
        b->data = NULL;
        b->off = b->len = b->size = 0;
    }
}

ssize_t sk_buf_read_fd(struct sk_buf *b, int fd, size_t max)
{
    size_t avail;
    size_t want = max ? max : 16384;
    if (want > sk_buf_room(b))
        want = sk_buf_room(b);
    if (want == 0)
        return SK_ERR_TOO_LARGE;
    char *w = sk_buf_wptr(b, want, &avail);
    if (!w)
        return SK_ERR_TOO_LARGE;
    if (avail > want)
        avail = want;
    ssize_t r;
    /* recv(2), not read(2): the socket path skips the VFS layer (fdget_pos,
     * vfs_read, sock_read_iter), measurably cheaper per call; a non-socket fd
     * (never on the data path) falls back to read(2) */
    do {
        r = recv(fd, w, avail, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno == ENOTSOCK) {
        do {
            r = read(fd, w, avail);
        } while (r < 0 && errno == EINTR);
    }
    if (r < 0) {
        if (b->len == 0)
            sk_buf_shrink(b);
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? SK_ERR_AGAIN : SK_ERR_IO;
    }
    b->len += (size_t)r;
    return r;
}

ssize_t sk_buf_write_fd(struct sk_buf *b, int fd)
{
    size_t n = sk_buf_used(b);
    if (n == 0)
        return 0;
    ssize_t r;
    do {
        r = send(fd, sk_buf_rptr(b), n, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? SK_ERR_AGAIN : SK_ERR_IO;
    sk_buf_consume(b, (size_t)r);
    return r;
}

size_t sk_fmt_u64(char *out, unsigned long long v)
{
    /* two digits per division (status codes, lengths, ports: short numbers) */
    static const char d2[] = "000102030405060708091011121314151617181920212223242526272829"
                             "303132333435363738394041424344454647484950515253545556575859"
                             "606162636465666768697071727374757677787980818283848586878889"
                             "90919293949596979899";
    char tmp[24];
    size_t n = sizeof(tmp);
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        n -= 2;
        memcpy(tmp + n, d2 + 2 * r, 2);
    }
    if (v >= 10) {
        n -= 2;
        memcpy(tmp + n, d2 + 2 * v, 2);
    } else {
        tmp[--n] = (char)('0' + v);
    }
    size_t len = sizeof(tmp) - n;
    memcpy(out, tmp + n, len);
    return len;
}

size_t sk_fmt_hex(char *out, unsigned long long v)
{
    static const char hx[] = "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = hx[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

size_t sk_fmt_ipv4(char *out, const void *in_addr)
{
    const unsigned char *b = in_addr;
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (i)
            out[n++] = '.';
        if (v >= 100) {
            out[n++] = (char)('0' + v / 100);
            v %= 100;
            out[n++] = (char)('0' + v / 10);
            out[n++] = (char)('0' + v % 10);
        } else if (v >= 10) {
            out[n++] = (char)('0' + v / 10);
            out[n++] = (char)('0' + v % 10);
        } else {
            out[n++] = (char)('0' + v);
        }
    }
    out[n] = 0;
    return n;
}
