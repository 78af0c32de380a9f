#include "skiff/err.h"

const char *sk_strerror(int err)
{
    switch (err) {
    case SK_OK: return "ok";
    case SK_ERR_NOMEM: return "out of memory";
    case SK_ERR_AGAIN: return "try again";
    case SK_ERR_INVAL: return "invalid argument";
    case SK_ERR_IO: return "i/o error";
    case SK_ERR_CLOSED: return "connection closed";
    case SK_ERR_TOO_LARGE: return "limit exceeded";
    case SK_ERR_TIMEOUT: return "timeout";
    case SK_ERR_PROTO: return "protocol error";
    case SK_ERR_CONFIG: return "configuration rejected";
    case SK_ERR_NOTFOUND: return "not found";
    case SK_ERR_H1_BAD_START: return "malformed request or status line";
    case SK_ERR_H1_BAD_HEADER: return "malformed header field";
    case SK_ERR_H1_OBS_FOLD: return "obsolete header line folding";
    case SK_ERR_H1_SMUGGLE: return "ambiguous message framing";
    case SK_ERR_H1_BAD_CHUNK: return "malformed chunked encoding";
    case SK_ERR_H1_HDR_TOO_LARGE: return "header section too large";
    case SK_ERR_H1_TOO_MANY_HDRS: return "too many header fields";
    case SK_ERR_H1_BAD_VERSION: return "unsupported HTTP version";
    case SK_ERR_H1_BAD_CL: return "invalid Content-Length";
    case SK_ERR_H1_BAD_TE: return "unsupported transfer coding";
    }
    return "unknown error";
}
