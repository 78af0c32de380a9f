/* Unit tests for src/event/dns.c against a real UDP DNS server: a thread in
 * this process answering A/AAAA queries for a few names on 127.0.0.1:<free
 * port>, with hand-written packet encoding. */
#include "skiff/dns.h"
#include "skiff/err.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <ev.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- tiny DNS server -------------------------------------------------- */

#define T_A 1
#define T_AAAA 28

struct server {
    int fd;
    uint16_t port;
    pthread_t th;
    atomic_int stop;
    atomic_int n_a, n_aaaa;
};

struct rr {
    int type;
    const char *addr;
};

/* Answers for name/qtype; returns rcode (0 or 3 = NXDOMAIN, 2 = SERVFAIL),
 * -1 to drop the query. */
static int lookup(const char *name, int qtype, struct rr *out, int *n, char *scratch)
{
    static const struct {
        const char *name;
        struct rr rrs[6];
    } zone[] = {
        {"one.test", {{T_A, "10.0.0.1"}}},
        {"multi.test",
         {{T_A, "10.0.0.3"}, {T_A, "10.0.0.1"}, {T_A, "10.0.0.2"}, {T_A, "10.0.0.1"}}},
        {"v6.test", {{T_AAAA, "2001:db8::1"}}},
        {"dual.test", {{T_A, "10.0.0.5"}, {T_AAAA, "2001:db8::6"}, {T_AAAA, "2001:db8::5"}}},
    };
    *n = 0;
    if (strcmp(name, "drop.test") == 0)
        return -1;
    if (strcmp(name, "servfail.test") == 0)
        return 2;
    unsigned h;
    char tail[16];
    if (sscanf(name, "h%u.%15s", &h, tail) == 2 && strcmp(tail, "test") == 0) {
        if (qtype == T_A) {
            snprintf(scratch, 32, "10.1.%u.%u", h / 256, h % 256);
            out[(*n)++] = (struct rr){T_A, scratch};
        }
        return 0;
    }
    for (size_t i = 0; i < sizeof(zone) / sizeof(zone[0]); i++) {
        if (strcmp(zone[i].name, name) != 0)
            continue;
        for (int j = 0; j < 6 && zone[i].rrs[j].addr; j++)
            if (zone[i].rrs[j].type == qtype)
                out[(*n)++] = zone[i].rrs[j];
        return 0;
    }
    return 3;
}

static void serve_one(struct server *s, const uint8_t *q, size_t len, struct sockaddr_in *peer,
                      socklen_t plen)
{
    if (len < 12 || q[4] != 0 || q[5] != 1)
        return;
    char name[256];
    size_t off = 12, nl = 0;
    while (off < len && q[off]) {
        size_t l = q[off++];
        if (l > 63 || off + l > len || nl + l + 1 >= sizeof(name))
            return;
        if (nl)
            name[nl++] = '.';
        for (size_t i = 0; i < l; i++)
            name[nl++] = (char)tolower(q[off + i]);
        off += l;
    }
    name[nl] = 0;
    if (off + 5 > len)
        return;
    off++; /* root label */
    int qtype = q[off] << 8 | q[off + 1];
    size_t qend = off + 4;
    if (qtype == T_A)
        atomic_fetch_add(&s->n_a, 1);
    else if (qtype == T_AAAA)
        atomic_fetch_add(&s->n_aaaa, 1);

    struct rr rrs[8];
    int n;
    char scratch[32];
    int rcode = lookup(name, qtype, rrs, &n, scratch);
    if (rcode < 0)
        return;
    uint8_t r[512];
    memcpy(r, q, qend);
    r[2] = 0x80 | (q[2] & 0x01); /* QR, copy RD */
    r[3] = 0x80 | rcode;         /* RA */
    r[6] = 0;
    r[7] = (uint8_t)n;
    memset(r + 8, 0, 4); /* no NS, no additional */
    size_t w = qend;
    for (int i = 0; i < n; i++) {
        int alen = rrs[i].type == T_A ? 4 : 16;
        const uint8_t hdr[] = {0xc0, 0x0c, 0, (uint8_t)rrs[i].type, 0, 1, 0, 0,
                               0,    60,   0, (uint8_t)alen};
        memcpy(r + w, hdr, sizeof(hdr));
        w += sizeof(hdr);
        inet_pton(alen == 4 ? AF_INET : AF_INET6, rrs[i].addr, r + w);
        w += alen;
    }
    sendto(s->fd, r, w, 0, (struct sockaddr *)peer, plen);
}

static void *server_main(void *arg)
{
    struct server *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0)
            continue;
        uint8_t buf[1500];
        struct sockaddr_in peer;
        socklen_t plen = sizeof(peer);
        ssize_t len = recvfrom(s->fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
        if (len > 0)
            serve_one(s, buf, (size_t)len, &peer, plen);
    }
    return NULL;
}

/* A bound UDP socket on a free loopback port; returns the fd. */
static int udp_bind(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("bind");
        exit(2);
    }
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return fd;
}

static struct server srv;

static void server_start(void)
{
    srv.fd = udp_bind(&srv.port);
    pthread_create(&srv.th, NULL, server_main, &srv);
}

static void server_stop(void)
{
    atomic_store(&srv.stop, 1);
    pthread_join(srv.th, NULL);
    close(srv.fd);
}

static void reset_counts(void)
{
    atomic_store(&srv.n_a, 0);
    atomic_store(&srv.n_aaaa, 0);
}

/* ---- harness ---------------------------------------------------------- */

struct res {
    int called;
    int status;
    size_t n;
    struct sk_sockaddr addrs[16];
    int tag;
};

static void res_cb(void *arg, int status, const struct sk_sockaddr *addrs, size_t n)
{
    struct res *r = arg;
    r->called++;
    r->status = status;
    r->n = n;
    if (status == 0)
        CHECK(addrs != NULL && n > 0);
    else
        CHECK(addrs == NULL && n == 0);
    for (size_t i = 0; i < n && i < 16; i++)
        r->addrs[i] = addrs[i];
}

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    *(int *)w->data = 1;
}

/* Runs loop until *count >= target or max seconds passed. */
static void run_until(struct ev_loop *loop, const int *count, int target, double max)
{
    int fired = 0;
    ev_timer guard;
    ev_timer_init(&guard, guard_cb, max, 0.);
    guard.data = &fired;
    ev_timer_start(loop, &guard);
    while (*count < target && !fired)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &guard);
}

static struct sk_dns *new_dns(struct ev_loop *loop, unsigned timeout_ms, unsigned tries)
{
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", srv.port);
    struct sk_dns_opts o = {
        .timeout_ms = timeout_ms, .tries = tries, .servers = servers, .no_search_domains = true};
    struct sk_dns *d = sk_dns_new(loop, &o);
    CHECK(d != NULL);
    return d;
}

/* Resolves one name, checking the callback is not re-entrant. */
static void resolve(struct ev_loop *loop, struct sk_dns *d, const char *host, uint16_t port,
                    int family, struct res *r)
{
    memset(r, 0, sizeof(*r));
    CHECK(sk_dns_resolve(d, host, port, family, res_cb, r, NULL) == 0);
    CHECK(r->called == 0);
    run_until(loop, &r->called, 1, 10.);
    CHECK(r->called == 1);
    CHECK(sk_dns_pending(d) == 0);
}

/* Checks addrs[i] == text with port. */
static int addr_is(const struct sk_sockaddr *a, const char *text, uint16_t port)
{
    char buf[INET6_ADDRSTRLEN];
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)&a->ss;
        inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
        return a->len == sizeof(*in) && ntohs(in->sin_port) == port && strcmp(buf, text) == 0;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)&a->ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
        return a->len == sizeof(*in6) && ntohs(in6->sin6_port) == port && strcmp(buf, text) == 0;
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------ */

static void test_literals(struct ev_loop *loop)
{
    struct sk_dns *d = new_dns(loop, 500, 1);
    struct res r;
    reset_counts();
    resolve(loop, d, "10.1.2.3", 80, SK_DNS_AUTO, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "10.1.2.3", 80));
    resolve(loop, d, "::1", 8080, SK_DNS_V6_ONLY, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "::1", 8080));
    resolve(loop, d, "2001:db8::7", 1, SK_DNS_ALL, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "2001:db8::7", 1));
    resolve(loop, d, "10.1.2.3", 80, SK_DNS_V6_ONLY, &r);
    CHECK(r.status == SK_ERR_NOTFOUND);
    resolve(loop, d, "2001:db8::7", 80, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == SK_ERR_NOTFOUND);
    CHECK(atomic_load(&srv.n_a) == 0 && atomic_load(&srv.n_aaaa) == 0);
    sk_dns_free(d);
}

static void test_localhost(struct ev_loop *loop)
{
    struct sk_dns *d = new_dns(loop, 500, 1);
    struct res r;
    reset_counts();
    resolve(loop, d, "localhost", 80, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "127.0.0.1", 80));
    resolve(loop, d, "localhost", 80, SK_DNS_AUTO, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "127.0.0.1", 80));
    resolve(loop, d, "localhost", 80, SK_DNS_V6_ONLY, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "::1", 80));
    resolve(loop, d, "LocalHost.", 81, SK_DNS_V4_PREFERRED, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "127.0.0.1", 81));
    resolve(loop, d, "localhost", 82, SK_DNS_ALL, &r);
    CHECK(r.status == 0 && r.n == 2 && addr_is(&r.addrs[0], "127.0.0.1", 82) &&
          addr_is(&r.addrs[1], "::1", 82));
    CHECK(atomic_load(&srv.n_a) == 0 && atomic_load(&srv.n_aaaa) == 0);
    sk_dns_free(d);
}

static void test_a_records(struct ev_loop *loop)
{
    struct sk_dns *d = new_dns(loop, 1000, 2);
    struct res r;
    reset_counts();
    resolve(loop, d, "one.test", 80, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "10.0.0.1", 80));
    /* STRICT_DNS: every address, sorted, duplicate dropped. */
    resolve(loop, d, "multi.test", 443, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == 0 && r.n == 3);
    CHECK(addr_is(&r.addrs[0], "10.0.0.1", 443));
    CHECK(addr_is(&r.addrs[1], "10.0.0.2", 443));
    CHECK(addr_is(&r.addrs[2], "10.0.0.3", 443));
    /* Case-insensitive, absolute name. */
    resolve(loop, d, "Multi.TEST.", 1, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == 0 && r.n == 3);
    CHECK(atomic_load(&srv.n_aaaa) == 0);
    sk_dns_free(d);
}

static void test_families(struct ev_loop *loop)
{
    struct sk_dns *d = new_dns(loop, 1000, 2);
    struct res r;

    reset_counts(); /* AUTO: v6 answers, no A query */
    resolve(loop, d, "dual.test", 80, SK_DNS_AUTO, &r);
    CHECK(r.status == 0 && r.n == 2);
    CHECK(addr_is(&r.addrs[0], "2001:db8::5", 80) && addr_is(&r.addrs[1], "2001:db8::6", 80));
    CHECK(atomic_load(&srv.n_aaaa) == 1 && atomic_load(&srv.n_a) == 0);

    reset_counts(); /* AUTO: no AAAA -> falls back to A */
    resolve(loop, d, "one.test", 80, SK_DNS_AUTO, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "10.0.0.1", 80));
    CHECK(atomic_load(&srv.n_aaaa) == 1 && atomic_load(&srv.n_a) == 1);

    reset_counts();
    resolve(loop, d, "dual.test", 80, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "10.0.0.5", 80));
    CHECK(atomic_load(&srv.n_aaaa) == 0);

    reset_counts();
    resolve(loop, d, "dual.test", 80, SK_DNS_V6_ONLY, &r);
    CHECK(r.status == 0 && r.n == 2 && addr_is(&r.addrs[0], "2001:db8::5", 80));
    CHECK(atomic_load(&srv.n_a) == 0);

    resolve(loop, d, "one.test", 80, SK_DNS_V6_ONLY, &r);
    CHECK(r.status == SK_ERR_NOTFOUND);
    resolve(loop, d, "v6.test", 80, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == SK_ERR_NOTFOUND);

    reset_counts(); /* V4_PREFERRED: A answers, no AAAA query */
    resolve(loop, d, "dual.test", 80, SK_DNS_V4_PREFERRED, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "10.0.0.5", 80));
    CHECK(atomic_load(&srv.n_a) == 1 && atomic_load(&srv.n_aaaa) == 0);

    resolve(loop, d, "v6.test", 80, SK_DNS_V4_PREFERRED, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "2001:db8::1", 80));

    reset_counts(); /* ALL: both, IPv4 first */
    resolve(loop, d, "dual.test", 9, SK_DNS_ALL, &r);
    CHECK(r.status == 0 && r.n == 3);
    CHECK(addr_is(&r.addrs[0], "10.0.0.5", 9) && addr_is(&r.addrs[1], "2001:db8::5", 9) &&
          addr_is(&r.addrs[2], "2001:db8::6", 9));
    CHECK(atomic_load(&srv.n_a) == 1 && atomic_load(&srv.n_aaaa) == 1);

    resolve(loop, d, "one.test", 9, SK_DNS_ALL, &r); /* one family is enough */
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "10.0.0.1", 9));
    resolve(loop, d, "v6.test", 9, SK_DNS_ALL, &r);
    CHECK(r.status == 0 && r.n == 1 && addr_is(&r.addrs[0], "2001:db8::1", 9));
    sk_dns_free(d);
}

static void test_errors(struct ev_loop *loop)
{
    struct sk_dns *d = new_dns(loop, 1000, 2);
    struct res r;
    for (int f = SK_DNS_AUTO; f <= SK_DNS_ALL; f++) {
        resolve(loop, d, "nx.test", 80, f, &r);
        CHECK(r.status == SK_ERR_NOTFOUND);
    }
    resolve(loop, d, "servfail.test", 80, SK_DNS_V4_ONLY, &r);
    CHECK(r.status == SK_ERR_IO);
    /* c-ares fails .onion inside ares_getaddrinfo() itself: still delivered
     * from the loop, never sent. */
    reset_counts();
    resolve(loop, d, "hidden.onion", 80, SK_DNS_AUTO, &r);
    CHECK(r.status == SK_ERR_NOTFOUND);
    CHECK(atomic_load(&srv.n_a) == 0 && atomic_load(&srv.n_aaaa) == 0);

    /* Synchronous rejections: no callback ever. */
    memset(&r, 0, sizeof(r));
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = 0;
    struct sk_dns_query *q = (void *)1;
    CHECK(sk_dns_resolve(d, "", 80, SK_DNS_AUTO, res_cb, &r, &q) == SK_ERR_INVAL);
    CHECK(q == NULL);
    CHECK(sk_dns_resolve(d, longname, 80, SK_DNS_AUTO, res_cb, &r, NULL) == SK_ERR_INVAL);
    CHECK(sk_dns_resolve(d, "one.test", 80, 7, res_cb, &r, NULL) == SK_ERR_INVAL);
    CHECK(sk_dns_resolve(d, "one.test", 80, SK_DNS_AUTO, NULL, &r, NULL) == SK_ERR_INVAL);
    run_until(loop, &r.called, 1, 0.05);
    CHECK(r.called == 0);
    CHECK(sk_dns_pending(d) == 0);
    sk_dns_free(d);

    /* Bad server list is rejected at creation. */
    struct sk_dns_opts o = {.servers = "not-an-ip:53"};
    CHECK(sk_dns_new(loop, &o) == NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_timeout(struct ev_loop *loop)
{
    uint16_t port;
    int hole = udp_bind(&port); /* bound, never read: queries vanish */
    char servers[64];
    snprintf(servers, sizeof(servers), "127.0.0.1:%u", port);
    struct sk_dns_opts o = {
        .timeout_ms = 200, .tries = 1, .servers = servers, .no_search_domains = true};
    struct sk_dns *d = sk_dns_new(loop, &o);
    CHECK(d != NULL);
    struct res r;
    double t0 = now_s();
    resolve(loop, d, "one.test", 80, SK_DNS_V4_ONLY, &r);
    double el = now_s() - t0;
    CHECK(r.status == SK_ERR_TIMEOUT);
    CHECK(el >= 0.15 && el < 1.0);
    fprintf(stderr, "timeout: tries=1 timeout=200ms -> %.3fs\n", el);

    /* ALL runs A and AAAA in parallel: still one timeout. */
    t0 = now_s();
    resolve(loop, d, "one.test", 80, SK_DNS_ALL, &r);
    el = now_s() - t0;
    CHECK(r.status == SK_ERR_TIMEOUT);
    CHECK(el < 1.0);
    sk_dns_free(d);

    /* Same via the test server's dropped name, with retries: 200 + 400 ms. */
    d = new_dns(loop, 200, 2);
    t0 = now_s();
    resolve(loop, d, "drop.test", 80, SK_DNS_V4_ONLY, &r);
    el = now_s() - t0;
    CHECK(r.status == SK_ERR_TIMEOUT);
    CHECK(el >= 0.5 && el < 2.0);
    fprintf(stderr, "timeout: tries=2 timeout=200ms -> %.3fs\n", el);
    sk_dns_free(d);
    close(hole);
}

struct many {
    int done;
    int ok;
};

struct many_item {
    struct many *m;
    unsigned idx;
};

static void many_cb(void *arg, int status, const struct sk_sockaddr *addrs, size_t n)
{
    struct many_item *it = arg;
    char want[32];
    snprintf(want, sizeof(want), "10.1.%u.%u", it->idx / 256, it->idx % 256);
    if (status == 0 && n == 1 && addr_is(&addrs[0], want, 1000 + it->idx))
        it->m->ok++;
    else
        fprintf(stderr, "many: h%u status %d n %zu\n", it->idx, status, n);
    it->m->done++;
}

static void test_concurrent(struct ev_loop *loop)
{
    enum { N = 100 };
    struct sk_dns *d = new_dns(loop, 2000, 2);
    struct many m = {0};
    struct many_item items[N];
    reset_counts();
    for (unsigned i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof(name), "h%u.test", i);
        items[i] = (struct many_item){&m, i};
        /* Every third one via AUTO: AAAA (empty) then A. */
        int fam = i % 3 == 0 ? SK_DNS_AUTO : SK_DNS_V4_ONLY;
        CHECK(sk_dns_resolve(d, name, (uint16_t)(1000 + i), fam, many_cb, &items[i], NULL) == 0);
    }
    CHECK(sk_dns_pending(d) == N);
    run_until(loop, &m.done, N, 20.);
    CHECK(m.done == N && m.ok == N);
    CHECK(atomic_load(&srv.n_a) >= N);
    CHECK(sk_dns_pending(d) == 0);
    sk_dns_free(d);
}

static void test_free_pending(struct ev_loop *loop)
{
    struct res r[8];
    memset(r, 0, sizeof(r));

    /* Free right away: queries in c-ares, results on the done list, and a
     * cancelled one. */
    struct sk_dns *d = new_dns(loop, 1000, 3);
    struct sk_dns_query *q;
    CHECK(sk_dns_resolve(d, "drop.test", 80, SK_DNS_AUTO, res_cb, &r[0], NULL) == 0);
    CHECK(sk_dns_resolve(d, "drop.test", 80, SK_DNS_ALL, res_cb, &r[1], NULL) == 0);
    CHECK(sk_dns_resolve(d, "one.test", 80, SK_DNS_V4_ONLY, res_cb, &r[2], NULL) == 0);
    CHECK(sk_dns_resolve(d, "10.0.0.9", 80, SK_DNS_V4_ONLY, res_cb, &r[3], NULL) == 0);
    CHECK(sk_dns_resolve(d, "localhost", 80, SK_DNS_ALL, res_cb, &r[4], NULL) == 0);
    CHECK(sk_dns_resolve(d, "dual.test", 80, SK_DNS_ALL, res_cb, &r[5], &q) == 0);
    sk_dns_cancel(q);
    CHECK(sk_dns_pending(d) == 5);
    sk_dns_free(d);
    int total = 0;
    run_until(loop, &total, 1, 0.1);
    for (int i = 0; i < 6; i++)
        CHECK(r[i].called == 0);

    /* Free after some answers arrived, with drop.test still in flight. */
    memset(r, 0, sizeof(r));
    d = new_dns(loop, 1000, 3);
    CHECK(sk_dns_resolve(d, "drop.test", 80, SK_DNS_V4_ONLY, res_cb, &r[0], NULL) == 0);
    CHECK(sk_dns_resolve(d, "drop.test", 80, SK_DNS_AUTO, res_cb, &r[1], NULL) == 0);
    CHECK(sk_dns_resolve(d, "one.test", 80, SK_DNS_V4_ONLY, res_cb, &r[2], NULL) == 0);
    run_until(loop, &r[2].called, 1, 5.);
    CHECK(r[2].called == 1 && r[2].status == 0);
    CHECK(sk_dns_pending(d) == 2);
    sk_dns_free(d);
    run_until(loop, &total, 1, 0.1);
    CHECK(r[0].called == 0 && r[1].called == 0);
}

/* Callbacks that call back into the resolver. */
struct reent {
    struct sk_dns *d;
    struct sk_dns_query *other;
    struct res inner;
    int calls;
    int mode; /* 0 free, 1 cancel other + resolve again, 2 cancel self */
};

static void reent_cb(void *arg, int status, const struct sk_sockaddr *addrs, size_t n)
{
    struct reent *e = arg;
    e->calls++;
    if (e->mode == 0) {
        sk_dns_free(e->d);
    } else if (e->mode == 1) {
        sk_dns_cancel(e->other);
        CHECK(sk_dns_resolve(e->d, "10.9.9.9", 7, SK_DNS_AUTO, res_cb, &e->inner, NULL) == 0);
        CHECK(e->inner.called == 0);
    }
}

static void test_reentrancy(struct ev_loop *loop)
{
    /* Free from a callback: the rest of the batch is dropped. */
    struct sk_dns *d = new_dns(loop, 1000, 1);
    struct reent e = {.d = d, .mode = 0};
    struct res r1 = {0}, r2 = {0};
    CHECK(sk_dns_resolve(d, "10.0.0.1", 80, SK_DNS_AUTO, reent_cb, &e, NULL) == 0);
    CHECK(sk_dns_resolve(d, "10.0.0.2", 80, SK_DNS_AUTO, res_cb, &r1, NULL) == 0);
    CHECK(sk_dns_resolve(d, "drop.test", 80, SK_DNS_AUTO, res_cb, &r2, NULL) == 0);
    run_until(loop, &e.calls, 1, 5.);
    CHECK(e.calls == 1);
    run_until(loop, &r1.called, 1, 0.1);
    CHECK(r1.called == 0 && r2.called == 0);

    /* Cancel a sibling in the same batch and resolve from a callback. */
    d = new_dns(loop, 1000, 1);
    struct reent e2 = {.d = d, .mode = 1};
    struct res r3 = {0};
    CHECK(sk_dns_resolve(d, "10.0.0.1", 80, SK_DNS_AUTO, reent_cb, &e2, NULL) == 0);
    CHECK(sk_dns_resolve(d, "10.0.0.2", 80, SK_DNS_AUTO, res_cb, &r3, &e2.other) == 0);
    run_until(loop, &e2.inner.called, 1, 5.);
    CHECK(e2.calls == 1 && r3.called == 0);
    CHECK(e2.inner.called == 1 && e2.inner.status == 0 &&
          addr_is(&e2.inner.addrs[0], "10.9.9.9", 7));
    CHECK(sk_dns_pending(d) == 0);

    /* Cancel before the answer (query in c-ares) and after (done list). */
    struct res r4 = {0}, r5 = {0}, r6 = {0};
    struct sk_dns_query *q4, *q5;
    CHECK(sk_dns_resolve(d, "one.test", 80, SK_DNS_AUTO, res_cb, &r4, &q4) == 0);
    CHECK(sk_dns_resolve(d, "10.0.0.3", 80, SK_DNS_AUTO, res_cb, &r5, &q5) == 0);
    sk_dns_cancel(q4);
    sk_dns_cancel(q5);
    CHECK(sk_dns_pending(d) == 0);
    resolve(loop, d, "multi.test", 80, SK_DNS_V4_ONLY, &r6); /* keeps going */
    CHECK(r6.status == 0 && r6.n == 3);
    run_until(loop, &r4.called, 1, 0.2);
    CHECK(r4.called == 0 && r5.called == 0);
    sk_dns_free(d);
    sk_dns_free(NULL);
}

int main(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    server_start();
    test_literals(loop);
    test_localhost(loop);
    test_a_records(loop);
    test_families(loop);
    test_errors(loop);
    test_timeout(loop);
    test_concurrent(loop);
    test_free_pending(loop);
    test_reentrancy(loop);
    server_stop();
    ev_loop_destroy(loop);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("dns: all tests passed\n");
    return 0;
}
