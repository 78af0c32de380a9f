/* Scoped stats (see scope.h): a process-lifetime registry of named scopes,
 * each with one counter row per worker. */
#include "skiff/scope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff/log.h"
#include "skiff/model.h"
#include "skiff/worker.h"

static const char *const stat_names[SK_SC__COUNT] = {
#define SK_SCOPE_NAME(n) #n,
    SK_SCOPE_STATS(SK_SCOPE_NAME)
#undef SK_SCOPE_NAME
};

/* which stats each kind reports (the others stay 0 and are not shown) */
static bool kind_has(int kind, int i)
{
    switch (kind) {
    case SK_SCOPE_LISTENER:
        return i <= SK_SC_downstream_cx_destroy;
    case SK_SCOPE_HTTP:
        return i >= SK_SC_downstream_rq_total;
    case SK_SCOPE_VHOST:
        return i >= SK_SC_downstream_rq_total;
    }
    return false;
}

static const char *const kind_prefix[SK_SCOPE__KINDS] = {"listener", "http", "vhost"};
static const char *const kind_label[SK_SCOPE__KINDS] = {"listener", "stat_prefix", "vhost"};

#define NBUCKETS 1024
static struct sk_scope *all_head, **all_tail = &all_head; /* creation order, via ->next */
static struct sk_scope *chain[SK_SCOPE_MAX]; /* every scope, by creation index */
static size_t nscopes;
static int nrows;
static bool warned_full;

static uint32_t hash(int kind, const char *name)
{
    uint32_t h = 2166136261u ^ (uint32_t)kind;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

/* hash chains are kept as indexes into chain[], leaving ->next for the
 * creation-order list the renderers walk */
static size_t bucket_next[SK_SCOPE_MAX];
static size_t bucket_head[NBUCKETS]; /* index + 1, 0 = empty */

static struct sk_scope *scope_get(int kind, const char *name)
{
    if (!name)
        name = "";
    uint32_t b = hash(kind, name) % NBUCKETS;
    for (size_t i = bucket_head[b]; i; i = bucket_next[i - 1]) {
        struct sk_scope *s = chain[i - 1];
        if (s->kind == kind && strcmp(s->name, name) == 0)
            return s;
    }
    if (nscopes >= SK_SCOPE_MAX) {
        if (!warned_full)
            sk_warn("stats: more than %d listener/http/vhost scopes; new ones are not counted",
                    SK_SCOPE_MAX);
        warned_full = true;
        return NULL;
    }
    if (!nrows)
        nrows = sk_nworkers > 0 ? sk_nworkers : 1;
    size_t nl = strlen(name);
    struct sk_scope *s = calloc(1, sizeof(*s) + nl + 1);
    if (!s)
        return NULL;
    s->rows = calloc((size_t)nrows * SK_SCOPE_ROW, sizeof(*s->rows));
    if (!s->rows) {
        free(s);
        return NULL;
    }
    s->kind = kind;
    memcpy(s->name, name, nl + 1);
    chain[nscopes] = s;
    bucket_next[nscopes] = bucket_head[b];
    bucket_head[b] = nscopes + 1;
    nscopes++;
    *all_tail = s;
    all_tail = &s->next;
    return s;
}

void sk_scopes_attach(struct sk_snapshot *snap)
{
    if (snap->base)
        return; /* derived (EDS-only update): its listeners are the base's, attached */
    for (size_t i = 0; i < snap->nlisteners; i++) {
        struct sk_listener *l = &snap->listeners[i];
        l->scope = scope_get(SK_SCOPE_LISTENER, l->name);
        for (size_t c = 0; c < l->nchains; c++) {
            struct sk_hcm *h = l->chains[c].hcm;
            if (!h)
                continue;
            h->scope = scope_get(SK_SCOPE_HTTP, h->stat_prefix);
            struct sk_route_config *rc = h->routes;
            if (!rc)
                continue;
            for (size_t v = 0; v < rc->nvhosts; v++)
                rc->vhosts[v].scope = scope_get(SK_SCOPE_VHOST, rc->vhosts[v].name);
        }
    }
}

void sk_scope_stream_done(struct sk_scope *http, struct sk_scope *vhost, int worker, int status)
{
    int cls = status / 100;
    enum sk_scope_stat st = (cls >= 1 && cls <= 5) ? (enum sk_scope_stat)(SK_SC_downstream_rq_1xx + cls - 1)
                                                   : SK_SC_downstream_rq_reset;
    sk_scope_add(http, worker, SK_SC_downstream_rq_total, 1);
    sk_scope_add(http, worker, st, 1);
    sk_scope_add(vhost, worker, SK_SC_downstream_rq_total, 1);
    sk_scope_add(vhost, worker, st, 1);
}

static uint64_t sum(const struct sk_scope *s, int i)
{
    uint64_t t = 0;
    for (int w = 0; w < nrows; w++)
        t += atomic_load_explicit(&s->rows[(size_t)w * SK_SCOPE_ROW + (size_t)i],
                                  memory_order_relaxed);
    return t;
}

uint64_t sk_scope_value(int kind, const char *name, enum sk_scope_stat i)
{
    for (struct sk_scope *s = all_head; s; s = s->next)
        if (s->kind == kind && strcmp(s->name, name) == 0)
            return sum(s, i);
    return 0;
}

void sk_scopes_plain(struct sk_buf *b)
{
    for (struct sk_scope *s = all_head; s; s = s->next)
        for (int i = 0; i < SK_SC__COUNT; i++)
            if (kind_has(s->kind, i))
                sk_buf_appendf(b, "%s.%s.%s: %llu\n", kind_prefix[s->kind], s->name,
                               stat_names[i], (unsigned long long)sum(s, i));
}

static void label(struct sk_buf *b, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\' || *p == '"')
            sk_buf_appendf(b, "\\%c", *p);
        else if (*p == '\n')
            sk_buf_append(b, "\\n", 2);
        else
            sk_buf_append(b, p, 1);
    }
}

void sk_scopes_prom(struct sk_buf *b)
{
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int k = 0; k < SK_SCOPE__KINDS; k++) {
        bool any = false;
        for (struct sk_scope *s = all_head; s && !any; s = s->next)
            any = s->kind == k;
        if (!any)
            continue;
        for (int i = 0; i < SK_SC__COUNT; i++) {
            if (!kind_has(k, i) || (i > SK_SC_downstream_rq_1xx && i <= SK_SC_downstream_rq_5xx))
                continue;
            bool xx = i == SK_SC_downstream_rq_1xx;
            bool gauge = i == SK_SC_downstream_cx_active;
            const char *n = xx ? "downstream_rq_xx" : stat_names[i];
            const char *suffix = gauge || strstr(n, "_total") ? "" : "_total";
            sk_buf_appendf(b, "# HELP skiff_%s_%s%s %s by %s.\n# TYPE skiff_%s_%s%s %s\n",
                           kind_prefix[k], n, suffix,
                           xx ? "Downstream responses by status class," : stat_names[i],
                           kind_label[k], kind_prefix[k], n, suffix, gauge ? "gauge" : "counter");
            for (struct sk_scope *s = all_head; s; s = s->next) {
                if (s->kind != k)
                    continue;
                for (int c = 0; c < (xx ? 5 : 1); c++) {
                    sk_buf_appendf(b, "skiff_%s_%s%s{%s=\"", kind_prefix[k], n, suffix,
                                   kind_label[k]);
                    label(b, s->name);
                    if (xx)
                        sk_buf_appendf(b, "\",code_class=\"%s", classes[c]);
                    sk_buf_appendf(b, "\"} %llu\n", (unsigned long long)sum(s, xx ? i + c : i));
                }
            }
        }
    }
}
