/* Runtime chaos rules (contract in include/skiff/chaos.h).
 *
 * A rule is one malloc'd object with an atomic refcount: the main thread's
 * list holds one reference, every published rule set holding it one more,
 * and every stream it was attached to one more (dropped in on_destroy). A
 * rule set is an immutable array of rule pointers, refcounted the same way;
 * each worker keeps its current set in wset[worker id], written and read only
 * on that worker's thread (the swap arrives as an SK_MSG_CALL mailbox
 * message), so a request looks at its worker's set without any lock.
 *
 * Downstream rules become filter slots at the head of the chain whose config
 * is the rule's struct sk_fault_cfg: the fault filter's own code
 * (src/filters/fault.c) does the delay / abort / rate limit and the random
 * selection (SKIFF_FAULT_SEED), counting into the rule's counters. Upstream
 * rules are rolled per attempt by the router (sk_chaos_upstream_attempt).
 *
 * Expiry: each rule has a main-loop ev_timer at its TTL; removal (expiry,
 * DELETE) publishes a new set, and in-flight streams finish with the rule
 * they started with. */
#include "skiff/chaos.h"

#include <ev.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff/buf.h"
#include "skiff/fault.h"
#include "skiff/log.h"
#include "skiff/model.h"
#include "skiff/stream.h"
#include "skiff/worker.h"

struct chaos_rule {
    atomic_int refs;
    uint64_t id;
    struct sk_chaos_spec spec;
    /* downstream leg: the fault filter's config, and its header matchers */
    struct sk_fault_cfg fc;
    struct sk_header_match hm[SK_CHAOS_MAX_HEADERS];
    char detail[64];
    /* injected faults of this rule */
    struct sk_fault_counters ctr;
    _Atomic uint64_t up_aborts, up_resets;
    /* main thread only */
    struct chaos_rule *next;
    ev_timer ttl;
    double created, expires; /* ev_now() of the main loop */
};

struct chaos_set {
    atomic_int refs;
    bool has_down, has_up;
    size_t n;
    struct chaos_rule *r[];
};

/* kind totals (survive rule removal) */
static struct sk_fault_counters kind_ctr;
static _Atomic uint64_t c_up_aborts, c_up_resets, c_slots_full;

/* main thread state */
static struct {
    struct ev_loop *loop;
    const struct sk_snapshot *(*snapshot)(void);
    struct chaos_rule *rules; /* insertion order */
    size_t n;
    uint64_t next_id;
} M = {.next_id = 1};

/* worker thread state: each slot touched only by its worker */
static struct chaos_set *wset[SK_MAX_WORKERS];

/* ---- refcounting -------------------------------------------------------------------- */

static void rule_ref(struct chaos_rule *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

static void rule_unref(struct chaos_rule *r)
{
    if (r && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        free(r);
}

static void set_unref(struct chaos_set *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->n; i++)
        rule_unref(s->r[i]);
    free(s);
}

/* ---- publishing to workers ----------------------------------------------------------- */

static void apply_set(struct sk_worker *w, void *arg)
{
    struct chaos_set *old = wset[w->id];
    wset[w->id] = arg;
    set_unref(old);
}

static void publish(void)
{
    struct chaos_set *s = NULL;
    if (M.n) {
        s = malloc(sizeof(*s) + M.n * sizeof(s->r[0]));
        if (!s) {
            sk_error("chaos: out of memory building the rule set; workers keep the old one");
            return;
        }
        atomic_init(&s->refs, 1);
        s->n = 0;
        s->has_down = s->has_up = false;
        for (struct chaos_rule *r = M.rules; r; r = r->next) {
            rule_ref(r);
            s->r[s->n++] = r;
            if (r->spec.leg == SK_CHAOS_LEG_UPSTREAM)
                s->has_up = true;
            else
                s->has_down = true;
        }
    }
    for (int i = 0; i < sk_nworkers && i < SK_MAX_WORKERS; i++) {
        struct sk_msg *m = calloc(1, sizeof(*m));
        if (!m) {
            sk_error("chaos: out of memory posting rules to worker %d", i);
            continue;
        }
        m->kind = SK_MSG_CALL;
        m->fn = apply_set;
        if (s)
            atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
        m->arg = s;
        sk_worker_post(&sk_workers[i], m);
    }
    set_unref(s);
}

/* ---- the filter slot (worker) ---------------------------------------------------------- */

static struct chaos_rule *slot_rule(const struct sk_filter_slot *slot)
{
    return SK_CONTAINER_OF((struct sk_fault_cfg *)slot->cfg, struct chaos_rule, fc);
}

static int chaos_on_request(struct sk_stream *st, struct sk_filter_slot *slot)
{
    return sk_fault_filter.on_request(st, slot);
}

static void chaos_on_destroy(struct sk_stream *st, struct sk_filter_slot *slot)
{
    sk_fault_filter.on_destroy(st, slot);
    if (slot->cfg)
        rule_unref(slot_rule(slot));
    slot->cfg = NULL;
}

static size_t chaos_on_response_data(struct sk_stream *st, struct sk_filter_slot *slot, size_t n)
{
    return sk_fault_filter.on_response_data(st, slot, n);
}

static const struct sk_http_filter_vt chaos_vt = {
    .type_name = "skiff.chaos.runtime_rule",
    .on_request = chaos_on_request,
    .on_destroy = chaos_on_destroy,
    .on_response_data = chaos_on_response_data,
};

static bool name_is(const char *a, const char *b)
{
    return a && strcmp(a, b) == 0;
}

static bool target_ok(const struct chaos_rule *r, const struct sk_stream *st)
{
    const char *t = r->spec.target;
    switch (r->spec.target_kind) {
    case SK_CHAOS_T_LISTENER:
        return st->listener && name_is(st->listener->name, t);
    case SK_CHAOS_T_ROUTE:
        return st->route && name_is(st->route->name, t);
    case SK_CHAOS_T_VHOST:
        return st->vhost && name_is(st->vhost->name, t);
    case SK_CHAOS_T_CLUSTER:
        return st->cluster && name_is(st->cluster->name, t);
    }
    return false;
}

void sk_chaos_attach(struct sk_stream *st)
{
    if (!st->w || st->w->id < 0 || st->w->id >= SK_MAX_WORKERS)
        return;
    struct chaos_set *s = wset[st->w->id];
    if (!s || !s->has_down)
        return;
    uint8_t at = 0; /* chaos slots go first, in rule order */
    for (size_t i = 0; i < s->n; i++) {
        struct chaos_rule *r = s->r[i];
        if (r->spec.leg != SK_CHAOS_LEG_DOWNSTREAM || !target_ok(r, st))
            continue;
        if (st->nfilters >= SK_MAX_HTTP_FILTERS) {
            atomic_fetch_add_explicit(&c_slots_full, 1, memory_order_relaxed);
            break;
        }
        memmove(&st->filters[at + 1], &st->filters[at],
                (size_t)(st->nfilters - at) * sizeof(st->filters[0]));
        rule_ref(r);
        st->filters[at] = (struct sk_filter_slot){&chaos_vt, &r->fc, NULL};
        st->nfilters++;
        at++;
    }
}

int sk_chaos_upstream_attempt(struct sk_stream *st)
{
    if (!st->w || st->w->id < 0 || st->w->id >= SK_MAX_WORKERS)
        return 0;
    struct chaos_set *s = wset[st->w->id];
    if (!s || !s->has_up)
        return 0;
    for (size_t i = 0; i < s->n; i++) {
        struct chaos_rule *r = s->r[i];
        if (r->spec.leg != SK_CHAOS_LEG_UPSTREAM || !target_ok(r, st) ||
            !sk_stream_headers_match(st, r->hm, r->spec.nhdrs))
            continue;
        if (!sk_fault_roll(st, (struct sk_fraction){r->spec.abort_ppm, 1000000}))
            continue;
        st->fault_injected = true;
        if (r->spec.abort_kind == SK_CHAOS_ABORT_RESET) {
            atomic_fetch_add_explicit(&r->up_resets, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&c_up_resets, 1, memory_order_relaxed);
            return -1;
        }
        atomic_fetch_add_explicit(&r->up_aborts, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&c_up_aborts, 1, memory_order_relaxed);
        return (int)r->spec.abort_code;
    }
    return 0;
}

/* ---- the rule list (main thread) ---------------------------------------------------------- */

static void unlink_rule(struct chaos_rule *r)
{
    for (struct chaos_rule **pp = &M.rules; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            M.n--;
            break;
        }
    r->next = NULL;
    ev_timer_stop(M.loop, &r->ttl);
    rule_unref(r);
}

static void ttl_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct chaos_rule *r = t->data;
    sk_info(
        "chaos: rule %llu expired after %.1f s (%llu delays, %llu aborts, %llu rate limits, "
        "%llu mid-stream, %llu upstream aborts, %llu upstream resets)",
        (unsigned long long)r->id, r->spec.ttl_s, (unsigned long long)atomic_load(&r->ctr.delays),
        (unsigned long long)atomic_load(&r->ctr.aborts),
        (unsigned long long)atomic_load(&r->ctr.rl), (unsigned long long)atomic_load(&r->ctr.mid),
        (unsigned long long)atomic_load(&r->up_aborts),
        (unsigned long long)atomic_load(&r->up_resets));
    unlink_rule(r);
    publish();
}

static struct chaos_rule *rule_new(const struct sk_chaos_spec *spec)
{
    struct chaos_rule *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    r->spec = *spec;
    r->id = M.next_id++;
    for (size_t i = 0; i < spec->nhdrs; i++) {
        const struct sk_chaos_hdr *h = &r->spec.hdrs[i];
        struct sk_header_match *m = &r->hm[i];
        m->name = (char *)h->name;
        m->name_len = strlen(h->name);
        m->value = (char *)h->value;
        m->value_len = strlen(h->value);
        m->kind = h->kind == SK_CHAOS_H_PREFIX    ? SK_STR_PREFIX
                  : h->kind == SK_CHAOS_H_PRESENT ? SK_STR_PRESENT
                                                  : SK_STR_EXACT;
        m->present = true;
    }
    struct sk_fault_cfg *c = &r->fc;
    c->magic = SK_FAULT_CFG_MAGIC;
    c->headers = r->hm;
    c->nheaders = spec->nhdrs;
    if (spec->has_delay) {
        c->delay_kind = SK_FAULT_DELAY_FIXED;
        c->delay_ms = spec->delay_ms;
        c->delay_pct = (struct sk_fraction){spec->delay_ppm, 1000000};
    }
    if (spec->abort_kind == SK_CHAOS_ABORT_HTTP) {
        c->abort_kind = SK_FAULT_ABORT_HTTP;
        c->abort_http_status = spec->abort_code;
    } else if (spec->abort_kind == SK_CHAOS_ABORT_GRPC) {
        c->abort_kind = SK_FAULT_ABORT_GRPC;
        c->abort_grpc_status = spec->abort_code;
    }
    c->abort_pct = (struct sk_fraction){spec->abort_ppm, 1000000};
    if (spec->has_rl) {
        c->rl_kind = SK_FAULT_RL_FIXED;
        c->rl_kbps = spec->rl_kbps;
        c->rl_pct = (struct sk_fraction){spec->rl_ppm, 1000000};
    }
    if (spec->mid_kind != SK_CHAOS_MID_NONE) {
        c->mid_kind = spec->mid_kind; /* same values as enum sk_fault_mid_kind */
        c->mid_after_bytes = spec->mid_after_bytes;
        c->mid_grpc_status = spec->mid_grpc_status;
        c->mid_rst_code = spec->mid_rst_code;
        c->mid_pct = (struct sk_fraction){spec->mid_ppm, 1000000};
    }
    c->ctr_rule = &r->ctr;
    c->ctr_kind = &kind_ctr;
    snprintf(r->detail, sizeof(r->detail), "chaos rule %llu abort", (unsigned long long)r->id);
    c->abort_detail = r->detail;
    return r;
}

static bool vhosts_have(const struct sk_route_config *rc, int kind, const char *name)
{
    for (size_t v = 0; rc && v < rc->nvhosts; v++) {
        if (kind == SK_CHAOS_T_VHOST && name_is(rc->vhosts[v].name, name))
            return true;
        for (size_t k = 0; kind == SK_CHAOS_T_ROUTE && k < rc->vhosts[v].nroutes; k++)
            if (name_is(rc->vhosts[v].routes[k].name, name))
                return true;
    }
    return false;
}

/* Does the serving config have a listener / route / vhost / cluster of that name? */
static bool target_exists(int kind, const char *name)
{
    const struct sk_snapshot *s = M.snapshot ? M.snapshot() : NULL;
    if (!s)
        return true; /* nothing to check against */
    if (kind == SK_CHAOS_T_CLUSTER)
        return sk_snapshot_find_cluster(s, name) != NULL;
    if (kind == SK_CHAOS_T_LISTENER)
        return sk_snapshot_find_listener(s, name) != NULL;
    for (size_t i = 0; i < s->nlisteners; i++) {
        const struct sk_listener *l = &s->listeners[i];
        for (size_t c = 0; c < l->nchains + (l->default_chain ? 1 : 0); c++) {
            const struct sk_filter_chain *fc = c < l->nchains ? &l->chains[c] : l->default_chain;
            if (fc->hcm && vhosts_have(fc->hcm->routes, kind, name))
                return true;
        }
    }
    return false;
}

/* ---- JSON / text output ------------------------------------------------------------------ */

#define LIT(b, s) sk_buf_append((b), s, sizeof(s) - 1)

static void json_str(struct sk_buf *b, const char *s)
{
    LIT(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sk_buf_appendf(b, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            sk_buf_appendf(b, "\\u%04x", c);
        else
            sk_buf_append(b, s, 1);
    }
    LIT(b, "\"");
}

static const char *const target_names[] = {"", "listener", "route", "vhost", "cluster"};
static const char *const mid_names[] = {"", "reset", "truncate", "grpc_error"};

static double pct_of(uint32_t ppm)
{
    return (double)ppm / 10000.0;
}

static void rule_json(struct sk_buf *b, const struct chaos_rule *r)
{
    const struct sk_chaos_spec *s = &r->spec;
    sk_buf_appendf(b, "{\"id\": %llu, \"target\": {\"%s\": ", (unsigned long long)r->id,
                   target_names[s->target_kind]);
    json_str(b, s->target);
    sk_buf_appendf(b, "}, \"leg\": \"%s\", \"headers\": [",
                   s->leg == SK_CHAOS_LEG_UPSTREAM ? "upstream" : "downstream");
    for (size_t i = 0; i < s->nhdrs; i++) {
        const struct sk_chaos_hdr *h = &s->hdrs[i];
        LIT(b, "{\"name\": ");
        json_str(b, h->name);
        if (h->kind == SK_CHAOS_H_PRESENT) {
            LIT(b, ", \"present\": true}");
        } else {
            sk_buf_appendf(b, ", \"%s\": ", h->kind == SK_CHAOS_H_PREFIX ? "prefix" : "exact");
            json_str(b, h->value);
            LIT(b, "}");
        }
        if (i + 1 < s->nhdrs)
            LIT(b, ", ");
    }
    LIT(b, "], \"fault\": {");
    bool first = true;
    if (s->has_delay) {
        sk_buf_appendf(b, "\"delay\": {\"fixed_ms\": %llu, \"percent\": %g}",
                       (unsigned long long)s->delay_ms, pct_of(s->delay_ppm));
        first = false;
    }
    if (s->abort_kind != SK_CHAOS_ABORT_NONE) {
        sk_buf_appendf(b, "%s\"abort\": {", first ? "" : ", ");
        if (s->abort_kind == SK_CHAOS_ABORT_HTTP)
            sk_buf_appendf(b, "\"http_status\": %u", s->abort_code);
        else if (s->abort_kind == SK_CHAOS_ABORT_GRPC)
            sk_buf_appendf(b, "\"grpc_status\": %u", s->abort_code);
        else
            LIT(b, "\"reset\": true");
        sk_buf_appendf(b, ", \"percent\": %g}", pct_of(s->abort_ppm));
        first = false;
    }
    if (s->has_rl) {
        sk_buf_appendf(b, "%s\"rate_limit\": {\"kbps\": %llu, \"percent\": %g}", first ? "" : ", ",
                       (unsigned long long)s->rl_kbps, pct_of(s->rl_ppm));
        first = false;
    }
    if (s->mid_kind != SK_CHAOS_MID_NONE) {
        sk_buf_appendf(b, "%s\"midstream\": {\"action\": \"%s\", \"after_bytes\": %llu",
                       first ? "" : ", ", mid_names[s->mid_kind],
                       (unsigned long long)s->mid_after_bytes);
        if (s->mid_kind == SK_CHAOS_MID_GRPC)
            sk_buf_appendf(b, ", \"grpc_status\": %u", s->mid_grpc_status);
        if (s->mid_kind == SK_CHAOS_MID_RESET && s->mid_rst_code >= 0)
            sk_buf_appendf(b, ", \"rst_code\": %d", (int)s->mid_rst_code);
        sk_buf_appendf(b, ", \"percent\": %g}", pct_of(s->mid_ppm));
    }
    double left = r->expires - ev_now(M.loop);
    sk_buf_appendf(b, "}, \"ttl_s\": %g, \"ttl_left_s\": %.1f, \"description\": ", s->ttl_s,
                   left > 0 ? left : 0.0);
    json_str(b, s->description);
    sk_buf_appendf(b,
                   ", \"counts\": {\"delays\": %llu, \"aborts\": %llu, \"rate_limits\": %llu, "
                   "\"midstream\": %llu, \"upstream_aborts\": %llu, \"upstream_resets\": %llu}}",
                   (unsigned long long)atomic_load(&r->ctr.delays),
                   (unsigned long long)atomic_load(&r->ctr.aborts),
                   (unsigned long long)atomic_load(&r->ctr.rl),
                   (unsigned long long)atomic_load(&r->ctr.mid),
                   (unsigned long long)atomic_load(&r->up_aborts),
                   (unsigned long long)atomic_load(&r->up_resets));
}

static void rule_text(struct sk_buf *b, const struct chaos_rule *r)
{
    const struct sk_chaos_spec *s = &r->spec;
    char fault[160] = "";
    size_t fl = 0;
#define FADD(...)                                                                                  \
    do {                                                                                           \
        if (fl < sizeof(fault)) {                                                                  \
            int w_ = snprintf(fault + fl, sizeof(fault) - fl, __VA_ARGS__);                        \
            fl += w_ > 0 ? (size_t)w_ : 0;                                                         \
        }                                                                                          \
    } while (0)
    if (s->abort_kind == SK_CHAOS_ABORT_HTTP)
        FADD("abort %u %g%%", s->abort_code, pct_of(s->abort_ppm));
    else if (s->abort_kind == SK_CHAOS_ABORT_GRPC)
        FADD("abort grpc %u %g%%", s->abort_code, pct_of(s->abort_ppm));
    else if (s->abort_kind == SK_CHAOS_ABORT_RESET)
        FADD("reset %g%%", pct_of(s->abort_ppm));
    if (s->has_delay)
        FADD("%sdelay %llums %g%%", fl ? ", " : "", (unsigned long long)s->delay_ms,
             pct_of(s->delay_ppm));
    if (s->has_rl)
        FADD("%srate %lluKiB/s %g%%", fl ? ", " : "", (unsigned long long)s->rl_kbps,
             pct_of(s->rl_ppm));
    if (s->mid_kind != SK_CHAOS_MID_NONE)
        FADD("%s%s after %lluB %g%%", fl ? ", " : "", mid_names[s->mid_kind],
             (unsigned long long)s->mid_after_bytes, pct_of(s->mid_ppm));
#undef FADD
    char tgt[SK_CHAOS_NAME_MAX + 16];
    snprintf(tgt, sizeof(tgt), "%s=%s", target_names[s->target_kind], s->target);
    double left = r->expires - ev_now(M.loop);
    sk_buf_appendf(
        b,
        "%-4llu %-24s %-10s %-36s %7.1fs  delays=%llu aborts=%llu rl=%llu mid=%llu "
        "up_aborts=%llu up_resets=%llu%s%s%s\n",
        (unsigned long long)r->id, tgt, s->leg == SK_CHAOS_LEG_UPSTREAM ? "upstream" : "downstream",
        fault, left > 0 ? left : 0.0, (unsigned long long)atomic_load(&r->ctr.delays),
        (unsigned long long)atomic_load(&r->ctr.aborts),
        (unsigned long long)atomic_load(&r->ctr.rl), (unsigned long long)atomic_load(&r->ctr.mid),
        (unsigned long long)atomic_load(&r->up_aborts),
        (unsigned long long)atomic_load(&r->up_resets), s->nhdrs ? " (header match)" : "",
        s->description[0] ? "  # " : "", s->description);
}

/* ---- admin handler -------------------------------------------------------------------------- */

static int msg(struct sk_buf *out, int status, const char *text)
{
    LIT(out, "{\"error\": ");
    json_str(out, text);
    LIT(out, "}\n");
    return status;
}

static bool eq(const char *p, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

static size_t clear_all(void)
{
    size_t n = M.n;
    while (M.rules)
        unlink_rule(M.rules);
    return n;
}

static int add_rule(const char *body, size_t blen, struct sk_buf *out)
{
    struct sk_chaos_spec spec;
    char err[SK_CHAOS_NAME_MAX + 128];
    if (blen == 0)
        return msg(out, 400, "empty body: POST a JSON rule (target, fault, ttl_s)");
    if (sk_chaos_parse(body, blen, &spec, err, sizeof(err)) < 0)
        return msg(out, 400, err);
    if (!target_exists(spec.target_kind, spec.target)) {
        snprintf(err, sizeof(err), "target.%s: no %s named '%s' in the serving config",
                 target_names[spec.target_kind], target_names[spec.target_kind], spec.target);
        return msg(out, 400, err);
    }
    if (M.n >= SK_CHAOS_MAX_RULES) {
        snprintf(err, sizeof(err), "too many rules (at most %d): delete some first",
                 SK_CHAOS_MAX_RULES);
        return msg(out, 409, err);
    }
    struct chaos_rule *r = rule_new(&spec);
    if (!r)
        return msg(out, 500, "out of memory");
    r->created = ev_now(M.loop);
    r->expires = r->created + spec.ttl_s;
    ev_timer_init(&r->ttl, ttl_cb, spec.ttl_s, 0.);
    r->ttl.data = r;
    ev_timer_start(M.loop, &r->ttl);
    struct chaos_rule **pp = &M.rules;
    while (*pp)
        pp = &(*pp)->next;
    *pp = r;
    M.n++;
    publish();
    sk_info("chaos: rule %llu added: %s %s=%s, ttl %.1f s", (unsigned long long)r->id,
            spec.leg == SK_CHAOS_LEG_UPSTREAM ? "upstream" : "downstream",
            target_names[spec.target_kind], spec.target, spec.ttl_s);
    rule_json(out, r);
    LIT(out, "\n");
    return 200;
}

int sk_chaos_admin(const char *method, size_t mlen, const char *path, size_t plen,
                   const char *query, size_t qlen, const char *body, size_t blen,
                   struct sk_buf *out, const char **ctype)
{
    *ctype = "application/json";
    bool get = eq(method, mlen, "GET") || eq(method, mlen, "HEAD");
    bool post = eq(method, mlen, "POST");
    bool del = eq(method, mlen, "DELETE");
    static const char base[] = "/chaos/faults";
    size_t bl = sizeof(base) - 1;
    if (!M.loop)
        return msg(out, 503, "chaos API not initialised");
    if (plen == bl && memcmp(path, base, bl) == 0) {
        if (get) {
            bool text = qlen == 11 && memcmp(query, "format=text", 11) == 0;
            if (text) {
                *ctype = "text/plain";
                sk_buf_appendf(out, "%-4s %-24s %-10s %-36s %8s  %s\n", "ID", "TARGET", "LEG",
                               "FAULT", "TTL_LEFT", "INJECTED");
                for (struct chaos_rule *r = M.rules; r; r = r->next)
                    rule_text(out, r);
                if (!M.n)
                    LIT(out, "(no rules)\n");
                return 200;
            }
            LIT(out, "{\"rules\": [");
            for (struct chaos_rule *r = M.rules; r; r = r->next) {
                rule_json(out, r);
                if (r->next)
                    LIT(out, ",\n");
            }
            LIT(out, "]}\n");
            return 200;
        }
        if (post)
            return add_rule(body, blen, out);
        if (del) {
            size_t n = clear_all();
            publish();
            sk_info("chaos: kill switch: %zu rule(s) removed", n);
            sk_buf_appendf(out, "{\"deleted\": %zu}\n", n);
            return 200;
        }
        return msg(out, 405, "use GET, POST or DELETE");
    }
    if (plen > bl + 1 && memcmp(path, base, bl) == 0 && path[bl] == '/') {
        const char *id = path + bl + 1;
        size_t il = plen - bl - 1;
        uint64_t v = 0;
        bool ok = il > 0 && il <= 18;
        for (size_t i = 0; ok && i < il; i++) {
            ok = id[i] >= '0' && id[i] <= '9';
            v = v * 10 + (uint64_t)(id[i] - '0');
        }
        if (!ok)
            return msg(out, 404, "no such rule (ids are numbers)");
        struct chaos_rule *r = M.rules;
        while (r && r->id != v)
            r = r->next;
        if (!r)
            return msg(out, 404, "no such rule (expired or deleted?)");
        if (get) {
            rule_json(out, r);
            LIT(out, "\n");
            return 200;
        }
        if (!del)
            return msg(out, 405, "use GET or DELETE");
        sk_info("chaos: rule %llu deleted", (unsigned long long)v);
        unlink_rule(r);
        publish();
        sk_buf_appendf(out, "{\"deleted\": 1, \"id\": %llu}\n", (unsigned long long)v);
        return 200;
    }
    return msg(out, 404, "no such chaos endpoint (use /chaos/faults)");
}

/* ---- stats -------------------------------------------------------------------------------------
 */

void sk_chaos_stats(struct sk_buf *out, bool prom)
{
    const struct {
        const char *name;
        unsigned long long v;
        bool gauge;
    } v[] = {
        {"rules_active", (unsigned long long)M.n, true},
        {"delays_injected", (unsigned long long)atomic_load(&kind_ctr.delays), false},
        {"aborts_injected", (unsigned long long)atomic_load(&kind_ctr.aborts), false},
        {"response_rl_injected", (unsigned long long)atomic_load(&kind_ctr.rl), false},
        {"midstream_injected", (unsigned long long)atomic_load(&kind_ctr.mid), false},
        {"upstream_aborts_injected", (unsigned long long)atomic_load(&c_up_aborts), false},
        {"upstream_resets_injected", (unsigned long long)atomic_load(&c_up_resets), false},
        {"rules_skipped_filter_slots_full", (unsigned long long)atomic_load(&c_slots_full), false},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        if (prom)
            sk_buf_appendf(out, "# TYPE skiff_chaos_%s %s\nskiff_chaos_%s %llu\n", v[i].name,
                           v[i].gauge ? "gauge" : "counter", v[i].name, v[i].v);
        else
            sk_buf_appendf(out, "chaos.%s: %llu\n", v[i].name, v[i].v);
    }
    static const char *const kinds[] = {"delay",     "abort",          "response_rl",
                                        "midstream", "upstream_abort", "upstream_reset"};
    if (prom)
        LIT(out, "# TYPE skiff_chaos_rule_faults_injected counter\n");
    for (struct chaos_rule *r = M.rules; r; r = r->next) {
        unsigned long long c[6] = {atomic_load(&r->ctr.delays), atomic_load(&r->ctr.aborts),
                                   atomic_load(&r->ctr.rl),     atomic_load(&r->ctr.mid),
                                   atomic_load(&r->up_aborts),  atomic_load(&r->up_resets)};
        for (int k = 0; k < 6; k++) {
            if (prom)
                sk_buf_appendf(out,
                               "skiff_chaos_rule_faults_injected{rule=\"%llu\",kind=\"%s\"} %llu\n",
                               (unsigned long long)r->id, kinds[k], c[k]);
            else
                sk_buf_appendf(out, "chaos.rule.%llu.%s_injected: %llu\n",
                               (unsigned long long)r->id, kinds[k], c[k]);
        }
    }
}

/* ---- life cycle --------------------------------------------------------------------------------
 */

void sk_chaos_init(struct ev_loop *main_loop, const struct sk_snapshot *(*snapshot)(void))
{
    M.loop = main_loop;
    M.snapshot = snapshot;
}

void sk_chaos_shutdown(void)
{
    if (M.loop)
        clear_all();
    for (int i = 0; i < SK_MAX_WORKERS; i++) {
        set_unref(wset[i]);
        wset[i] = NULL;
    }
}
