/* The HTTP fault injection filter (Envoy's envoy.filters.http.fault).
 *
 * on_request, in Envoy's order: target checks (upstream_cluster,
 * downstream_nodes, headers), then the response rate limit decision, then
 * the delay (a timer; the chain resumes from it), then the abort (a local
 * reply). Each decision rolls its own random number. A stream counts once
 * in fault.active_faults however many faults it gets; max_active_faults is
 * checked (fuzzily, like every breaker) each time a fault is about to start,
 * and a refusal counts in fault.faults_overflow.
 *
 * Header control (x-envoy-fault-*) only exists where the config asks for
 * it (header_delay / header_abort / header_limit), and the
 * *-percentage headers can only lower the configured percentage.
 *
 * Faults are downstream-side: an abort answers before the router picks a
 * host, so it is never retried; a delay holds the request before the first
 * attempt (retries and timeouts start after it).
 *
 * The runtime chaos rules (src/filters/chaos.c) run this same code with a
 * config of their own: they count into the rule's counters (not fault.*),
 * stay out of active_faults, and may add a mid-stream fault (cut the response
 * after N body bytes, from on_response_data + a zero timer). */
#include "skiff/fault.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "skiff/buf.h"
#include "skiff/chaos.h"
#include "skiff/log.h"
#include "skiff/stream.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

/* ---- counters ------------------------------------------------------------------ */

static _Atomic uint64_t c_delays, c_aborts, c_rl, c_overflow;
static _Atomic int64_t g_active;

void sk_fault_stats(struct sk_buf *out, bool prom)
{
    const struct {
        const char *name;
        long long v;
        bool gauge;
    } v[] = {
        {"delays_injected", (long long)atomic_load(&c_delays), false},
        {"aborts_injected", (long long)atomic_load(&c_aborts), false},
        {"response_rl_injected", (long long)atomic_load(&c_rl), false},
        {"faults_overflow", (long long)atomic_load(&c_overflow), false},
        {"active_faults", (long long)atomic_load(&g_active), true},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        if (prom)
            sk_buf_appendf(out, "# TYPE skiff_fault_%s %s\nskiff_fault_%s %lld\n", v[i].name,
                           v[i].gauge ? "gauge" : "counter", v[i].name, v[i].v);
        else
            sk_buf_appendf(out, "fault.%s: %lld\n", v[i].name, v[i].v);
    }
    sk_chaos_stats(out, prom);
}

enum { K_DELAY, K_ABORT, K_RL, K_MID };

/* One injected fault: into the chaos rule's and kind counters for runtime
 * rules, else into fault.* */
static void count(const struct sk_fault_cfg *c, int kind)
{
    if (c->ctr_rule || c->ctr_kind) {
        struct sk_fault_counters *v[2] = {c->ctr_rule, c->ctr_kind};
        for (int i = 0; i < 2; i++) {
            if (!v[i])
                continue;
            _Atomic uint64_t *x = kind == K_DELAY   ? &v[i]->delays
                                  : kind == K_ABORT ? &v[i]->aborts
                                  : kind == K_RL    ? &v[i]->rl
                                                    : &v[i]->mid;
            atomic_fetch_add_explicit(x, 1, memory_order_relaxed);
        }
        return;
    }
    if (kind == K_MID)
        return; /* config faults have no mid-stream kinds */
    atomic_fetch_add_explicit(kind == K_DELAY ? &c_delays : kind == K_ABORT ? &c_aborts : &c_rl, 1,
                              memory_order_relaxed);
}

/* ---- random numbers: one generator per worker thread ---------------------------- */

static uint64_t seed_base;
static pthread_once_t seed_once = PTHREAD_ONCE_INIT;
static _Thread_local uint64_t rng_state;
static _Thread_local bool rng_ready;

static void seed_init(void)
{
    const char *e = getenv("SKIFF_FAULT_SEED");
    if (e && *e) {
        seed_base = strtoull(e, NULL, 0);
        sk_info("fault filter: SKIFF_FAULT_SEED=%llu (reproducible fault selection)",
                (unsigned long long)seed_base);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed_base = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                ((uint64_t)getpid() << 32);
}

/* splitmix64: good enough spread from consecutive seeds */
static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t roll(const struct sk_stream *st)
{
    if (!rng_ready) {
        pthread_once(&seed_once, seed_init);
        uint64_t s = seed_base ^ (0x5851f42d4c957f2dull * (uint64_t)(st->w ? st->w->id + 1 : 1));
        rng_state = splitmix(&s);
        rng_ready = true;
    }
    return splitmix(&rng_state);
}

static bool fraction_hit(const struct sk_stream *st, struct sk_fraction f)
{
    if (f.numerator == 0 || f.denominator == 0)
        return false;
    return roll(st) % f.denominator < f.numerator;
}

bool sk_fault_roll(const struct sk_stream *st, struct sk_fraction f)
{
    return fraction_hit(st, f);
}

/* ---- request headers ------------------------------------------------------------- */

static bool hdr_u64(const struct sk_stream *st, const char *name, uint64_t *out)
{
    struct sk_hdr *h = sk_hdrs_get(&st->req, name, strlen(name));
    if (!h || h->vlen == 0 || h->vlen > 19)
        return false;
    uint64_t v = 0;
    for (uint32_t i = 0; i < h->vlen; i++) {
        char c = h->value[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (uint64_t)(c - '0');
    }
    *out = v;
    return true;
}

/* The configured percentage, lowered (never raised) by `hdr` when header
 * control is on for this fault. */
static struct sk_fraction pct(const struct sk_stream *st, struct sk_fraction f, bool header_ctl,
                              const char *hdr)
{
    uint64_t v;
    if (header_ctl && hdr_u64(st, hdr, &v) && v < f.numerator)
        f.numerator = (uint32_t)v;
    return f;
}

/* ---- the filter --------------------------------------------------------------------- */

struct fault_state {
    struct sk_stream *st;
    struct sk_filter_slot *slot;
    const struct sk_fault_cfg *cfg;
    bool active; /* counted in active_faults */
    ev_timer delay;
    /* response rate limit: a token bucket of 16 slices a second (Envoy) */
    bool rl;
    uint64_t slice_bytes;
    double tokens, last;
    bool saw_data;
    /* mid-stream fault: body bytes still allowed, then mid_t cuts the stream */
    bool mid, mid_fired;
    uint64_t mid_left;
    ev_timer mid_t;
};

#define RL_SLICES 16

static size_t rl_allow(struct fault_state *fs, struct sk_stream *st, size_t n);

static bool try_active(struct fault_state *fs)
{
    if (fs->active || fs->cfg->ctr_rule || fs->cfg->ctr_kind)
        return true; /* runtime chaos rules stay out of active_faults */
    if (fs->cfg->has_max_active &&
        atomic_load_explicit(&g_active, memory_order_relaxed) >= (int64_t)fs->cfg->max_active_faults) {
        atomic_fetch_add_explicit(&c_overflow, 1, memory_order_relaxed);
        return false;
    }
    atomic_fetch_add_explicit(&g_active, 1, memory_order_relaxed);
    fs->active = true;
    return true;
}

static bool target_matches(const struct sk_stream *st, const struct sk_fault_cfg *c)
{
    if (c->upstream_cluster) {
        if (!st->cluster || !st->cluster->name || strcmp(st->cluster->name, c->upstream_cluster))
            return false;
    }
    if (c->ndownstream_nodes) {
        struct sk_hdr *h = sk_hdrs_get(&st->req, "x-envoy-downstream-service-node", 31);
        if (!h)
            return false;
        bool found = false;
        for (size_t i = 0; i < c->ndownstream_nodes && !found; i++)
            found = strlen(c->downstream_nodes[i]) == h->vlen &&
                    memcmp(c->downstream_nodes[i], h->value, h->vlen) == 0;
        if (!found)
            return false;
    }
    return sk_stream_headers_match(st, c->headers, c->nheaders);
}

static void setup_rate_limit(struct fault_state *fs)
{
    const struct sk_fault_cfg *c = fs->cfg;
    struct sk_stream *st = fs->st;
    if (c->rl_kind == SK_FAULT_RL_NONE)
        return;
    uint64_t kbps = c->rl_kbps;
    bool hdr = c->rl_kind == SK_FAULT_RL_HEADER;
    if (hdr && (!hdr_u64(st, "x-envoy-fault-throughput-response", &kbps) || kbps == 0))
        return;
    if (!fraction_hit(st, pct(st, c->rl_pct, hdr, "x-envoy-fault-throughput-response-percentage")))
        return;
    if (!try_active(fs))
        return;
    count(c, K_RL);
    st->fault_injected = true;
    fs->rl = true;
    fs->slice_bytes = kbps * 1024 / RL_SLICES;
    if (!fs->slice_bytes)
        fs->slice_bytes = 1;
}

/* Envoy: http_status wins over grpc_status; a gRPC abort answers HTTP 200. */
static bool abort_status(struct fault_state *fs, int *http, int *grpc)
{
    const struct sk_fault_cfg *c = fs->cfg;
    struct sk_stream *st = fs->st;
    *grpc = -1;
    if (c->abort_kind == SK_FAULT_ABORT_NONE)
        return false;
    bool hdr = c->abort_kind == SK_FAULT_ABORT_HEADER;
    if (!fraction_hit(st, pct(st, c->abort_pct, hdr, "x-envoy-fault-abort-request-percentage")))
        return false;
    switch (c->abort_kind) {
    case SK_FAULT_ABORT_HTTP:
        *http = (int)c->abort_http_status;
        return true;
    case SK_FAULT_ABORT_GRPC:
        *http = 200;
        *grpc = (int)c->abort_grpc_status;
        return true;
    default: {
        uint64_t v;
        if (hdr_u64(st, "x-envoy-fault-abort-request", &v) && v >= 200 && v < 600) {
            *http = (int)v;
            return true;
        }
        if (hdr_u64(st, "x-envoy-fault-abort-grpc-request", &v) && v <= 254) {
            *http = 200;
            *grpc = (int)v;
            return true;
        }
        return false;
    }
    }
}

/* SK_FILTER_STOP if the request was aborted (answered). */
static int maybe_abort(struct fault_state *fs)
{
    int http = 0, grpc = -1;
    if (!abort_status(fs, &http, &grpc) || !try_active(fs))
        return SK_FILTER_CONTINUE;
    struct sk_stream *st = fs->st;
    count(fs->cfg, K_ABORT);
    st->fault_injected = true;
    if (grpc >= 0)
        st->local_grpc_code = (uint8_t)(grpc + 1);
    sk_stream_local_reply(st, SK_TERM_FAULT_ABORT, http,
                          fs->cfg->abort_detail ? fs->cfg->abort_detail : "fault filter abort");
    return SK_FILTER_STOP;
}

static void delay_done(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct fault_state *fs = t->data;
    ev_timer_stop(loop, t);
    if (maybe_abort(fs) == SK_FILTER_STOP)
        return;
    sk_stream_continue(fs->st);
}

static int fault_on_request(struct sk_stream *st, struct sk_filter_slot *slot)
{
    const struct sk_fault_cfg *c = slot->cfg;
    if (!c || c->magic != SK_FAULT_CFG_MAGIC)
        return SK_FILTER_CONTINUE; /* a per-route config of another type: no fault */
    if (!target_matches(st, c))
        return SK_FILTER_CONTINUE;
    struct fault_state *fs = sk_arena_alloc(&st->arena, sizeof(*fs));
    if (!fs)
        return SK_FILTER_CONTINUE;
    memset(fs, 0, sizeof(*fs));
    fs->st = st;
    fs->slot = slot;
    fs->cfg = c;
    slot->state = fs;
    setup_rate_limit(fs);
    if (c->mid_kind != SK_FAULT_MID_NONE && fraction_hit(st, c->mid_pct) && try_active(fs)) {
        fs->mid = true;
        fs->mid_left = c->mid_after_bytes;
        st->fault_injected = true;
    }
    if (c->delay_kind != SK_FAULT_DELAY_NONE) {
        bool hdr = c->delay_kind == SK_FAULT_DELAY_HEADER;
        uint64_t ms = c->delay_ms;
        if (fraction_hit(st, pct(st, c->delay_pct, hdr, "x-envoy-fault-delay-request-percentage")) &&
            (!hdr || hdr_u64(st, "x-envoy-fault-delay-request", &ms)) && ms > 0 &&
            try_active(fs)) {
            count(c, K_DELAY);
            st->fault_injected = true;
            st->fault_delayed = true;
            ev_timer_init(&fs->delay, delay_done, (double)ms / 1000.0, 0.);
            fs->delay.data = fs;
            ev_timer_start(st->w->loop, &fs->delay);
            sk_debug("conn %llu stream %u: fault delay %llu ms", (unsigned long long)st->conn_id,
                     st->stream_id, (unsigned long long)ms);
            return SK_FILTER_STOP;
        }
    }
    return maybe_abort(fs);
}

static void fault_on_destroy(struct sk_stream *st, struct sk_filter_slot *slot)
{
    struct fault_state *fs = slot->state;
    if (!fs)
        return;
    ev_timer_stop(st->w->loop, &fs->delay);
    ev_timer_stop(st->w->loop, &fs->mid_t);
    if (fs->active)
        atomic_fetch_sub_explicit(&g_active, 1, memory_order_relaxed);
    fs->active = false;
    slot->state = NULL;
}

/* The mid-stream cut, from a timer: outside the router's call stack, and
 * after the allowed bytes went out. Nothing of fs / st is touched after the
 * codec's reset / send_end (they may end the stream). */
static void mid_cut(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct fault_state *fs = t->data;
    struct sk_stream *st = fs->st;
    ev_timer_stop(loop, t);
    if (fs->mid_fired || st->state == SK_ST_S_DONE)
        return;
    fs->mid_fired = true;
    count(fs->cfg, K_MID);
    int kind = fs->cfg->mid_kind;
    sk_debug("conn %llu stream %u: mid-stream fault (%d) after %llu body bytes",
             (unsigned long long)st->conn_id, st->stream_id, kind,
             (unsigned long long)fs->cfg->mid_after_bytes);
    if (st->up) {
        sk_up_abort(st->up);
        st->up = NULL;
    }
    ev_timer_stop(loop, &st->timeout);
    ev_timer_stop(loop, &st->try_timer);
    ev_timer_stop(loop, &st->pace_timer);
    sk_buf_consume(&st->resp_hold, sk_buf_used(&st->resp_hold));
    st->pace_trailers = st->pace_end = false;
    if (st->cause == SK_TERM_NONE)
        st->cause = SK_TERM_FAULT_MIDSTREAM;
    if (kind == SK_FAULT_MID_RESET && fs->cfg->mid_rst_code >= 0) {
        st->reset_code_set = true;
        st->reset_code = (uint32_t)fs->cfg->mid_rst_code;
    }
    if (!st->downstream_h2 || kind == SK_FAULT_MID_RESET) {
        st->ops->reset(st); /* h1: close the connection; h2: RST_STREAM */
        return;
    }
    if (kind == SK_FAULT_MID_GRPC) {
        struct sk_hdrs tr = {0};
        char code[12];
        int cl = snprintf(code, sizeof(code), "%u", fs->cfg->mid_grpc_status);
        sk_hdrs_add(&tr, &st->arena, "grpc-status", 11, code, (size_t)cl);
        sk_hdrs_add(&tr, &st->arena, "grpc-message", 12, "fault injected mid-stream", 25);
        st->ops->send_trailers(st, &tr);
    }
    st->state = SK_ST_S_DONE;
    st->ops->send_end(st);
}

static size_t fault_on_response_data(struct sk_stream *st, struct sk_filter_slot *slot, size_t n)
{
    struct fault_state *fs = slot->state;
    if (!fs || (!fs->rl && !fs->mid))
        return n;
    size_t allow = fs->rl ? rl_allow(fs, st, n) : n;
    if (!fs->mid)
        return allow;
    if (fs->mid_fired)
        return 0;
    if (allow > fs->mid_left) {
        allow = (size_t)fs->mid_left;
        if (!ev_is_active(&fs->mid_t)) {
            ev_timer_init(&fs->mid_t, mid_cut, 0., 0.);
            fs->mid_t.data = fs;
            ev_timer_start(st->w->loop, &fs->mid_t);
        }
        st->pace_wait_ms = 1000; /* the cut comes first */
    }
    fs->mid_left -= allow;
    return allow;
}

/* Response rate limit: how many of n bytes the token bucket allows now. */
static size_t rl_allow(struct fault_state *fs, struct sk_stream *st, size_t n)
{
    double now = ev_now(st->w->loop);
    if (!fs->saw_data) {
        /* start with one slice, not a whole second's burst (Envoy) */
        fs->tokens = 1;
        fs->saw_data = true;
    } else {
        fs->tokens += (now - fs->last) * RL_SLICES;
        if (fs->tokens > RL_SLICES)
            fs->tokens = RL_SLICES;
    }
    fs->last = now;
    uint64_t need = (n + fs->slice_bytes - 1) / fs->slice_bytes;
    uint64_t have = (uint64_t)fs->tokens;
    uint64_t take = have < need ? have : need;
    fs->tokens -= (double)take;
    uint64_t allow = take * fs->slice_bytes;
    if (allow >= n)
        return n;
    /* time until the next whole token */
    double wait = (1.0 - (fs->tokens - (double)(uint64_t)fs->tokens)) / RL_SLICES;
    st->pace_wait_ms = (uint32_t)(wait * 1000.0) + 1;
    return (size_t)allow;
}

const struct sk_http_filter_vt sk_fault_filter = {
    .type_name = "envoy.extensions.filters.http.fault.v3.HTTPFault",
    .on_request = fault_on_request,
    .on_destroy = fault_on_destroy,
    .on_response_data = fault_on_response_data,
};
