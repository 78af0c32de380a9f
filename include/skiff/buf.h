/* Byte buffer with a hard cap. One contiguous region [data+off, data+len);
 * it grows by doubling up to cap and compacts before growing. A buffer with
 * cap reached refuses more input (callers stop reading: backpressure). */
#ifndef SKIFF_BUF_H
#define SKIFF_BUF_H

#include <stddef.h>
#include <string.h>
#include <sys/types.h>

struct sk_buf {
    char *data;
    size_t off; /* start of unread bytes */
    size_t len; /* end of unread bytes */
    size_t size;
    size_t cap; /* hard limit on size */
};

void sk_buf_init(struct sk_buf *b, size_t cap);
void sk_buf_free(struct sk_buf *b);
static inline size_t sk_buf_used(const struct sk_buf *b)
{
    return b->len - b->off;
}
static inline char *sk_buf_rptr(const struct sk_buf *b)
{
    return b->data + b->off;
}
/* Free room the buffer can still take before hitting cap. */
size_t sk_buf_room(const struct sk_buf *b);
/* Ensure at least `want` writable bytes after len (bounded by cap); returns
 * pointer to the write position and sets *avail, or NULL if at cap/no memory. */
char *sk_buf_wptr(struct sk_buf *b, size_t want, size_t *avail);
void sk_buf_commit(struct sk_buf *b, size_t n); /* n bytes written at wptr */
void sk_buf_consume(struct sk_buf *b, size_t n);
/* Append bytes; returns 0 or SK_ERR_TOO_LARGE / SK_ERR_NOMEM (nothing appended). */
int sk_buf_append_slow(struct sk_buf *b, const void *p, size_t n);
/* Append n bytes; 0, SK_ERR_TOO_LARGE (over cap) or SK_ERR_NOMEM. Inline fast
 * path when the bytes fit behind the data (size <= cap always holds). */
static inline int sk_buf_append(struct sk_buf *b, const void *p, size_t n)
{
    if (b->size - b->len >= n) {
        if (n)
            memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
    }
    return sk_buf_append_slow(b, p, n);
}
int sk_buf_appendf(struct sk_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Decimal / lower-case hex of v into out (no NUL); returns length (<= 20). */
size_t sk_fmt_u64(char *out, unsigned long long v);
size_t sk_fmt_hex(char *out, unsigned long long v);
/* Dotted quad of a network-order IPv4 address, NUL-terminated (<= 16 bytes). */
size_t sk_fmt_ipv4(char *out, const void *in_addr);
/* Free the calling thread's cached buffer blocks (thread exit). */
void sk_buf_thread_cache_free(void);
/* Release memory when empty (idle connections keep no buffer). */
void sk_buf_shrink(struct sk_buf *b);
/* read(2) into the buffer; returns bytes, 0 on EOF, SK_ERR_AGAIN, SK_ERR_TOO_LARGE, SK_ERR_IO */
ssize_t sk_buf_read_fd(struct sk_buf *b, int fd, size_t max);
/* write(2) from the buffer; returns bytes written, SK_ERR_AGAIN or SK_ERR_IO */
ssize_t sk_buf_write_fd(struct sk_buf *b, int fd);

#endif
