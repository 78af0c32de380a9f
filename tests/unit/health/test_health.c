/* Active health checking against real sockets: a small server thread that can
 * answer 200 / 503 / 302 / 100+200 / garbage, close at once, stall, stop
 * listening (refused), or speak a TCP payload protocol; the checker runs on a
 * libev loop in the test thread. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "skiff/health.h"
#include "skiff/hoststate.h"
#include "skiff/log.h"
#include "skiff/model.h"

static int failures;
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)
#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "FAIL %s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__,   \
                    #a, a_, #b, b_);                                                               \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- test server ------------------------------------------------------- */

enum mode {
    M_200 = 0,
    M_503,
    M_302,
    M_100_200,
    M_GARBAGE,
    M_CLOSE,      /* accept and close at once */
    M_STALL,      /* read the request, never answer */
    M_TCP_PONG,   /* on "PING": "xxPO", pause, "--NG!" */
    M_TCP_NOPE,   /* on "PING": "NOPE" and close */
    M_TCP_SILENT, /* never write; wait for the peer to close */
};

#define MAXC 64
struct client {
    int fd;
    int mode;
    char buf[4096];
    size_t len;
    int done; /* answered (or decided) */
};

static struct srv {
    pthread_t th;
    int port;
    int lfd;
    atomic_int mode;
    atomic_int listening; /* wanted state; the thread opens/closes */
    atomic_int is_listening;
    atomic_int stop;
    atomic_int accepts, requests, peer_closed;
    pthread_mutex_t lock;
    char last_req[4096];
    struct client cl[MAXC];
} S;

static int open_listener(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 64) < 0) {
        perror("bind/listen");
        close(fd);
        return -1;
    }
    return fd;
}

static int sock_port(int fd)
{
    struct sockaddr_in a;
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    return ntohs(a.sin_port);
}

static void wr(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void client_close(struct client *c)
{
    close(c->fd);
    c->fd = -1;
}

static void client_input(struct client *c)
{
    if (c->done)
        return;
    switch (c->mode) {
    case M_TCP_PONG:
    case M_TCP_NOPE:
        if (!memmem(c->buf, c->len, "PING", 4))
            return;
        pthread_mutex_lock(&S.lock);
        memcpy(S.last_req, c->buf, c->len);
        S.last_req[c->len] = 0;
        pthread_mutex_unlock(&S.lock);
        atomic_fetch_add(&S.requests, 1);
        if (c->mode == M_TCP_NOPE) {
            wr(c->fd, "NOPE");
            client_close(c);
            return;
        }
        wr(c->fd, "xxPO");
        usleep(20000);
        wr(c->fd, "--NG!");
        client_close(c);
        return;
    case M_TCP_SILENT:
        return;
    default:
        break;
    }
    if (!memmem(c->buf, c->len, "\r\n\r\n", 4))
        return;
    pthread_mutex_lock(&S.lock);
    memcpy(S.last_req, c->buf, c->len);
    S.last_req[c->len] = 0;
    pthread_mutex_unlock(&S.lock);
    atomic_fetch_add(&S.requests, 1);
    c->done = 1;
    switch (c->mode) {
    case M_200:
        wr(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        break;
    case M_503:
        wr(c->fd, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        break;
    case M_302:
        wr(c->fd, "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n");
        break;
    case M_100_200:
        wr(c->fd, "HTTP/1.1 100 Continue\r\n\r\n");
        usleep(10000);
        wr(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        break;
    case M_GARBAGE:
        wr(c->fd, "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n");
        break;
    case M_STALL:
        return; /* keep the connection; count the checker closing it */
    }
    client_close(c);
}

static void *srv_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&S.stop)) {
        int want = atomic_load(&S.listening);
        if (want && S.lfd < 0) {
            S.lfd = open_listener(S.port);
        } else if (!want && S.lfd >= 0) {
            close(S.lfd);
            S.lfd = -1;
        }
        atomic_store(&S.is_listening, S.lfd >= 0);
        struct pollfd p[MAXC + 1];
        int idx[MAXC + 1];
        int n = 0;
        if (S.lfd >= 0) {
            p[n] = (struct pollfd){S.lfd, POLLIN, 0};
            idx[n++] = -1;
        }
        for (int i = 0; i < MAXC; i++)
            if (S.cl[i].fd >= 0) {
                p[n] = (struct pollfd){S.cl[i].fd, POLLIN, 0};
                idx[n++] = i;
            }
        if (poll(p, (nfds_t)n, 5) <= 0)
            continue;
        for (int k = 0; k < n; k++) {
            if (!p[k].revents)
                continue;
            if (idx[k] < 0) {
                int fd = accept4(S.lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                    continue;
                atomic_fetch_add(&S.accepts, 1);
                int m = atomic_load(&S.mode);
                if (m == M_CLOSE) {
                    close(fd);
                    continue;
                }
                int slot = -1;
                for (int i = 0; i < MAXC && slot < 0; i++)
                    if (S.cl[i].fd < 0)
                        slot = i;
                if (slot < 0) {
                    close(fd);
                    continue;
                }
                S.cl[slot] = (struct client){.fd = fd, .mode = m};
                continue;
            }
            struct client *c = &S.cl[idx[k]];
            if (c->fd < 0)
                continue;
            ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
            if (r <= 0) {
                atomic_fetch_add(&S.peer_closed, 1);
                client_close(c);
                continue;
            }
            c->len += (size_t)r;
            client_input(c);
        }
    }
    for (int i = 0; i < MAXC; i++)
        if (S.cl[i].fd >= 0)
            close(S.cl[i].fd);
    if (S.lfd >= 0)
        close(S.lfd);
    return NULL;
}

static void srv_start(void)
{
    S.lfd = open_listener(0);
    S.port = sock_port(S.lfd);
    for (int i = 0; i < MAXC; i++)
        S.cl[i].fd = -1;
    atomic_store(&S.listening, 1);
    atomic_store(&S.is_listening, 1);
    pthread_mutex_init(&S.lock, NULL);
    pthread_create(&S.th, NULL, srv_main, NULL);
}

static void srv_stop(void)
{
    atomic_store(&S.stop, 1);
    pthread_join(S.th, NULL);
    pthread_mutex_destroy(&S.lock);
}

static void srv_reset(int mode)
{
    atomic_store(&S.mode, mode);
    atomic_store(&S.accepts, 0);
    atomic_store(&S.requests, 0);
    atomic_store(&S.peer_closed, 0);
}

/* ---- loop driving -------------------------------------------------------- */

static struct ev_loop *loop;
static ev_timer tick;

static void tick_cb(struct ev_loop *l, ev_timer *t, int revents)
{
    (void)l;
    (void)t;
    (void)revents;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run the loop one iteration at a time until `cond` holds (checked after
 * every iteration, so a transition is seen before the next check can start).
 * Returns 1 if it held, 0 on timeout. */
#define RUN_UNTIL(cond, secs)                                                                      \
    ({                                                                                             \
        double dl_ = now_s() + (secs);                                                             \
        int ok_ = 0;                                                                               \
        for (;;) {                                                                                 \
            if (cond) {                                                                            \
                ok_ = 1;                                                                           \
                break;                                                                             \
            }                                                                                      \
            if (now_s() > dl_)                                                                     \
                break;                                                                             \
            ev_run(loop, EVRUN_ONCE);                                                              \
        }                                                                                          \
        ok_;                                                                                       \
    })

static void run_for(double secs)
{
    double dl = now_s() + secs;
    while (now_s() < dl)
        ev_run(loop, EVRUN_ONCE);
}

/* ---- snapshot building ---------------------------------------------------- */

#define MAXCL 4
#define MAXEP 4
#define MAXHC 4

static struct sk_snapshot *snap_new(void)
{
    struct sk_arena a;
    sk_arena_init(&a, 8192);
    struct sk_snapshot *s = sk_arena_alloc(&a, sizeof(*s));
    s->arena = a;
    atomic_init(&s->refs, 1);
    s->clusters = sk_arena_alloc(&s->arena, MAXCL * sizeof(struct sk_cluster));
    s->clusters_by_name = sk_arena_alloc(&s->arena, MAXCL * sizeof(struct sk_cluster *));
    return s;
}

static int cmp_cl(const void *a, const void *b)
{
    return strcmp((*(struct sk_cluster *const *)a)->name, (*(struct sk_cluster *const *)b)->name);
}

static struct sk_snapshot *snap_done(struct sk_snapshot *s)
{
    for (size_t i = 0; i < s->nclusters; i++)
        s->clusters_by_name[i] = &s->clusters[i];
    qsort(s->clusters_by_name, s->nclusters, sizeof(*s->clusters_by_name), cmp_cl);
    return s;
}

static struct sk_cluster *add_cluster(struct sk_snapshot *s, const char *name, int type)
{
    struct sk_cluster *c = &s->clusters[s->nclusters];
    c->index = s->nclusters++;
    c->name = sk_arena_strdup(&s->arena, name);
    c->type = type;
    c->endpoints = sk_arena_alloc(&s->arena, MAXEP * sizeof(struct sk_endpoint));
    return c;
}

static struct sk_sockaddr loop_addr(int port)
{
    struct sk_sockaddr a;
    memset(&a, 0, sizeof(a));
    struct sockaddr_in *in = (struct sockaddr_in *)&a.ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.len = sizeof(*in);
    return a;
}

static void add_ep(struct sk_snapshot *s, struct sk_cluster *c, int port)
{
    struct sk_endpoint *e = &c->endpoints[c->nendpoints++];
    e->host = sk_arena_strdup(&s->arena, "127.0.0.1");
    e->port = (uint16_t)port;
    struct sk_sockaddr a = loop_addr(port);
    sk_endpoint_set_ip(e, &a);
    e->weight = 1;
}

static struct sk_health_check *add_hc(struct sk_snapshot *s, struct sk_cluster *c, int kind)
{
    if (!c->health_checks) {
        c->health_checks = sk_arena_alloc(&s->arena, sizeof(*c->health_checks));
        c->health_checks->v = sk_arena_alloc(&s->arena, MAXHC * sizeof(struct sk_health_check));
    }
    struct sk_health_check *h = &c->health_checks->v[c->health_checks->n++];
    h->kind = kind;
    h->timeout_ms = 1000;
    h->interval_ms = 40;
    h->unhealthy_threshold = 3;
    h->healthy_threshold = 2;
    h->no_traffic_interval_ms = 60000;
    if (kind == SK_HC_HTTP)
        h->path = sk_arena_strdup(&s->arena, "/healthz");
    return h;
}

static int closed_port(void)
{
    int fd = open_listener(0);
    int p = sock_port(fd);
    close(fd);
    return p;
}

static int status_of(const char *cluster, int port)
{
    struct sk_sockaddr a = loop_addr(port);
    return atomic_load(&sk_hstate_get(sk_cstate_get(cluster), &a)->hc_status);
}

#define CS(name) sk_cstate_get(name)
#define ATTEMPTS(n) ((long long)atomic_load(&CS(n)->health_check_attempt))
#define SUCC(n) ((long long)atomic_load(&CS(n)->health_check_success))
#define FAILS(n) ((long long)atomic_load(&CS(n)->health_check_failure))

static void apply(struct sk_snapshot *s)
{
    sk_health_apply(loop, s);
    sk_snapshot_unref(s); /* the module keeps its own reference */
}

static void reset_all(void)
{
    sk_health_stop_all();
    sk_cstate_free_all();
    run_for(0.05); /* let the server see closes */
}

/* ---- tests ---------------------------------------------------------------- */

static void test_http_pass_and_request(void)
{
    srv_reset(M_200);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "web", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->req_hdrs.add = sk_arena_alloc(&s->arena, 2 * sizeof(struct sk_hdr_op));
    h->req_hdrs.add[0] = (struct sk_hdr_op){"x-hc", 4, "1", 1, SK_HDR_APPEND_IF_EXISTS_OR_ADD, 0};
    h->req_hdrs.add[1] = (struct sk_hdr_op){"x-empty", 7, "", 0, SK_HDR_APPEND_IF_EXISTS_OR_ADD, 0};
    h->req_hdrs.nadd = 2;
    apply(snap_done(s));
    CHECK_EQ(status_of("web", S.port), SK_HC_UNKNOWN);
    CHECK(RUN_UNTIL(status_of("web", S.port) == SK_HC_HEALTHY, 5));
    CHECK(SUCC("web") >= 1);
    CHECK_EQ(FAILS("web"), 0);
    CHECK(ATTEMPTS("web") >= 1);
    pthread_mutex_lock(&S.lock);
    const char *want = "GET /healthz HTTP/1.1\r\nHost: web\r\nUser-Agent: skiff-health-check\r\n"
                       "x-hc: 1\r\nConnection: close\r\n\r\n";
    if (strcmp(S.last_req, want) != 0)
        fprintf(stderr, "request was:\n%s\n", S.last_req);
    CHECK(strcmp(S.last_req, want) == 0);
    pthread_mutex_unlock(&S.lock);
    /* it keeps checking at the interval */
    long long a0 = ATTEMPTS("web");
    run_for(0.3);
    CHECK(ATTEMPTS("web") - a0 >= 3);
    CHECK(ATTEMPTS("web") - a0 <= 9);
    CHECK_EQ(status_of("web", S.port), SK_HC_HEALTHY);
    reset_all();

    /* custom host, UA overwritten, another UA-less variant */
    srv_reset(M_200);
    s = snap_new();
    c = add_cluster(s, "web2", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_HTTP);
    h->host = sk_arena_strdup(&s->arena, "svc.local");
    h->path = sk_arena_strdup(&s->arena, "/ready?x=1");
    h->req_hdrs.add = sk_arena_alloc(&s->arena, sizeof(struct sk_hdr_op));
    h->req_hdrs.add[0] =
        (struct sk_hdr_op){"user-agent", 10, "probe/1", 7, SK_HDR_OVERWRITE_IF_EXISTS_OR_ADD, 0};
    h->req_hdrs.nadd = 1;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(atomic_load(&S.requests) >= 1, 5));
    pthread_mutex_lock(&S.lock);
    want = "GET /ready?x=1 HTTP/1.1\r\nHost: svc.local\r\nuser-agent: probe/1\r\n"
           "Connection: close\r\n\r\n";
    if (strcmp(S.last_req, want) != 0)
        fprintf(stderr, "request was:\n%s\n", S.last_req);
    CHECK(strcmp(S.last_req, want) == 0);
    pthread_mutex_unlock(&S.lock);
    reset_all();
}

/* Network failures need exactly unhealthy_threshold consecutive failures. */
static void test_network_threshold(void)
{
    srv_reset(M_CLOSE);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "thr", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->interval_ms = 60;
    h->unhealthy_threshold = 3;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(FAILS("thr") >= 2, 5));
    CHECK_EQ(status_of("thr", S.port), SK_HC_UNKNOWN);
    CHECK(RUN_UNTIL(status_of("thr", S.port) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(FAILS("thr"), 3);
    CHECK_EQ(atomic_load(&S.accepts), 3);
    CHECK_EQ(SUCC("thr"), 0);
    struct sk_sockaddr a = loop_addr(S.port);
    struct sk_host_state *hs = sk_hstate_get(CS("thr"), &a);
    CHECK_EQ(atomic_load(&hs->hc_failures), 3);
    CHECK_EQ(atomic_load(&hs->hc_checks), 3);
    CHECK(!sk_hstate_usable(hs, sk_now_ms()));

    /* recovery takes exactly healthy_threshold (2) passes */
    atomic_store(&S.mode, M_200);
    long long s0 = SUCC("thr");
    CHECK(RUN_UNTIL(SUCC("thr") - s0 >= 1, 5));
    CHECK_EQ(status_of("thr", S.port), SK_HC_UNHEALTHY);
    CHECK(RUN_UNTIL(status_of("thr", S.port) == SK_HC_HEALTHY, 5));
    CHECK_EQ(SUCC("thr") - s0, 2);
    reset_all();
}

/* An unexpected status is an immediate failure (Envoy), then recovery. */
static void test_503_and_recovery(void)
{
    srv_reset(M_200);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "st", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->unhealthy_threshold = 5;
    h->healthy_threshold = 3;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("st", S.port) == SK_HC_HEALTHY, 5));
    CHECK_EQ(SUCC("st"), 1); /* first pass is enough */
    atomic_store(&S.mode, M_503);
    long long f0 = FAILS("st");
    CHECK(RUN_UNTIL(status_of("st", S.port) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(FAILS("st") - f0, 1);
    atomic_store(&S.mode, M_200);
    long long s0 = SUCC("st");
    CHECK(RUN_UNTIL(status_of("st", S.port) == SK_HC_HEALTHY, 5));
    CHECK_EQ(SUCC("st") - s0, 3);
    reset_all();
}

static void test_refused(void)
{
    srv_reset(M_200);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "ref", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->unhealthy_threshold = 2;
    h->healthy_threshold = 2;
    h->unhealthy_interval_ms = 80;
    h->unhealthy_edge_interval_ms = 250;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("ref", S.port) == SK_HC_HEALTHY, 5));
    atomic_store(&S.listening, 0);
    CHECK(RUN_UNTIL(!atomic_load(&S.is_listening), 5));
    long long f0 = FAILS("ref");
    long long s0 = SUCC("ref");
    CHECK(RUN_UNTIL(FAILS("ref") - f0 >= 1, 5));
    CHECK_EQ(status_of("ref", S.port), SK_HC_HEALTHY);
    double t0 = now_s();
    CHECK(RUN_UNTIL(status_of("ref", S.port) == SK_HC_UNHEALTHY, 5));
    /* a pending transition waits unhealthy_edge_interval (250 ms) */
    CHECK(now_s() - t0 > 0.2);
    CHECK_EQ(FAILS("ref") - f0, 2);
    CHECK_EQ(SUCC("ref"), s0);
    /* unhealthy_interval (80ms) is used while failing */
    long long f1 = FAILS("ref");
    run_for(0.4);
    CHECK(FAILS("ref") - f1 >= 3 && FAILS("ref") - f1 <= 6);
    atomic_store(&S.listening, 1);
    CHECK(RUN_UNTIL(atomic_load(&S.is_listening), 5));
    CHECK(RUN_UNTIL(status_of("ref", S.port) == SK_HC_HEALTHY, 5));
    reset_all();
}

static void test_timeout(void)
{
    srv_reset(M_STALL);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "to", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->timeout_ms = 200;
    h->unhealthy_threshold = 1;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(atomic_load(&S.requests) >= 1, 5));
    double t0 = now_s();
    CHECK(RUN_UNTIL(status_of("to", S.port) == SK_HC_UNHEALTHY, 5));
    double dt = now_s() - t0;
    CHECK(dt > 0.12 && dt < 1.5);
    CHECK_EQ(FAILS("to"), 1);
    /* the checker closed the stalled connection */
    CHECK(RUN_UNTIL(atomic_load(&S.peer_closed) >= 1, 5));
    reset_all();
}

static void test_statuses_and_framing(void)
{
    /* custom expected_statuses: 302 passes */
    srv_reset(M_302);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "exp", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->expected_statuses = sk_arena_alloc(&s->arena, 4 * sizeof(int64_t));
    h->expected_statuses[0] = 200;
    h->expected_statuses[1] = 201;
    h->expected_statuses[2] = 300;
    h->expected_statuses[3] = 400;
    h->nexpected = 2;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("exp", S.port) == SK_HC_HEALTHY, 5));
    reset_all();

    /* default [200,201): 302 fails at once */
    srv_reset(M_302);
    s = snap_new();
    c = add_cluster(s, "exp2", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    add_hc(s, c, SK_HC_HTTP);
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("exp2", S.port) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(FAILS("exp2"), 1);
    reset_all();

    /* 100 Continue then 200 */
    srv_reset(M_100_200);
    s = snap_new();
    c = add_cluster(s, "cont", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    add_hc(s, c, SK_HC_HTTP);
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("cont", S.port) == SK_HC_HEALTHY, 5));
    CHECK_EQ(FAILS("cont"), 0);
    reset_all();

    /* malformed response: a network-class failure (threshold applies) */
    srv_reset(M_GARBAGE);
    s = snap_new();
    c = add_cluster(s, "garb", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_HTTP);
    h->unhealthy_threshold = 2;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(FAILS("garb") >= 1, 5));
    CHECK_EQ(status_of("garb", S.port), SK_HC_UNKNOWN);
    CHECK(RUN_UNTIL(status_of("garb", S.port) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(FAILS("garb"), 2);
    reset_all();
}

static void test_tcp(void)
{
    /* connect-only against a listening socket */
    srv_reset(M_TCP_SILENT);
    int dead = closed_port();
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "tcp", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    add_ep(s, c, dead);
    struct sk_health_check *h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 2;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(
        status_of("tcp", S.port) == SK_HC_HEALTHY && status_of("tcp", dead) == SK_HC_UNHEALTHY, 5));
    CHECK(RUN_UNTIL(atomic_load(&S.peer_closed) >= 1, 5)); /* connect-only closes */
    reset_all();

    /* payloads: send PING, expect "PO" then "NG" (split across writes) */
    srv_reset(M_TCP_PONG);
    s = snap_new();
    c = add_cluster(s, "pay", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 1;
    h->send = (unsigned char *)sk_arena_strdup(&s->arena, "PING");
    h->send_len = 4;
    h->receive = sk_arena_alloc(&s->arena, 2 * sizeof(unsigned char *));
    h->receive_len = sk_arena_alloc(&s->arena, 2 * sizeof(size_t));
    h->receive[0] = (unsigned char *)sk_arena_strdup(&s->arena, "PO");
    h->receive_len[0] = 2;
    h->receive[1] = (unsigned char *)sk_arena_strdup(&s->arena, "NG");
    h->receive_len[1] = 2;
    h->nreceive = 2;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("pay", S.port) == SK_HC_HEALTHY, 5));
    pthread_mutex_lock(&S.lock);
    CHECK(strcmp(S.last_req, "PING") == 0);
    pthread_mutex_unlock(&S.lock);
    /* wrong answer then close: failure */
    atomic_store(&S.mode, M_TCP_NOPE);
    CHECK(RUN_UNTIL(status_of("pay", S.port) == SK_HC_UNHEALTHY, 5));
    reset_all();

    /* order matters: "NG" then "PO" never matches "xxPO--NG!" */
    srv_reset(M_TCP_PONG);
    s = snap_new();
    c = add_cluster(s, "ord", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 1;
    h->send = (unsigned char *)sk_arena_strdup(&s->arena, "PING");
    h->send_len = 4;
    h->receive = sk_arena_alloc(&s->arena, 2 * sizeof(unsigned char *));
    h->receive_len = sk_arena_alloc(&s->arena, 2 * sizeof(size_t));
    h->receive[0] = (unsigned char *)sk_arena_strdup(&s->arena, "NG");
    h->receive_len[0] = 2;
    h->receive[1] = (unsigned char *)sk_arena_strdup(&s->arena, "PO");
    h->receive_len[1] = 2;
    h->nreceive = 2;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("ord", S.port) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(SUCC("ord"), 0);
    reset_all();
}

/* Hosts and clusters disappearing while a check is in flight. */
static void test_removal_mid_check(void)
{
    srv_reset(M_STALL);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "rm", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->timeout_ms = 10000;
    struct sk_cluster *c2 = add_cluster(s, "rm2", SK_CLUSTER_STATIC);
    add_ep(s, c2, S.port);
    h = add_hc(s, c2, SK_HC_TCP);
    h->send = (unsigned char *)sk_arena_strdup(&s->arena, "x");
    h->send_len = 1;
    h->receive = sk_arena_alloc(&s->arena, sizeof(unsigned char *));
    h->receive_len = sk_arena_alloc(&s->arena, sizeof(size_t));
    h->receive[0] = (unsigned char *)sk_arena_strdup(&s->arena, "never");
    h->receive_len[0] = 5;
    h->nreceive = 1;
    h->timeout_ms = 10000;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(atomic_load(&S.accepts) >= 2, 5));
    run_for(0.05);

    /* host removed from "rm" (cluster stays), cluster "rm2" dropped */
    s = snap_new();
    c = add_cluster(s, "rm", SK_CLUSTER_STATIC);
    add_hc(s, c, SK_HC_HTTP);
    apply(snap_done(s));
    CHECK(RUN_UNTIL(atomic_load(&S.peer_closed) >= 2, 5));
    CHECK_EQ(status_of("rm", S.port), SK_HC_UNKNOWN);
    int acc = atomic_load(&S.accepts);
    run_for(0.2);
    CHECK_EQ(atomic_load(&S.accepts), acc); /* nothing checks any more */

    /* an unhealthy host that leaves forgets its verdict */
    srv_reset(M_503);
    s = snap_new();
    c = add_cluster(s, "rm", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    add_hc(s, c, SK_HC_HTTP);
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("rm", S.port) == SK_HC_UNHEALTHY, 5));
    s = snap_new();
    add_cluster(s, "other", SK_CLUSTER_STATIC);
    apply(snap_done(s));
    CHECK_EQ(status_of("rm", S.port), SK_HC_UNKNOWN);

    /* stop_all with a check in flight */
    srv_reset(M_STALL);
    s = snap_new();
    c = add_cluster(s, "rm3", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_HTTP);
    h->timeout_ms = 10000;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(atomic_load(&S.requests) >= 1, 5));
    sk_health_stop_all();
    CHECK(RUN_UNTIL(atomic_load(&S.peer_closed) >= 1, 5));
    reset_all();
}

/* Re-applying an equal config keeps streaks; a changed one restarts them. */
static void test_reapply(void)
{
    srv_reset(M_CLOSE);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "re", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->interval_ms = 80;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(FAILS("re") >= 2, 5));
    long long a0 = ATTEMPTS("re");
    /* a new, equal snapshot (a different object) */
    s = snap_new();
    c = add_cluster(s, "re", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_HTTP);
    h->interval_ms = 80;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("re", S.port) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(FAILS("re"), 3);
    CHECK(ATTEMPTS("re") - a0 <= 1);

    /* changed settings: checker restarts; the host stays UNHEALTHY and needs
     * healthy_threshold passes */
    atomic_store(&S.mode, M_200);
    long long s0 = SUCC("re");
    s = snap_new();
    c = add_cluster(s, "re", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_HTTP);
    h->interval_ms = 50;
    h->healthy_threshold = 3;
    apply(snap_done(s));
    CHECK_EQ(status_of("re", S.port), SK_HC_UNHEALTHY);
    CHECK(RUN_UNTIL(status_of("re", S.port) == SK_HC_HEALTHY, 5));
    CHECK_EQ(SUCC("re") - s0, 3);
    reset_all();
}

static void test_dns_hosts(void)
{
    srv_reset(M_200);
    int dead = closed_port();
    struct sk_sockaddr addrs[2] = {loop_addr(S.port), loop_addr(dead)};
    /* hosts may arrive before the cluster is applied */
    sk_health_set_hosts("dns", addrs, 1);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "dns", SK_CLUSTER_STRICT_DNS);
    struct sk_health_check *h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 1;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("dns", S.port) == SK_HC_HEALTHY, 5));
    /* same set again: no restart, nothing changes */
    sk_health_set_hosts("dns", addrs, 1);
    sk_health_set_hosts("dns", addrs, 2);
    CHECK(RUN_UNTIL(status_of("dns", dead) == SK_HC_UNHEALTHY, 5));
    CHECK_EQ(status_of("dns", S.port), SK_HC_HEALTHY);
    sk_health_set_hosts("dns", addrs, 0);
    CHECK_EQ(status_of("dns", dead), SK_HC_UNKNOWN);
    CHECK_EQ(status_of("dns", S.port), SK_HC_UNKNOWN);
    long long a0 = ATTEMPTS("dns");
    run_for(0.15);
    CHECK_EQ(ATTEMPTS("dns"), a0);
    reset_all();
}

/* A restart that changes the number of checkers per host (each host's
 * checkers live in its own allocation, which then moves): every host of the
 * cluster keeps its verdict and runs the new set of checkers. */
static void test_restart_check_count(void)
{
    srv_reset(M_200);
    int dead1 = closed_port(), dead2 = closed_port();
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "cnt", SK_CLUSTER_STATIC);
    add_ep(s, c, dead1);
    add_ep(s, c, S.port);
    add_ep(s, c, dead2);
    struct sk_health_check *h = add_hc(s, c, SK_HC_HTTP);
    h->unhealthy_threshold = 1;
    apply(snap_done(s));
    CHECK(RUN_UNTIL(status_of("cnt", S.port) == SK_HC_HEALTHY &&
                        status_of("cnt", dead1) == SK_HC_UNHEALTHY &&
                        status_of("cnt", dead2) == SK_HC_UNHEALTHY,
                    5));
    /* only the HTTP checker: every accepted connection carries a request */
    run_for(0.1);
    int gap0 = atomic_load(&S.accepts) - atomic_load(&S.requests);
    CHECK(gap0 <= 1);

    /* two checkers: HTTP + TCP connect-only (accepted, no request) */
    s = snap_new();
    c = add_cluster(s, "cnt", SK_CLUSTER_STATIC);
    add_ep(s, c, dead1);
    add_ep(s, c, S.port);
    add_ep(s, c, dead2);
    h = add_hc(s, c, SK_HC_HTTP);
    h->unhealthy_threshold = 1;
    h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 1;
    apply(snap_done(s));
    CHECK_EQ(status_of("cnt", dead1), SK_HC_UNHEALTHY);
    CHECK_EQ(status_of("cnt", dead2), SK_HC_UNHEALTHY);
    CHECK(RUN_UNTIL(atomic_load(&S.accepts) - atomic_load(&S.requests) >= gap0 + 3, 5));
    long long r0 = atomic_load(&S.requests);
    CHECK(RUN_UNTIL(atomic_load(&S.requests) >= r0 + 3, 5)); /* HTTP still runs */
    CHECK_EQ(status_of("cnt", S.port), SK_HC_HEALTHY);
    CHECK_EQ(status_of("cnt", dead1), SK_HC_UNHEALTHY);

    /* back to one checker (TCP only): no more requests, still checked */
    s = snap_new();
    c = add_cluster(s, "cnt", SK_CLUSTER_STATIC);
    add_ep(s, c, dead1);
    add_ep(s, c, S.port);
    add_ep(s, c, dead2);
    h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 1;
    apply(snap_done(s));
    run_for(0.1); /* a check in flight at the switch may still send its request */
    long long r1 = atomic_load(&S.requests), a1 = atomic_load(&S.accepts);
    CHECK(RUN_UNTIL(atomic_load(&S.accepts) >= a1 + 3, 5));
    CHECK_EQ(atomic_load(&S.requests), r1);
    CHECK_EQ(status_of("cnt", S.port), SK_HC_HEALTHY);
    CHECK_EQ(status_of("cnt", dead2), SK_HC_UNHEALTHY);
    reset_all();
}

/* Several checkers: unhealthy while any says so. Also jitter bounds. */
static void test_multi_and_jitter(void)
{
    srv_reset(M_200);
    struct sk_snapshot *s = snap_new();
    struct sk_cluster *c = add_cluster(s, "multi", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    add_hc(s, c, SK_HC_HTTP);
    struct sk_health_check *h = add_hc(s, c, SK_HC_TCP);
    h->unhealthy_threshold = 1;
    h->send = (unsigned char *)sk_arena_strdup(&s->arena, "hello");
    h->send_len = 5;
    h->receive = sk_arena_alloc(&s->arena, sizeof(unsigned char *));
    h->receive_len = sk_arena_alloc(&s->arena, sizeof(size_t));
    h->receive[0] = (unsigned char *)sk_arena_strdup(&s->arena, "HTTP/1.1 400");
    h->receive_len[0] = 12;
    h->nreceive = 1;
    h->timeout_ms = 150;
    apply(snap_done(s));
    /* the HTTP checker passes, the TCP one never sees its payload */
    CHECK(RUN_UNTIL(SUCC("multi") >= 1, 5));
    CHECK(RUN_UNTIL(status_of("multi", S.port) == SK_HC_UNHEALTHY, 5));
    run_for(0.3);
    CHECK_EQ(status_of("multi", S.port), SK_HC_UNHEALTHY);
    reset_all();

    /* initial_jitter / interval_jitter: checks spread but bounded */
    srv_reset(M_200);
    s = snap_new();
    c = add_cluster(s, "jit", SK_CLUSTER_STATIC);
    add_ep(s, c, S.port);
    h = add_hc(s, c, SK_HC_TCP);
    h->initial_jitter_ms = 100;
    h->interval_ms = 50;
    h->interval_jitter_ms = 50;
    h->interval_jitter_percent = 100;
    double t0 = now_s();
    apply(snap_done(s));
    CHECK(RUN_UNTIL(ATTEMPTS("jit") >= 1, 5));
    CHECK(now_s() - t0 < 0.5);
    long long a0 = ATTEMPTS("jit");
    run_for(0.6);
    long long n = ATTEMPTS("jit") - a0;
    /* each gap is in [50, 150) ms: between 4 and 12 checks in 0.6 s */
    CHECK(n >= 3 && n <= 13);
    reset_all();
}

int main(void)
{
    sk_log_level = SK_LOG_INFO;
    loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&tick, tick_cb, 0.005, 0.005);
    ev_timer_start(loop, &tick);
    srv_start();

    test_http_pass_and_request();
    test_network_threshold();
    test_503_and_recovery();
    test_refused();
    test_timeout();
    test_statuses_and_framing();
    test_tcp();
    test_removal_mid_check();
    test_reapply();
    test_dns_hosts();
    test_restart_check_count();
    test_multi_and_jitter();

    sk_health_stop_all();
    sk_cstate_free_all();
    srv_stop();
    ev_timer_stop(loop, &tick);
    ev_loop_destroy(loop);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("health: all tests passed\n");
    return 0;
}
