/* Runtime chaos rules: faults added, listed and removed at run time through
 * the admin API (/chaos/faults), each with a TTL, applied to requests by the
 * fault filter's machinery (src/filters/fault.c) whether or not the config
 * has a fault filter.
 *
 * Threads: the rule list lives on the main thread (admin handler, TTL timers).
 * Every change builds a new immutable, refcounted rule set and posts one
 * reference to each worker through its mailbox (SK_MSG_CALL); a worker reads
 * only its own current set, so the request path takes no lock. A stream that
 * a rule acts on holds a reference on that rule until the stream ends, so a
 * rule deleted (or expired) mid-request stays valid for that request.
 *
 * Legs: a "downstream" rule acts like the fault filter before the router
 * (delay, abort HTTP/gRPC, response rate limit, and mid-stream faults:
 * reset / truncate / gRPC error after N response bytes; flags DI / FI). An "upstream"
 * rule acts per attempt after the router picked a host (the retry layer sees
 * it): the attempt fails as if the host had answered 5xx or reset. */
#ifndef SKIFF_CHAOS_H
#define SKIFF_CHAOS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sk_stream;
struct sk_buf;
struct sk_snapshot;
struct ev_loop;

#define SK_CHAOS_MAX_RULES 64
#define SK_CHAOS_MAX_HEADERS 8
#define SK_CHAOS_NAME_MAX 256
#define SK_CHAOS_TTL_MAX_S 86400.0    /* one day */
#define SK_CHAOS_DELAY_MAX_MS 600000u /* ten minutes */
#define SK_CHAOS_RL_MAX_KBPS 1048576u /* 1 GiB/s */
#define SK_CHAOS_BODY_MAX 8192        /* POST body cap */

enum sk_chaos_target {
    SK_CHAOS_T_LISTENER = 1,
    SK_CHAOS_T_ROUTE,
    SK_CHAOS_T_VHOST,
    SK_CHAOS_T_CLUSTER,
};
enum sk_chaos_leg { SK_CHAOS_LEG_DOWNSTREAM = 0, SK_CHAOS_LEG_UPSTREAM = 1 };
enum sk_chaos_abort {
    SK_CHAOS_ABORT_NONE = 0,
    SK_CHAOS_ABORT_HTTP,  /* http_status */
    SK_CHAOS_ABORT_GRPC,  /* grpc_status (downstream leg) */
    SK_CHAOS_ABORT_RESET, /* reset (upstream leg): the attempt fails as a reset */
};
/* mid-stream: same values as enum sk_fault_mid_kind */
enum sk_chaos_mid {
    SK_CHAOS_MID_NONE = 0,
    SK_CHAOS_MID_RESET,    /* h1: close after N bytes; h2: RST_STREAM */
    SK_CHAOS_MID_TRUNCATE, /* h2: END_STREAM after N bytes (h1: close) */
    SK_CHAOS_MID_GRPC,     /* h2: trailers with grpc-status after N bytes (h1: close) */
};
#define SK_CHAOS_MID_MAX_BYTES (1ull << 40)

enum sk_chaos_hdr_kind { SK_CHAOS_H_EXACT = 0, SK_CHAOS_H_PREFIX, SK_CHAOS_H_PRESENT };

struct sk_chaos_hdr {
    char name[128]; /* lower-cased */
    int kind;       /* enum sk_chaos_hdr_kind */
    char value[256];
};

/* One rule as posted (POST /chaos/faults), validated. Percentages are parts
 * per million. */
struct sk_chaos_spec {
    int target_kind; /* enum sk_chaos_target */
    char target[SK_CHAOS_NAME_MAX];
    int leg; /* enum sk_chaos_leg */
    struct sk_chaos_hdr hdrs[SK_CHAOS_MAX_HEADERS];
    size_t nhdrs;
    bool has_delay;
    uint64_t delay_ms;
    uint32_t delay_ppm;
    int abort_kind;      /* enum sk_chaos_abort */
    uint32_t abort_code; /* HTTP status or gRPC status */
    uint32_t abort_ppm;
    bool has_rl;
    uint64_t rl_kbps;
    uint32_t rl_ppm;
    int mid_kind; /* enum sk_chaos_mid */
    uint64_t mid_after_bytes;
    uint32_t mid_grpc_status;
    int32_t mid_rst_code; /* action reset on HTTP/2: RST_STREAM error code; -1 = INTERNAL_ERROR */
    uint32_t mid_ppm;
    double ttl_s;
    char description[128];
};

/* Parse and validate a rule (JSON). 0, or -1 with a message in err (always
 * NUL-terminated) naming the field and what is wrong. Never reads past
 * len; `body` need not be NUL-terminated. (src/filters/chaos_json.c) */
int sk_chaos_parse(const char *body, size_t len, struct sk_chaos_spec *out, char *err,
                   size_t errlen);

/* Main thread: the loop for TTL timers, and a way to read the serving
 * snapshot (targets must name something that exists). */
void sk_chaos_init(struct ev_loop *main_loop, const struct sk_snapshot *(*snapshot)(void));
/* Main thread, after the workers were joined: drop every rule and set. */
void sk_chaos_shutdown(void);

/* Admin handler for /chaos and /chaos/... (main thread):
 *   GET    /chaos/faults       JSON {"rules": [...]} (?format=text: a table)
 *   POST   /chaos/faults       add a rule (JSON body), answers the rule with its id
 *   DELETE /chaos/faults/ID    remove one rule (404 if unknown)
 *   DELETE /chaos/faults       kill switch: remove every rule
 * Writes the body into out, sets *ctype, returns the HTTP status. */
int sk_chaos_admin(const char *method, size_t mlen, const char *path, size_t plen,
                   const char *query, size_t qlen, const char *body, size_t blen,
                   struct sk_buf *out, const char **ctype);

/* Worker, from the router once route and cluster are known: put a filter
 * slot in front of the chain for each downstream rule that targets this
 * stream (no-op when the worker has no rules). */
void sk_chaos_attach(struct sk_stream *st);

/* Worker, from the router per attempt once a host is chosen: 0 = no fault,
 * > 0 = fail this attempt as an upstream answer with that HTTP status,
 * < 0 = fail it as an upstream reset. Counted per rule and per kind. */
int sk_chaos_upstream_attempt(struct sk_stream *st);

/* chaos.* counters (per kind, per rule) for /stats and Prometheus. */
void sk_chaos_stats(struct sk_buf *out, bool prometheus);

/* `skiff chaos ...`: the command-line client of the admin API
 * (src/chaos_cli.c). Returns the process exit code. */
int sk_chaos_cli(int argc, char **argv);

#endif
