/* Upstream runtime state: the process-wide cluster/host states (compact
 * addresses, the name index) and a worker's cluster runtimes (hosts built at
 * the first pick, kept across updates, DNS host sets). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "skiff/hoststate.h"
#include "skiff/log.h"
#include "skiff/model.h"
#include "skiff/net.h"
#include "skiff/upstream.h"
#include "skiff/worker.h"

static int failures;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static struct sk_sockaddr v4(const char *ip, int port)
{
    struct sk_sockaddr a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in *in = (struct sockaddr_in *)&a.ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &in->sin_addr);
    a.len = sizeof(*in);
    return a;
}

static struct sk_sockaddr v6(const char *ip, int port, uint32_t scope)
{
    struct sk_sockaddr a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in6 *in = (struct sockaddr_in6 *)&a.ss;
    in->sin6_family = AF_INET6;
    in->sin6_port = htons((uint16_t)port);
    in->sin6_scope_id = scope;
    inet_pton(AF_INET6, ip, &in->sin6_addr);
    a.len = sizeof(*in);
    return a;
}

static bool same(const struct sk_sockaddr *a, const struct sk_sockaddr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

static void test_host_states(void)
{
    struct sk_cluster_state *cs = sk_cstate_get("hs");
    CHECK(cs && strcmp(cs->name, "hs") == 0);
    CHECK(sk_cstate_get("hs") == cs);

    struct sk_sockaddr a4 = v4("10.1.2.3", 8080), a6 = v6("fe80::1", 443, 7), un;
    memset(&un, 0, sizeof(un));
    struct sockaddr_un *su = (struct sockaddr_un *)&un.ss;
    su->sun_family = AF_UNIX;
    snprintf(su->sun_path, sizeof(su->sun_path), "/tmp/xds.sock");
    un.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(su->sun_path) + 1);

    struct sk_host_state *h4 = sk_hstate_get(cs, &a4), *h6 = sk_hstate_get(cs, &a6),
                         *hu = sk_hstate_get(cs, &un);
    CHECK(h4 && h6 && hu && h4 != h6 && h6 != hu);
    CHECK(h4->cl == cs);
    CHECK(strcmp(h4->addr_str, "10.1.2.3:8080") == 0);
    CHECK(strcmp(h6->addr_str, "[fe80::1]:443") == 0);
    struct sk_sockaddr out;
    sk_hstate_addr(h4, &out);
    CHECK(same(&out, &a4));
    sk_hstate_addr(h6, &out);
    CHECK(same(&out, &a6) && ((struct sockaddr_in6 *)&out.ss)->sin6_scope_id == 7);
    sk_hstate_addr(hu, &out);
    CHECK(same(&out, &un) &&
          strcmp(((struct sockaddr_un *)&out.ss)->sun_path, "/tmp/xds.sock") == 0);
    CHECK(sk_hstate_addr_eq(h4, &a4) && !sk_hstate_addr_eq(h4, &a6) && !sk_hstate_addr_eq(hu, &a4));
    /* same address, same state; another port, another state */
    CHECK(sk_hstate_get(cs, &a4) == h4 && sk_hstate_get(cs, &a6) == h6);
    struct sk_sockaddr b4 = v4("10.1.2.3", 8081);
    CHECK(sk_hstate_get(cs, &b4) != h4);
    /* the fields around the address are usable */
    atomic_store(&h4->hc_status, SK_HC_UNHEALTHY);
    CHECK(!sk_hstate_usable(h4, sk_now_ms()));
    atomic_store(&h4->hc_status, SK_HC_UNKNOWN);
    CHECK(sk_hstate_usable(h4, sk_now_ms()));
}

static void count_cb(struct sk_cluster_state *c, void *arg)
{
    (void)c;
    (*(size_t *)arg)++;
}

/* Many cluster names: the registry index grows and still finds each one. */
static void test_registry(void)
{
    enum { N = 3000 };
    struct sk_cluster_state **v = calloc(N, sizeof(*v));
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "svc-%05d", i);
        v[i] = sk_cstate_get(name);
        CHECK(v[i] && strcmp(v[i]->name, name) == 0);
    }
    for (int i = N - 1; i >= 0; i--) {
        snprintf(name, sizeof(name), "svc-%05d", i);
        CHECK(sk_cstate_get(name) == v[i]);
    }
    size_t n = 0;
    sk_cstate_foreach(count_cb, &n);
    CHECK(n >= N);
    free(v);
}

/* ---- a worker's cluster runtime ---------------------------------------- */

#define MAXEP 8

static struct sk_snapshot *snap_one(const char *name, int type, const struct sk_sockaddr *a,
                                    const uint32_t *weights, size_t n)
{
    struct sk_arena ar;
    sk_arena_init(&ar, 4096);
    struct sk_snapshot *s = sk_arena_alloc(&ar, sizeof(*s));
    s->arena = ar;
    atomic_init(&s->refs, 1);
    s->clusters = sk_arena_alloc(&s->arena, sizeof(struct sk_cluster));
    s->clusters_by_name = sk_arena_alloc(&s->arena, sizeof(struct sk_cluster *));
    struct sk_cluster *c = &s->clusters[0];
    s->clusters_by_name[0] = c;
    s->nclusters = 1;
    c->name = sk_arena_strdup(&s->arena, name);
    c->type = type;
    c->lb_policy = SK_LB_ROUND_ROBIN;
    c->endpoints = sk_arena_alloc(&s->arena, MAXEP * sizeof(struct sk_endpoint));
    for (size_t i = 0; i < n; i++) {
        CHECK(sk_endpoint_set_ip(&c->endpoints[i], &a[i]));
        c->endpoints[i].weight = weights ? weights[i] : 1;
    }
    c->nendpoints = n;
    return s;
}

static size_t nstates(const char *cluster)
{
    size_t n = 0;
    for (struct sk_host_state *h = sk_cstate_get(cluster)->hosts; h; h = h->next)
        n++;
    return n;
}

static void test_runtime(void)
{
    struct sk_worker *w = calloc(1, sizeof(*w));
    w->id = 0;
    w->rng = 12345;
    struct sk_sockaddr a[3] = {v4("127.0.0.1", 1001), v4("127.0.0.1", 1002), v6("::1", 1003, 0)};
    struct sk_snapshot *s1 = snap_one("web", SK_CLUSTER_STATIC, a, NULL, 3);
    w->snap = s1;
    sk_clusters_apply(w, s1);
    struct sk_cluster_rt *c = sk_worker_cluster_rt(w, s1, &s1->clusters[0]);
    CHECK(c && strcmp(c->name, "web") == 0);
    CHECK(c->cs && c->name == c->cs->name); /* no copy of the name per worker */
    /* no host objects before the first pick, and no shared host states
     * either (issue 7: they come with the hosts) */
    CHECK(c->nhosts == 0 && c->lazy);
    CHECK(nstates("web") == 0);

    /* first pick builds the hosts; round robin visits each once per turn */
    struct sk_host *seen[3] = {0};
    for (int i = 0; i < 3; i++)
        seen[i] = sk_lb_choose(c);
    CHECK(c->nhosts == 3 && !c->lazy);
    CHECK(nstates("web") == 3);
    CHECK(seen[0] && seen[1] && seen[2] && seen[0] != seen[1] && seen[1] != seen[2] &&
          seen[0] != seen[2]);
    CHECK(sk_lb_choose(c) == seen[0]);
    for (uint32_t i = 0; i < c->nhosts; i++) {
        struct sk_host *h = c->hosts[i];
        struct sk_sockaddr out;
        sk_host_addr(h, &out);
        CHECK(same(&out, &a[i]));
        CHECK(h->hs && h->addr_str == h->hs->addr_str && h->cl == c && h->weight == 1);
    }
    CHECK(strcmp(c->hosts[2]->addr_str, "[::1]:1003") == 0);
    struct sk_host *kept0 = c->hosts[0], *kept2 = c->hosts[2], *gone = c->hosts[1];
    sk_host_ref(gone); /* as an upstream connection would */

    /* an update: one address replaced, one weight changed; unchanged hosts
     * keep their objects (and so their pooled connections) */
    struct sk_sockaddr b[3] = {a[0], v4("127.0.0.1", 1004), a[2]};
    uint32_t wt[3] = {1, 1, 5};
    struct sk_snapshot *s2 = snap_one("web", SK_CLUSTER_EDS, b, wt, 3);
    w->snap = s2;
    sk_clusters_apply(w, s2);
    CHECK(sk_worker_cluster_rt(w, s2, &s2->clusters[0]) == c);
    CHECK(c->nhosts == 3 && c->hosts[0] == kept0 && c->hosts[2] == kept2);
    CHECK(c->hosts[1] != gone && gone->removed && !kept0->removed);
    CHECK(kept2->weight == 5 && c->weighted);
    sk_host_unref(gone);
    /* smooth weighted round robin: 5 of 7 picks go to the weight-5 host */
    int n2 = 0;
    for (int i = 0; i < 7; i++)
        n2 += sk_lb_choose(c) == kept2;
    CHECK(n2 == 5);

    /* a connection to the host goes to its address */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sk_sockaddr la = v4("127.0.0.1", 0);
    CHECK(bind(lfd, (struct sockaddr *)&la.ss, la.len) == 0 && listen(lfd, 4) == 0);
    socklen_t sl = sizeof(la.ss);
    getsockname(lfd, (struct sockaddr *)&la.ss, &sl);
    la.len = sl;
    struct sk_snapshot *s3 = snap_one("dns", SK_CLUSTER_STRICT_DNS, NULL, NULL, 0);
    w->snap = s3;
    sk_clusters_apply(w, s3);
    struct sk_cluster_rt *d = sk_worker_cluster_rt(w, s3, &s3->clusters[0]);
    CHECK(d && !d->lazy && d->nhosts == 0 && sk_lb_choose(d) == NULL);
    sk_clusters_set_hosts(w, "dns", &la, 1);
    CHECK(d->nhosts == 1);
    struct sk_host *dh = sk_lb_choose(d);
    CHECK(dh != NULL);
    if (dh) {
        int fd = sk_host_connect(dh);
        CHECK(fd >= 0);
        int acc = -1;
        for (int i = 0; i < 200 && acc < 0; i++) {
            acc = accept(lfd, NULL, NULL);
            if (acc < 0)
                usleep(5000);
        }
        CHECK(acc >= 0);
        if (acc >= 0)
            close(acc);
        if (fd >= 0)
            close(fd);
    }
    close(lfd);
    /* the DNS answer changes: the old host is replaced */
    struct sk_sockaddr other = v4("127.0.0.2", 9);
    struct sk_host *old = d->hosts[0];
    sk_host_ref(old);
    sk_clusters_set_hosts(w, "dns", &other, 1);
    CHECK(d->nhosts == 1 && d->hosts[0] != old && old->removed);
    CHECK(strcmp(d->hosts[0]->addr_str, "127.0.0.2:9") == 0);
    sk_host_unref(old);

    sk_snapshot_unref(s1);
    sk_snapshot_unref(s2);
    sk_snapshot_unref(s3);
    free(w->rt_by_index);
    free(w);
}

int main(void)
{
    sk_log_level = SK_LOG_ERROR;
    test_host_states();
    test_registry();
    test_runtime();
    sk_cstate_free_all();
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("cluster: all passed\n");
    return 0;
}
