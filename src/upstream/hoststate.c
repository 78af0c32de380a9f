/* Process-wide cluster/host state and outlier detection. */
#include "skiff/hoststate.h"
#include "skiff/hash.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>

#include "skiff/log.h"
#include "skiff/net.h"

/* The registry: a list (iteration order, admin) plus a hash index by name so
 * that creating 10k cluster states is not O(clusters^2) under the lock. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sk_cluster_state *reg;
static struct sk_cluster_state **reg_tab; /* chained by hnext */
static size_t reg_cap, reg_n;

/* Host lists: one lock per stripe of clusters instead of a mutex in every
 * cluster state (lookups happen at config-apply time only). */
#define HOST_LOCKS 16
static pthread_mutex_t host_locks[HOST_LOCKS] = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
    PTHREAD_MUTEX_INITIALIZER,
};

static pthread_mutex_t *host_lock(const struct sk_cluster_state *c)
{
    uintptr_t p = (uintptr_t)c;
    return &host_locks[(p >> 4 ^ p >> 10) % HOST_LOCKS];
}

void sk_cstate_lock_hosts(struct sk_cluster_state *c)
{
    pthread_mutex_lock(host_lock(c));
}

void sk_cstate_unlock_hosts(struct sk_cluster_state *c)
{
    pthread_mutex_unlock(host_lock(c));
}

int64_t sk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t name_hash(const char *s)
{
    return sk_fnv1a_str(s);
}

/* Under reg_lock, `c` already on the list. While reg_cap != 0 the table holds
 * every cluster (a grow rebuilds it from the list; a failed grow keeps the old
 * table, only with longer chains); with no table at all lookups scan the list. */
static void reg_index(struct sk_cluster_state *c)
{
    reg_n++;
    if (reg_n > reg_cap) {
        size_t ncap = reg_cap ? reg_cap * 2 : 64;
        struct sk_cluster_state **nt = calloc(ncap, sizeof(*nt));
        if (nt) {
            for (struct sk_cluster_state *x = reg; x; x = x->next) {
                size_t k = name_hash(x->name) & (ncap - 1);
                x->hnext = nt[k];
                nt[k] = x;
            }
            free(reg_tab);
            reg_tab = nt;
            reg_cap = ncap;
            return;
        }
    }
    if (reg_cap) {
        size_t k = name_hash(c->name) & (reg_cap - 1);
        c->hnext = reg_tab[k];
        reg_tab[k] = c;
    }
}

static struct sk_cluster_state *reg_find(const char *name)
{
    if (reg_cap) {
        for (struct sk_cluster_state *c = reg_tab[name_hash(name) & (reg_cap - 1)]; c; c = c->hnext)
            if (strcmp(c->name, name) == 0)
                return c;
        return NULL;
    }
    for (struct sk_cluster_state *c = reg; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

struct sk_cluster_state *sk_cstate_get(const char *name)
{
    pthread_mutex_lock(&reg_lock);
    struct sk_cluster_state *c = reg_find(name);
    if (!c) {
        size_t len = strlen(name);
        c = calloc(1, sizeof(*c) + len + 1);
        if (c) {
            memcpy(c->name, name, len + 1);
            c->next = reg;
            reg = c;
            reg_index(c);
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return c;
}

static const unsigned char *addr_bytes(const struct sockaddr_storage *ss)
{
    return (const unsigned char *)ss;
}

bool sk_hstate_addr_eq(const struct sk_host_state *h, const struct sk_sockaddr *a)
{
    return h->addr_len == a->len && memcmp(h->tail, addr_bytes(&a->ss), a->len) == 0;
}

void sk_hstate_addr(const struct sk_host_state *h, struct sk_sockaddr *out)
{
    memset(out, 0, sizeof(*out));
    memcpy(&out->ss, h->tail, h->addr_len);
    out->len = (socklen_t)h->addr_len;
}

struct sk_host_state *sk_hstate_get(struct sk_cluster_state *c, const struct sk_sockaddr *a)
{
    size_t alen = a->len <= sizeof(a->ss) ? a->len : sizeof(a->ss);
    pthread_mutex_t *lk = host_lock(c);
    pthread_mutex_lock(lk);
    struct sk_host_state *h;
    for (h = c->hosts; h; h = h->next)
        if (h->addr_len == alen && memcmp(h->tail, addr_bytes(&a->ss), alen) == 0)
            break;
    if (!h) {
        char text[INET6_ADDRSTRLEN + 16];
        sk_addr_str(a, text, sizeof(text));
        size_t tlen = strlen(text);
        h = calloc(1, offsetof(struct sk_host_state, tail) + alen + tlen + 1);
        if (h) {
            h->cl = c;
            h->addr_len = (uint32_t)alen;
            memcpy(h->tail, addr_bytes(&a->ss), alen);
            memcpy(h->tail + alen, text, tlen + 1);
            h->addr_str = (const char *)h->tail + alen;
            h->next = c->hosts;
            c->hosts = h;
        }
    }
    pthread_mutex_unlock(lk);
    return h;
}

void sk_cstate_foreach(void (*fn)(struct sk_cluster_state *c, void *arg), void *arg)
{
    pthread_mutex_lock(&reg_lock);
    for (struct sk_cluster_state *c = reg; c; c = c->next)
        fn(c, arg);
    pthread_mutex_unlock(&reg_lock);
}

void sk_cstate_free_all(void)
{
    pthread_mutex_lock(&reg_lock);
    struct sk_cluster_state *c = reg;
    reg = NULL;
    free(reg_tab);
    reg_tab = NULL;
    reg_cap = reg_n = 0;
    pthread_mutex_unlock(&reg_lock);
    while (c) {
        struct sk_cluster_state *n = c->next;
        struct sk_host_state *h = c->hosts;
        while (h) {
            struct sk_host_state *hn = h->next;
            free(h);
            h = hn;
        }
        free(c);
        c = n;
    }
}

/* ---- outlier detection ---------------------------------------------------- */

/* Lazily clear an ejection whose time has passed (keeps ejected_hosts right). */
static void clear_if_expired(struct sk_host_state *h, int64_t now_ms)
{
    int64_t until = atomic_load(&h->ejected_until_ms);
    if (until != 0 && until <= now_ms &&
        atomic_compare_exchange_strong(&h->ejected_until_ms, &until, 0)) {
        atomic_fetch_sub(&h->cl->ejected_hosts, 1);
        sk_info("outlier: host %s of cluster %s returns after ejection", h->addr_str, h->cl->name);
    }
}

static bool eject(struct sk_host_state *h, const struct sk_outlier *od, size_t nhosts,
                  int64_t now_ms, const char *why)
{
    clear_if_expired(h, now_ms);
    if (atomic_load(&h->ejected_until_ms) != 0)
        return false; /* already ejected */
    int ejected = atomic_load(&h->cl->ejected_hosts);
    /* max_ejection_percent, but one host may always be ejected (Envoy) */
    if (ejected > 0 && (uint64_t)(ejected + 1) * 100 > (uint64_t)od->max_ejection_percent * nhosts)
        return false;
    uint32_t k = atomic_fetch_add(&h->ejection_count, 1) + 1;
    uint64_t t = od->base_ejection_time_ms * k;
    if (od->max_ejection_time_ms && t > od->max_ejection_time_ms)
        t = od->max_ejection_time_ms;
    int64_t zero = 0;
    if (!atomic_compare_exchange_strong(&h->ejected_until_ms, &zero, now_ms + (int64_t)t))
        return false;
    atomic_fetch_add(&h->cl->ejected_hosts, 1);
    atomic_fetch_add(&h->cl->outlier_ejections_total, 1);
    sk_warn("outlier: ejecting host %s of cluster %s for %llu ms (%s, ejection #%u)", h->addr_str,
            h->cl->name, (unsigned long long)t, why, k);
    return true;
}

static bool enforce(uint32_t percent)
{
    if (percent >= 100)
        return true;
    if (percent == 0)
        return false;
    return (uint32_t)(rand() % 100) < percent;
}

bool sk_outlier_record(struct sk_host_state *h, const struct sk_outlier *od, int outcome,
                       size_t cluster_hosts, int64_t now_ms)
{
    atomic_fetch_add_explicit(&h->win_total, 1, memory_order_relaxed);
    if (outcome != SK_OUT_SUCCESS)
        atomic_fetch_add_explicit(&h->win_errors, 1, memory_order_relaxed);
    if (!od)
        return false;
    if (outcome == SK_OUT_SUCCESS) {
        /* resets only when non-zero: avoid a write per request */
        if (atomic_load_explicit(&h->consecutive_5xx, memory_order_relaxed))
            atomic_store_explicit(&h->consecutive_5xx, 0, memory_order_relaxed);
        if (atomic_load_explicit(&h->consecutive_gw, memory_order_relaxed))
            atomic_store_explicit(&h->consecutive_gw, 0, memory_order_relaxed);
        if (atomic_load_explicit(&h->consecutive_local, memory_order_relaxed))
            atomic_store_explicit(&h->consecutive_local, 0, memory_order_relaxed);
        return false;
    }
    bool local = outcome == SK_OUT_LOCAL;
    if (local && od->split_external_local_origin_errors) {
        uint32_t n = atomic_fetch_add(&h->consecutive_local, 1) + 1;
        if (od->consecutive_local_origin_failure && n >= od->consecutive_local_origin_failure &&
            enforce(od->enforcing_consecutive_local_origin_failure)) {
            atomic_store(&h->consecutive_local, 0);
            return eject(h, od, cluster_hosts, now_ms, "consecutive local-origin failures");
        }
        return false;
    }
    /* local-origin failures count as gateway errors when not split (Envoy) */
    bool gw = outcome == SK_OUT_GATEWAY || local;
    uint32_t n5 = atomic_fetch_add(&h->consecutive_5xx, 1) + 1;
    if (od->consecutive_5xx && n5 >= od->consecutive_5xx &&
        enforce(od->enforcing_consecutive_5xx)) {
        atomic_store(&h->consecutive_5xx, 0);
        atomic_store(&h->consecutive_gw, 0);
        if (eject(h, od, cluster_hosts, now_ms, "consecutive 5xx")) {
            atomic_fetch_add(&h->cl->outlier_ejections_consecutive_5xx, 1);
            return true;
        }
        return false;
    }
    if (gw) {
        uint32_t ng = atomic_fetch_add(&h->consecutive_gw, 1) + 1;
        if (od->consecutive_gateway_failure && ng >= od->consecutive_gateway_failure &&
            enforce(od->enforcing_consecutive_gateway_failure)) {
            atomic_store(&h->consecutive_gw, 0);
            return eject(h, od, cluster_hosts, now_ms, "consecutive gateway failures");
        }
    }
    return false;
}

void sk_outlier_interval(struct sk_cluster_state *c, const struct sk_outlier *od,
                         struct sk_host_state **hosts, size_t n, int64_t now_ms)
{
    for (size_t i = 0; i < n; i++)
        clear_if_expired(hosts[i], now_ms);
    if (!od || n == 0)
        goto reset;
    double *rate = calloc(n, sizeof(double));
    uint64_t *tot = calloc(n, sizeof(uint64_t));
    if (!rate || !tot) {
        free(rate);
        free(tot);
        goto reset;
    }
    for (size_t i = 0; i < n; i++) {
        tot[i] = atomic_load(&hosts[i]->win_total);
        uint64_t e = atomic_load(&hosts[i]->win_errors);
        rate[i] = tot[i] ? 100.0 * (double)(tot[i] - e) / (double)tot[i] : 100.0;
    }
    /* success rate: outliers below mean - factor * stdev */
    size_t m = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        if (tot[i] >= od->success_rate_request_volume) {
            m++;
            sum += rate[i];
        }
    if (m > 0 && m >= od->success_rate_minimum_hosts) {
        double mean = sum / (double)m, var = 0;
        for (size_t i = 0; i < n; i++)
            if (tot[i] >= od->success_rate_request_volume)
                var += (rate[i] - mean) * (rate[i] - mean);
        double sd = sqrt(var / (double)m);
        double limit = mean - (od->success_rate_stdev_factor / 1000.0) * sd;
        for (size_t i = 0; i < n; i++)
            if (tot[i] >= od->success_rate_request_volume && rate[i] < limit &&
                enforce(od->enforcing_success_rate) &&
                eject(hosts[i], od, n, now_ms, "success rate"))
                atomic_fetch_add(&c->outlier_ejections_success_rate, 1);
    }
    /* failure percentage: above a fixed threshold */
    m = 0;
    for (size_t i = 0; i < n; i++)
        if (tot[i] >= od->failure_percentage_request_volume)
            m++;
    if (m > 0 && m >= od->failure_percentage_minimum_hosts) {
        for (size_t i = 0; i < n; i++)
            if (tot[i] >= od->failure_percentage_request_volume &&
                100.0 - rate[i] >= (double)od->failure_percentage_threshold &&
                enforce(od->enforcing_failure_percentage) &&
                eject(hosts[i], od, n, now_ms, "failure percentage"))
                atomic_fetch_add(&c->outlier_ejections_failure_percentage, 1);
    }
    free(rate);
    free(tot);
reset:
    for (size_t i = 0; i < n; i++) {
        atomic_store(&hosts[i]->win_total, 0);
        atomic_store(&hosts[i]->win_errors, 0);
    }
}
