/* Error codes. Functions return 0 (or a byte count) on success and a negative
 * SK_ERR_* on failure; sk_strerror() gives a short human text. */
#ifndef SKIFF_ERR_H
#define SKIFF_ERR_H

enum {
    SK_OK = 0,
    SK_ERR_NOMEM = -1,     /* allocation failed */
    SK_ERR_AGAIN = -2,     /* need more input / would block */
    SK_ERR_INVAL = -3,     /* invalid argument or input */
    SK_ERR_IO = -4,        /* socket / file error (see errno) */
    SK_ERR_CLOSED = -5,    /* peer closed */
    SK_ERR_TOO_LARGE = -6, /* a hard limit was hit */
    SK_ERR_TIMEOUT = -7,
    SK_ERR_PROTO = -8,   /* protocol violation */
    SK_ERR_CONFIG = -9,  /* configuration rejected */
    SK_ERR_NOTFOUND = -10,
    /* HTTP/1 parser specific (see codec/http1.h) */
    SK_ERR_H1_BAD_START = -20,     /* malformed request/status line */
    SK_ERR_H1_BAD_HEADER = -21,    /* malformed header field (name/value chars, no colon) */
    SK_ERR_H1_OBS_FOLD = -22,      /* obsolete line folding */
    SK_ERR_H1_SMUGGLE = -23,       /* CL+TE, duplicate differing CL, bad TE */
    SK_ERR_H1_BAD_CHUNK = -24,     /* malformed chunk size / chunk framing */
    SK_ERR_H1_HDR_TOO_LARGE = -25, /* header section over the byte limit */
    SK_ERR_H1_TOO_MANY_HDRS = -26, /* header count over the limit */
    SK_ERR_H1_BAD_VERSION = -27,   /* unsupported HTTP version */
    SK_ERR_H1_BAD_CL = -28,        /* unparsable Content-Length */
    SK_ERR_H1_BAD_TE = -29,        /* well-formed but unsupported transfer coding (-> 501) */
};

const char *sk_strerror(int err);

#endif
