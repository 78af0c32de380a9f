/* Plaintext / TLS byte transport (see transport.h). */
#include "skiff/transport.h"

#include <errno.h>
#include <ev.h>
#include <sys/socket.h>
#include <unistd.h>

#include "skiff/err.h"
#include "skiff/tls.h"
#include "skiff/toxics.h"

/* Bytes OpenSSL holds for us: decrypted ones, or (read_ahead) records not yet
 * decrypted, whose size is unknown: ask for a record's worth. */
static size_t tls_buffered(SSL *ssl)
{
    int n = SSL_pending(ssl);
    if (n > 0)
        return (size_t)n;
    return SSL_has_pending(ssl) ? 16384 : 0;
}

ssize_t sk_tp_raw_read(struct sk_transport *t, struct sk_buf *b, size_t max)
{
    if (!t->ssl)
        return sk_buf_read_fd(b, t->fd, max);
    size_t want = max ? max : 16384;
    ssize_t total = 0;
    t->want_rd = 0;
    for (;;) {
        size_t room = sk_buf_room(b);
        if (room == 0)
            return total ? total : SK_ERR_TOO_LARGE;
        /* past `want`, keep going only while OpenSSL holds bytes (decrypted,
         * or records read ahead): those never make the socket readable again */
        size_t ask = (size_t)total < want ? want - (size_t)total : tls_buffered(t->ssl);
        if (ask > room)
            ask = room;
        if (ask == 0)
            return total;
        size_t avail;
        char *w = sk_buf_wptr(b, ask, &avail);
        if (!w)
            return total ? total : SK_ERR_TOO_LARGE;
        if (avail > ask)
            avail = ask;
        int wnt = 0;
        ssize_t r = sk_tls_read(t->ssl, w, avail, &wnt);
        if (r > 0) {
            sk_buf_commit(b, (size_t)r);
            total += r;
            /* keep going while OpenSSL holds decrypted bytes */
            if ((size_t)total >= want && !SSL_has_pending(t->ssl))
                return total;
            continue;
        }
        if (r == SK_ERR_AGAIN) {
            t->want_rd = (uint8_t)wnt;
            return total ? total : SK_ERR_AGAIN;
        }
        if (total)
            return total; /* report EOF / error on the next call */
        return r; /* 0 = EOF, SK_ERR_IO */
    }
}

ssize_t sk_tp_raw_send(struct sk_transport *t, const char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (!t->ssl) {
        ssize_t r;
        do {
            r = send(t->fd, p, n, MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        if (r < 0)
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? SK_ERR_AGAIN : SK_ERR_IO;
        return r;
    }
    int wnt = 0;
    t->want_wr = 0;
    ssize_t r = sk_tls_write(t->ssl, p, n, &wnt);
    if (r > 0)
        return r;
    if (r == SK_ERR_AGAIN)
        t->want_wr = (uint8_t)wnt;
    return r == 0 ? SK_ERR_AGAIN : r;
}

static ssize_t raw_write(struct sk_transport *t, struct sk_buf *b)
{
    if (!t->ssl)
        return sk_buf_write_fd(b, t->fd);
    ssize_t r = sk_tp_raw_send(t, sk_buf_rptr(b), sk_buf_used(b));
    if (r > 0)
        sk_buf_consume(b, (size_t)r);
    return r;
}

void sk_tp_raw_shutdown_write(struct sk_transport *t)
{
    if (t->ssl)
        sk_tls_close_notify(t->ssl);
    shutdown(t->fd, SHUT_WR);
}

void sk_tp_raw_close(struct sk_transport *t)
{
    if (t->ssl) {
        sk_tls_close_notify(t->ssl);
        SSL_free(t->ssl);
        t->ssl = NULL;
    }
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
}

bool sk_tp_raw_has_buffered(const struct sk_transport *t)
{
    if (!t->ssl)
        return false;
    return SSL_has_pending(t->ssl) || (SSL_get_shutdown(t->ssl) & SSL_RECEIVED_SHUTDOWN);
}

int sk_tp_raw_events_for_read(const struct sk_transport *t)
{
    if (t->ssl && t->want_rd == SK_TLS_WANT_WRITE)
        return EV_WRITE;
    return EV_READ;
}

int sk_tp_raw_events_for_write(const struct sk_transport *t)
{
    if (t->ssl && t->want_wr == SK_TLS_WANT_READ)
        return EV_READ;
    return EV_WRITE;
}

/* ---- the owners' entry points: straight to the socket, or through the toxic
 * stage when one is attached (toxics.c) ---- */

ssize_t sk_tp_read(struct sk_transport *t, struct sk_buf *b, size_t max)
{
    return t->tox ? sk_tox_read(t, b, max) : sk_tp_raw_read(t, b, max);
}

ssize_t sk_tp_write(struct sk_transport *t, struct sk_buf *b)
{
    return t->tox ? sk_tox_write(t, b) : raw_write(t, b);
}

void sk_tp_shutdown_write(struct sk_transport *t)
{
    if (t->tox)
        sk_tox_shutdown_write(t);
    else
        sk_tp_raw_shutdown_write(t);
}

void sk_tp_close(struct sk_transport *t)
{
    if (t->tox)
        sk_tox_close(t); /* may keep the socket a while (held bytes, slow_close) */
    else
        sk_tp_raw_close(t);
}

bool sk_tp_has_buffered(const struct sk_transport *t)
{
    return t->tox ? sk_tox_has_buffered(t) : sk_tp_raw_has_buffered(t);
}

int sk_tp_events_for_read(const struct sk_transport *t)
{
    return t->tox ? sk_tox_events_for_read(t) : sk_tp_raw_events_for_read(t);
}

int sk_tp_events_for_write(const struct sk_transport *t)
{
    return t->tox ? sk_tox_events_for_write(t) : sk_tp_raw_events_for_write(t);
}
