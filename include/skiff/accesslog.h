/* Access logs: rendering (Envoy's %OPERATORS%, text or JSON) and per-worker
 * sinks. A worker appends finished lines to its own buffer per sink and
 * writes them once per loop iteration with a non-blocking write; a sink that
 * cannot keep up (a full pipe, a stalled disk) loses lines, counted in
 * access_log_dropped, and never stalls requests. */
#ifndef SKIFF_ACCESSLOG_H
#define SKIFF_ACCESSLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "skiff/buf.h"
#include "skiff/model.h"

struct sk_stream;
struct sk_worker;

/* ---- compiled formats (sk_al_compile, src/config/alformat.c) ---------------------
 * A format becomes one flat list of instructions run top to bottom for each
 * line: all constant text of a JSON line (braces, keys, quotes, commas,
 * literal pieces, escaped once) merged into LIT runs, each operator a FIELD
 * with its value source resolved (REQ(:path) reads st->path, REQ(x-foo) looks
 * up "x-foo" with its length known) and whether its value needs the JSON
 * escaper. A JSON value that may come out as null (every operator in it may
 * be empty) is framed by VBEGIN/VEND, which take the value back and write
 * null (or, with omit_empty, take the key back too). */
enum sk_ali_kind {
    SK_ALI_LIT = 0, /* only its prefix (the constant text at the end of a line) */
    SK_ALI_FIELD,   /* op, src, esc, max_len */
    SK_ALI_KEY,     /* omit_empty: ',' unless first, then text ("key": and the opening quote) */
    SK_ALI_VBEGIN,  /* a nullable value starts; omit_empty: also writes its key like KEY */
    SK_ALI_VEND,    /* all of the value's operators were empty: null / omitted; else closing quote */
    SK_ALI_SBEGIN,  /* a value rendered raw, then escaped as a whole (pieces whose UTF-8 */
    SK_ALI_SEND,    /* could join across a boundary): the exact bytes of escaping the value */
};

/* Where a REQ / RESP / TRACE_ID / GRPC_STATUS operator reads its value. */
enum sk_als_kind {
    SK_ALS_NONE = 0,  /* an unknown pseudo-header: always empty */
    SK_ALS_METHOD,    /* REQ(:method) */
    SK_ALS_PATH,      /* REQ(:path) */
    SK_ALS_AUTHORITY, /* REQ(:authority) */
    SK_ALS_SCHEME,    /* REQ(:scheme) */
    SK_ALS_HOST,      /* REQ(host): the authority, else a "host" header */
    SK_ALS_REQ_HDR,   /* a request header (lower-case name) */
    SK_ALS_RESP_HDR,  /* a response header */
};

struct sk_al_src {
    unsigned char kind; /* enum sk_als_kind */
    unsigned char set;  /* 0: no source (no fallback) */
    uint32_t nlen;
    const char *name;
};

struct sk_al_insn {
    unsigned char kind;  /* enum sk_ali_kind */
    unsigned char op;    /* FIELD: enum sk_al_op */
    unsigned char esc;   /* FIELD: JSON-escape the value */
    unsigned char omit;  /* VBEGIN / VEND: omit_empty (take the key back, no null) */
    unsigned char nullq; /* FIELD: a JSON value of this one operator that may be null: its
                          * opening quote is already out; empty -> null, else the closing quote */
    uint32_t plen;       /* constant text written before the instruction's own work */
    const char *pre;     /* (readable SK_AL_SLACK bytes past plen) */
    uint32_t len;        /* KEY / VBEGIN(omit): key text length */
    const char *text;    /* KEY / VBEGIN(omit): the key; FIELD HOSTNAME: the host name or NULL */
    size_t max_len;      /* FIELD: :N truncation, 0 = none */
    size_t tail;         /* most bytes the instructions after this one write without
                          * checking for room (constant text, numbers, times) + slack */
    struct sk_al_src src[2]; /* FIELD REQ / RESP: the header, then its ?fallback */
};

/* Every instruction that writes a length not known at config time (a string
 * value, an escaped value) makes room for it plus its `tail` first; the rest
 * (LIT, numbers, START_TIME, KEY, VEND) write without a check. */
struct sk_al_prog {
    struct sk_al_insn *v;
    size_t n;
    size_t reserve;      /* room made before the first instruction (= its tail + its own) */
    bool nl_check;       /* text: add '\n' unless the line ends with one */
};
#define SK_AL_SLACK 16   /* LIT copies whole 16-byte blocks: may write this far past the text */

/* no byte of the word needs an escape (< 0x20, '"', '\\', 0x7f, >= 0x80) */
static inline bool sk_al_clean8(uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\'), d = v ^ (ones * 0x7f);
    uint64_t hit = (v - ones * 0x20) | ((q - ones) & ~q) | ((b - ones) & ~b) | ((d - ones) & ~d) | v;
    return (hit & highs) == 0;
}

/* the whole of p[0..n) goes out as it is (the usual value: checked a word at a time) */
static inline bool sk_al_json_clean(const char *p, size_t n)
{
    uint64_t v;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&v, p + i, 8);
            if (!sk_al_clean8(v))
                return false;
        }
        if (i == n)
            return true;
        memcpy(&v, p + n - 8, 8); /* the last, overlapping word */
        return sk_al_clean8(v);
    }
    /* 0..7 bytes: two overlapping loads, the rest of the word a plain 'a' */
    uint32_t lo = 0x61616161u, hi = 0x61616161u;
    if (n >= 4) {
        memcpy(&lo, p, 4);
        memcpy(&hi, p + n - 4, 4);
    } else if (n >= 2) {
        uint16_t a, b;
        memcpy(&a, p, 2);
        memcpy(&b, p + n - 2, 2);
        lo = 0x61610000u | a;
        hi = 0x61610000u | b;
    } else if (n == 1) {
        lo = 0x61616100u | (unsigned char)p[0];
    }
    return sk_al_clean8((uint64_t)lo | (uint64_t)hi << 32);
}

/* JSON string content of p[0..n) into out (room for 6 * n bytes): '"' and
 * '\' escaped, control bytes and DEL as \u00XX, valid UTF-8 kept, any other
 * byte as \u00XX (every line stays valid JSON). Returns the bytes written. */
size_t sk_al_json_escape(char *out, const char *p, size_t n);

/* Log a finished stream to every access log of its HCM that passes its filter. */
void sk_access_log_stream(struct sk_stream *st);
/* The same for any list of access logs (tcp_proxy logs a connection through a
 * stream record filled by tcp_proxy.c: no method, status 0). */
void sk_access_log_write(struct sk_stream *st, const struct sk_access_log *logs, size_t n);
/* Render one line (exposed for unit tests). */
void sk_access_log_render(const struct sk_al_format *f, const struct sk_stream *st, double now,
                          struct sk_buf *out);
/* Close the worker's sinks (worker exit). */
void sk_access_log_worker_close(struct sk_worker *w);

#endif
