/* Strict HTTP/1.1 message parser (RFC 9110 / RFC 9112), both roles.
 *
 * Zero-copy: the parsed head points into the caller's buffer; it is valid
 * until the caller consumes/moves those bytes. No allocation. Never reads past
 * `len`. Pure functions, callable from anywhere.
 *
 * Head parsing is all-or-nothing: sk_h1_parse_request/response return the
 * number of bytes of the complete head (start line + fields + empty line),
 * SK_ERR_AGAIN if the head is not complete yet (and not over the byte limit),
 * or a negative SK_ERR_H1_* on a violation. Callers reply 400 (request) or 502
 * (response) and close the connection on any error.
 *
 * Rejected (errors, never "best effort"): bare LF line endings (CRLF is
 * required everywhere); obs-fold; whitespace between field name and colon;
 * empty field names; non-token chars in names; CTL chars (incl. NUL, bare CR,
 * bare LF) in values; Content-Length together with Transfer-Encoding;
 * several Content-Length values that differ (equal duplicates, incl. "5, 5",
 * are folded into one); a non-numeric / overflowing Content-Length;
 * Transfer-Encoding whose final coding is not "chunked" (requests), or any
 * coding other than chunked (we do not decode gzip etc. in framing);
 * HTTP versions other than 1.0 / 1.1; request-targets with CTL or space;
 * header sections larger than max_head_bytes or with more than max_headers
 * fields. Leading empty lines before a request line (RFC 9112 2.2) are skipped.
 *
 * Error codes (all negative; see err.h):
 *   SK_ERR_H1_BAD_START    request/status line syntax; request-target form that
 *                          does not fit the method (authority-form only and
 *                          always for CONNECT, "*" only for OPTIONS, otherwise
 *                          origin-form "/..." or absolute-form "scheme:...");
 *                          request-target bytes outside 0x21..0x7e (obs-text
 *                          included); whitespace-led line right after the
 *                          start line; status code < 100
 *   SK_ERR_H1_BAD_VERSION  "HTTP/d.d" other than 1.0 / 1.1
 *   SK_ERR_H1_BAD_HEADER   field syntax; Host missing (1.1) / repeated / with
 *                          chars outside uri-host[:port]; Upgrade repeated
 *   SK_ERR_H1_OBS_FOLD     a continuation line
 *   SK_ERR_H1_BAD_CL       Content-Length not 1*DIGIT (list of), > INT64_MAX
 *   SK_ERR_H1_SMUGGLE      CL+TE (either order); differing CL values; TE in an
 *                          HTTP/1.0 message; TE list that is empty, has empty
 *                          elements, parameters or non-token bytes, or names a
 *                          coding after "chunked" ("chunked, chunked"); request
 *                          TE whose final coding is not chunked ("xchunked",
 *                          "gzip"); CONNECT request with TE or CL != 0
 *   SK_ERR_H1_BAD_TE       TE otherwise fine but naming a coding we do not
 *                          implement: request "gzip, chunked" (reply 501);
 *                          response: any coding other than chunked
 *   SK_ERR_H1_HDR_TOO_LARGE / SK_ERR_H1_TOO_MANY_HDRS  limits
 * The status line "HTTP/1.1 200\r\n" (no SP before an empty reason) is
 * tolerated: unambiguous and seen in the wild.
 *
 * Speed: one pass, a 256-entry class table, no allocation. Head parsing is
 * stateless: callers re-call with the grown buffer (heads are small).
 */
#ifndef SKIFF_HTTP1_H
#define SKIFF_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct sk_h1_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading/trailing OWS stripped */
    size_t value_len;
};

enum sk_h1_body_kind {
    SK_H1_BODY_NONE = 0,    /* no body (e.g. GET without CL/TE, 204, 304, HEAD response) */
    SK_H1_BODY_LENGTH = 1,  /* content_length bytes */
    SK_H1_BODY_CHUNKED = 2, /* chunked transfer coding */
    SK_H1_BODY_EOF = 3,     /* response delimited by connection close */
};

/* flags on struct sk_h1_msg */
#define SK_H1_F_KEEPALIVE 0x01       /* persistent per version + Connection header */
#define SK_H1_F_EXPECT_CONTINUE 0x02 /* request: Expect: 100-continue */
#define SK_H1_F_UPGRADE 0x04         /* Connection: upgrade + Upgrade header present */
#define SK_H1_F_HAS_CL 0x08
#define SK_H1_F_HAS_TE 0x10
#define SK_H1_F_CONN_CLOSE 0x20 /* Connection: close seen */
#define SK_H1_F_HAS_HOST 0x40
#define SK_H1_F_CONNECT 0x80 /* request method CONNECT */
#define SK_H1_F_HEAD 0x100   /* request method HEAD */

#define SK_H1_DEFAULT_MAX_HEAD (60 * 1024)
/* Longest chunk-size line (size + extensions, excluding CRLF) accepted. */
#define SK_H1_MAX_CHUNK_LINE 4096

/* lim == NULL means { SK_H1_DEFAULT_MAX_HEAD, m->hdrs_cap }; max_head_bytes 0
 * means the default; max_headers is clamped to m->hdrs_cap. */
struct sk_h1_limits {
    size_t max_head_bytes; /* whole head incl. start line, default 60 KiB */
    size_t max_headers;    /* field count, must be <= capacity of hdrs array */
};

struct sk_h1_msg {
    /* request */
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    /* response */
    int status;
    const char *reason;
    size_t reason_len;
    /* both */
    int minor_version; /* 0 or 1 */
    /* Every field line, in order, including Host/CL/TE/Connection (the
     * proxy strips hop-by-hop fields itself). */
    struct sk_h1_header *hdrs; /* caller-provided array */
    size_t nhdrs;
    size_t hdrs_cap;
    unsigned flags;          /* SK_H1_F_* */
    int body_kind;           /* enum sk_h1_body_kind */
    uint64_t content_length; /* valid when body_kind == SK_H1_BODY_LENGTH */
    const char *host;        /* Host header value (request), NULL if absent */
    size_t host_len;
    const char *upgrade; /* Upgrade header value, NULL if absent */
    size_t upgrade_len;
    /* The field section as parsed, from the first field line through the
     * empty line: every hdrs[i] lies inside it, so a caller can copy all the
     * fields at once (sk_hdrs_add_h1). NULL when the message was built by
     * other code than the parsers here. */
    const char *fields;
    size_t fields_len;
};

/* Parse a request head. `m->hdrs` / `m->hdrs_cap` must be set by the caller;
 * every other field of *m is overwritten (also on error).
 * Returns head length (> 0; includes skipped leading CRLFs), SK_ERR_AGAIN, or
 * SK_ERR_H1_*. Flags: KEEPALIVE = (1.1 or "Connection: keep-alive") and no
 * "close"; EXPECT_CONTINUE and UPGRADE only for HTTP/1.1 (RFC 9110 10.1.1,
 * 7.8 say to ignore them in 1.0 requests).
 * Also rejects: HTTP/1.1 request without Host, or with more than one Host
 * (SK_ERR_H1_BAD_HEADER). Body kind: TE chunked -> CHUNKED, CL -> LENGTH (0 ->
 * NONE), neither -> NONE. */
ssize_t sk_h1_parse_request(const char *buf, size_t len, struct sk_h1_msg *m,
                            const struct sk_h1_limits *lim);

/* Parse a response head. `req_flags` are the flags of the request it answers
 * (SK_H1_F_HEAD / SK_H1_F_CONNECT matter for body framing: HEAD responses,
 * 1xx, 204, 304 and 2xx-to-CONNECT have no body). No CL/TE -> EOF-delimited.
 * CL 0 -> NONE. CL/TE are still validated on bodiless responses, except on a
 * 2xx to CONNECT where they are ignored entirely (RFC 9110 9.3.6).
 * KEEPALIVE is never set on an EOF-delimited response. UPGRADE as for
 * requests (meaningful with status 101).
 * Returns head length, SK_ERR_AGAIN, or SK_ERR_H1_*. 1xx responses are
 * returned like any other (status 100..199, body NONE); the caller loops. */
ssize_t sk_h1_parse_response(const char *buf, size_t len, struct sk_h1_msg *m,
                             const struct sk_h1_limits *lim, unsigned req_flags);

/* Case-insensitive header name comparison helper. */
int sk_h1_name_eq(const char *a, size_t alen, const char *lit);

/* Does the comma-separated header value contain token `tok` (case-insensitive)? */
int sk_h1_has_token(const char *val, size_t len, const char *tok);

/* ---- body decoding ---------------------------------------------------- */

struct sk_h1_body {       /* 24 bytes: one per connection, kept small */
    uint64_t remaining;     /* LENGTH: bytes left; CHUNKED: bytes left in chunk */
    uint32_t line_len;      /* internal: bytes of the chunk-size line seen so far */
    uint32_t trailer_bytes; /* internal: trailer bytes already verified (whole lines) */
    uint32_t max_trailer_bytes;
    uint8_t kind;           /* enum sk_h1_body_kind */
    uint8_t state;          /* internal */
};

/* max_trailer_bytes 0 means SK_H1_DEFAULT_MAX_HEAD. NONE, and LENGTH with
 * content_length 0, are DONE at once. */
void sk_h1_body_init(struct sk_h1_body *b, int kind, uint64_t content_length,
                     size_t max_trailer_bytes);

/* Event produced by one sk_h1_body_step call. */
enum sk_h1_body_ev {
    SK_H1_BEV_NEED_MORE = 0, /* nothing to report: call again once more input
                                arrived; unconsumed bytes (an incomplete trailer
                                section) must be presented again in front of it */
    SK_H1_BEV_DATA = 1,      /* *data, *data_len is body payload (de-chunked) */
    SK_H1_BEV_TRAILERS = 2,  /* *data, *data_len is the raw trailer section
                                (field lines, each ending CRLF, final CRLF excluded;
                                never empty: a chunked body without trailer fields
                                goes straight to DONE) -- parse with
                                sk_h1_parse_trailers; DONE follows */
    SK_H1_BEV_DONE = 3,      /* message body complete */
};

/* Decode from `in`. Returns bytes consumed (>= 0) and sets *ev (+ *data /
 * *data_len for DATA, pointing into `in`), or a negative SK_ERR_H1_BAD_CHUNK /
 * SK_ERR_H1_HDR_TOO_LARGE (trailers over max_trailer_bytes) / the field errors
 * of sk_h1_parse_trailers (trailers are validated here already, so a caller
 * may relay them raw). One event per call: LENGTH gives DATA+ then DONE;
 * chunked gives DATA*, [TRAILERS,] DONE (the DONE may consume the final
 * CRLF). DONE is repeated on further calls with 0 consumed.
 * IMPORTANT: the DONE after the last DATA (LENGTH) or after TRAILERS is only
 * produced by a further call, which consumes 0 bytes -- so keep calling even
 * when no input is left (len 0 is fine), or test sk_h1_body_done() after each
 * event. Call repeatedly; after DONE, bytes not consumed
 * belong to the next message (pipelining). For TRAILERS the caller must keep
 * the consumed bytes valid until it has parsed them (they are returned in one
 * piece: the step returns NEED_MORE with 0 consumed until the whole trailer
 * section is in `in`). For EOF kind every byte is DATA and DONE never comes
 * from here (the caller ends the body at connection close).
 * Chunk sizes: hex digits only (no sign, no 0x, no spaces before the digits),
 * value <= INT64_MAX (leading zeros allowed within SK_H1_MAX_CHUNK_LINE);
 * chunk extensions (*( BWS ";" BWS name [ BWS "=" BWS token/quoted-string ]))
 * are skipped but must be well-formed (no trailing whitespace, no bare CR/LF);
 * the size line is bounded by SK_H1_MAX_CHUNK_LINE; the CRLF after chunk data
 * is required. */
ssize_t sk_h1_body_step(struct sk_h1_body *b, const char *in, size_t len, int *ev,
                        const char **data, size_t *data_len);

/* Has the body been completely decoded (the next step would return DONE)?
 * Lets a caller whose buffer is empty finish the message without calling
 * sk_h1_body_step with len 0. Never true for EOF kind. */
int sk_h1_body_done(const struct sk_h1_body *b);

/* Parse a raw trailer section (as given by SK_H1_BEV_TRAILERS) into hdrs.
 * Returns number of fields or SK_ERR_H1_*. Same field rules as heads; in
 * addition Content-Length, Transfer-Encoding and Host are rejected
 * (SK_ERR_H1_BAD_HEADER; RFC 9110 6.5.1), more than `cap` fields is
 * SK_ERR_H1_TOO_MANY_HDRS. */
ssize_t sk_h1_parse_trailers(const char *buf, size_t len, struct sk_h1_header *hdrs, size_t cap);

#endif
