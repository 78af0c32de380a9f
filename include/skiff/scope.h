/* Scoped stats: counters per listener, per HTTP connection manager
 * (stat_prefix) and per virtual host, next to the process-wide ones in
 * stats.h. Envoy's names: listener.<name>.downstream_cx_total,
 * http.<stat_prefix>.downstream_rq_2xx, vhost.<name>.rq_total.
 *
 * A scope is found or made by (kind, name) on the main thread when a
 * snapshot is published (sk_scopes_attach) and lives for the whole process,
 * so counters survive reloads and xDS updates, and a pointer kept by a
 * connection or stream never dangles. Each worker writes only its own row
 * (relaxed load + store, no locked instructions); the admin sums the rows. */
#ifndef SKIFF_SCOPE_H
#define SKIFF_SCOPE_H

#include <stdatomic.h>
#include <stdint.h>

#include "skiff/buf.h"

enum sk_scope_kind { SK_SCOPE_LISTENER = 0, SK_SCOPE_HTTP, SK_SCOPE_VHOST, SK_SCOPE__KINDS };

#define SK_SCOPE_STATS(X)                                                                          \
    X(downstream_cx_total)                                                                         \
    X(downstream_cx_active)                                                                        \
    X(downstream_cx_destroy)                                                                       \
    X(downstream_rq_total)                                                                         \
    X(downstream_rq_1xx)                                                                           \
    X(downstream_rq_2xx)                                                                           \
    X(downstream_rq_3xx)                                                                           \
    X(downstream_rq_4xx)                                                                           \
    X(downstream_rq_5xx)                                                                           \
    X(downstream_rq_reset)

enum sk_scope_stat {
#define SK_SCOPE_ENUM(n) SK_SC_##n,
    SK_SCOPE_STATS(SK_SCOPE_ENUM)
#undef SK_SCOPE_ENUM
        SK_SC__COUNT
};

/* One cache line or more per worker row, so workers never share a line. */
#define SK_SCOPE_ROW ((SK_SC__COUNT * 8 + 63) / 64 * 8)

struct sk_scope {
    struct sk_scope *next;
    int kind;
    _Atomic uint64_t *rows; /* [sk_nworkers][SK_SCOPE_ROW] */
    char name[];
};

static inline void sk_scope_add(struct sk_scope *s, int worker, enum sk_scope_stat i, int64_t d)
{
    if (!s)
        return;
    _Atomic uint64_t *v = &s->rows[(size_t)worker * SK_SCOPE_ROW + (size_t)i];
    uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
    atomic_store_explicit(v, cur + (uint64_t)d, memory_order_relaxed);
}

/* Count one finished HTTP stream in its HCM's and its virtual host's scope:
 * status 0 = reset before any response. */
void sk_scope_stream_done(struct sk_scope *http, struct sk_scope *vhost, int worker, int status);

struct sk_snapshot;
/* Main thread, before the snapshot goes to the workers: point every listener,
 * HCM and virtual host at its scope. Scopes beyond SK_SCOPE_MAX stay NULL
 * (not counted) and are reported once in the log. */
void sk_scopes_attach(struct sk_snapshot *s);

/* Admin rendering (main thread). plain: "listener.<n>.<stat>: v" lines;
 * prom: one family per stat and kind with a label for the scope's name. */
void sk_scopes_plain(struct sk_buf *b);
void sk_scopes_prom(struct sk_buf *b);
/* Sum of one stat of one scope (tests, admin). Returns 0 when unknown. */
uint64_t sk_scope_value(int kind, const char *name, enum sk_scope_stat i);

#define SK_SCOPE_MAX 4096

#endif
