/* gRPC length-prefixed message framing (include/skiff/xds.h). The decoder
 * collects the 5-byte prefix, then allocates exactly the announced length
 * (bounded) and collects the body; a message may span any number of feeds and
 * one feed may carry several messages. */
#include <stdlib.h>
#include <string.h>

#include "skiff/err.h"
#include "skiff/xds.h"

int sk_grpc_frame(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > SK_GRPC_MAX_MSG)
        return SK_ERR_TOO_LARGE;
    uint8_t *b = malloc(n + 5);
    if (!b)
        return SK_ERR_NOMEM;
    b[0] = 0;
    b[1] = (uint8_t)(n >> 24);
    b[2] = (uint8_t)(n >> 16);
    b[3] = (uint8_t)(n >> 8);
    b[4] = (uint8_t)n;
    if (protobuf_c_message_pack(m, b + 5) != n) {
        free(b);
        return SK_ERR_INVAL;
    }
    *out = b;
    *len = n + 5;
    return 0;
}

void sk_grpc_dec_init(struct sk_grpc_dec *d)
{
    memset(d, 0, sizeof(*d));
}

void sk_grpc_dec_free(struct sk_grpc_dec *d)
{
    free(d->msg);
    d->msg = NULL;
    d->hdr_len = d->msg_len = d->msg_got = 0;
}

int sk_grpc_dec_feed(struct sk_grpc_dec *d, const uint8_t *p, size_t n, sk_grpc_msg_fn fn,
                     void *arg)
{
    size_t max = d->max ? d->max : SK_GRPC_MAX_MSG;
    while (n > 0) {
        if (d->hdr_len < 5) {
            size_t k = 5 - d->hdr_len;
            if (k > n)
                k = n;
            memcpy(d->hdr + d->hdr_len, p, k);
            d->hdr_len += k;
            p += k;
            n -= k;
            if (d->hdr_len < 5)
                return 0;
            if (d->hdr[0] != 0)
                return SK_ERR_PROTO; /* compressed (or garbage) flag */
            size_t len = ((size_t)d->hdr[1] << 24) | ((size_t)d->hdr[2] << 16) |
                         ((size_t)d->hdr[3] << 8) | d->hdr[4];
            if (len > max)
                return SK_ERR_TOO_LARGE;
            d->msg_len = len;
            d->msg_got = 0;
            d->msg = malloc(len ? len : 1);
            if (!d->msg)
                return SK_ERR_NOMEM;
        }
        size_t k = d->msg_len - d->msg_got;
        if (k > n)
            k = n;
        if (k) {
            memcpy(d->msg + d->msg_got, p, k);
            d->msg_got += k;
            p += k;
            n -= k;
        }
        if (d->msg_got < d->msg_len)
            return 0;
        uint8_t *m = d->msg;
        size_t ml = d->msg_len;
        d->msg = NULL;
        d->hdr_len = d->msg_len = d->msg_got = 0;
        int r = fn ? fn(arg, m, ml) : 0;
        free(m);
        if (r)
            return r;
    }
    return 0;
}
