/* Asynchronous DNS on libev: c-ares tells us which sockets it wants watched
 * (ARES_OPT_SOCK_STATE_CB -> one ev_io per socket) and when its next timeout
 * is (ares_timeout() -> one ev_timer). Results never reach the user from
 * inside c-ares: a finished query is queued on the done list and a zero-delay
 * ev_timer delivers the batch from the loop. That gives one delivery path for
 * DNS answers, IP literals and "localhost" alike, keeps user callbacks out of
 * c-ares' stack (so a callback may free the resolver, which ares_destroy()s
 * the channel), and keeps sk_dns_resolve() non-reentrant. */
#include "skiff/dns.h"

#include "skiff/err.h"
#include "skiff/log.h"

#include <ares.h>
#include <arpa/inet.h>
#include <ev.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#define MAX_HOST_LEN 254 /* 253 + optional trailing dot */
#define MAX_ADDRS 1024   /* hard cap on one answer set */

struct link {
    struct link *next, *prev;
};

static void link_init(struct link *l)
{
    l->next = l->prev = l;
}

static bool link_empty(const struct link *head)
{
    return head->next == head;
}

static void link_unlink(struct link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

static void link_append(struct link *head, struct link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

/* Moves every element of from to the end of to; from becomes empty. */
static void link_splice(struct link *to, struct link *from)
{
    if (link_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    link_init(from);
}

struct sk_dns_sock {
    ev_io w;
    struct sk_dns_sock *next;
};

struct sk_dns {
    struct ev_loop *loop;
    ares_channel ch;
    ev_timer ares_w;    /* c-ares' next timeout */
    ev_timer deliver_w; /* zero-delay: deliver the done list */
    struct sk_dns_sock *socks;
    struct link done;  /* finished, waiting for delivery */
    struct link batch; /* being delivered right now */
    size_t npending;   /* started, not yet delivered or cancelled */
    bool closing;      /* sk_dns_free() called */
    bool delivering;   /* inside deliver_cb: defer the final free */
};

struct sk_dns_query {
    struct link link; /* on d->done or d->batch once finished; else detached */
    struct sk_dns *d;
    sk_dns_cb cb;
    void *arg;
    char *host;
    uint16_t port;
    int family;      /* policy, enum sk_dns_family */
    int stage;       /* address family of the lookup in flight */
    int status;      /* SK_ERR_* once finished */
    bool in_ares;    /* a c-ares callback for this query is outstanding */
    bool cancelled;  /* drop the result when c-ares calls back */
    bool delivering; /* its callback is running: cancel is a no-op */
    struct sk_sockaddr *addrs;
    size_t n, cap;
};

static const char *const family_names[] = {"AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"};

const char *sk_dns_family_name(int family)
{
    if (family < 0 || family > SK_DNS_ALL)
        return "?";
    return family_names[family];
}

/* ---- results ---------------------------------------------------------- */

static int add_addr(struct sk_dns_query *q, const struct sockaddr *sa)
{
    if (q->n == MAX_ADDRS)
        return 0; /* keep the first MAX_ADDRS; more is a misconfiguration */
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 4;
        struct sk_sockaddr *a = realloc(q->addrs, cap * sizeof(*a));
        if (!a)
            return SK_ERR_NOMEM;
        q->addrs = a;
        q->cap = cap;
    }
    struct sk_sockaddr *out = &q->addrs[q->n];
    memset(out, 0, sizeof(*out));
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&out->ss;
        memcpy(in, sa, sizeof(*in));
        in->sin_port = htons(q->port);
        out->len = sizeof(*in);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->ss;
        memcpy(in6, sa, sizeof(*in6));
        in6->sin6_port = htons(q->port);
        in6->sin6_flowinfo = 0;
        out->len = sizeof(*in6);
    } else {
        return 0;
    }
    q->n++;
    return 0;
}

static int addr_cmp(const void *pa, const void *pb)
{
    const struct sk_sockaddr *a = pa, *b = pb;
    int fa = a->ss.ss_family, fb = b->ss.ss_family;
    if (fa != fb)
        return fa == AF_INET ? -1 : 1; /* IPv4 first */
    if (fa == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return memcmp(&x->sin_addr, &y->sin_addr, sizeof(x->sin_addr));
    }
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
    int c = memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr));
    if (c)
        return c;
    return x->sin6_scope_id < y->sin6_scope_id ? -1 : x->sin6_scope_id > y->sin6_scope_id;
}

/* Stable order + de-duplication: the same answer in any record order (DNS
 * round-robin) yields the same array. */
static void sort_dedup(struct sk_dns_query *q)
{
    if (q->n < 2)
        return;
    qsort(q->addrs, q->n, sizeof(q->addrs[0]), addr_cmp);
    size_t w = 1;
    for (size_t r = 1; r < q->n; r++)
        if (addr_cmp(&q->addrs[r], &q->addrs[w - 1]) != 0)
            q->addrs[w++] = q->addrs[r];
    q->n = w;
}

static int map_ares_status(int st)
{
    switch (st) {
    case ARES_SUCCESS: /* but no address of the wanted family */
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
        return SK_ERR_NOTFOUND;
    case ARES_ETIMEOUT:
        return SK_ERR_TIMEOUT;
    case ARES_ENOMEM:
        return SK_ERR_NOMEM;
    case ARES_EBADNAME:
    case ARES_EBADFAMILY:
    case ARES_EBADFLAGS:
    case ARES_EBADHINTS:
        return SK_ERR_INVAL;
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return SK_ERR_CLOSED;
    default: /* ESERVFAIL, EREFUSED, EFORMERR, EBADRESP, ECONNREFUSED, ... */
        return SK_ERR_IO;
    }
}

/* ---- query lifetime --------------------------------------------------- */

static void query_free(struct sk_dns_query *q)
{
    link_unlink(&q->link);
    free(q->addrs);
    free(q->host);
    free(q);
}

static void deliver_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* Queues a finished query for delivery from the loop. */
static void query_finish(struct sk_dns_query *q)
{
    struct sk_dns *d = q->d;
    sort_dedup(q);
    if (q->n > 0)
        q->status = 0;
    link_append(&d->done, &q->link);
    if (!ev_is_active(&d->deliver_w)) {
        ev_timer_set(&d->deliver_w, 0., 0.);
        ev_timer_start(d->loop, &d->deliver_w);
    }
}

static void free_list(struct link *head)
{
    while (!link_empty(head))
        query_free((struct sk_dns_query *)head->next);
}

static void dns_destroy(struct sk_dns *d)
{
    free(d);
}

static void deliver_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sk_dns *d = w->data;
    /* Only what is done now: a callback that resolves a literal again is
     * served on the next loop iteration, not in this one. */
    link_splice(&d->batch, &d->done);
    d->delivering = true;
    while (!link_empty(&d->batch)) {
        struct sk_dns_query *q = (struct sk_dns_query *)d->batch.next;
        link_unlink(&q->link);
        if (!d->closing) {
            d->npending--;
            q->delivering = true;
            sk_debug("[dns] %s (%s): %s, %zu address(es)", q->host, sk_dns_family_name(q->family),
                     q->status ? sk_strerror(q->status) : "ok", q->n);
            q->cb(q->arg, q->status, q->n ? q->addrs : NULL, q->n);
        }
        query_free(q);
    }
    d->delivering = false;
    if (d->closing)
        dns_destroy(d);
}

/* ---- c-ares glue ------------------------------------------------------ */

static void rearm_ares_timer(struct sk_dns *d)
{
    struct timeval tv;
    ev_timer_stop(d->loop, &d->ares_w);
    if (d->closing || !ares_timeout(d->ch, NULL, &tv))
        return;
    /* ev_now() may lag a little; firing early just means c-ares finds nothing
     * expired and we re-arm for the rest. */
    ev_timer_set(&d->ares_w, (double)tv.tv_sec + (double)tv.tv_usec / 1e6, 0.);
    ev_timer_start(d->loop, &d->ares_w);
}

static void ares_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sk_dns *d = w->data;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm_ares_timer(d);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct sk_dns *d = w->data;
    int fd = w->fd;
    /* c-ares may close this socket (freeing w via sock_state_cb) in here. */
    ares_process_fd(d->ch, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    rearm_ares_timer(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct sk_dns *d = data;
    struct sk_dns_sock **pp = &d->socks, *s;
    while ((s = *pp) && s->w.fd != fd)
        pp = &s->next;
    if (!readable && !writable) {
        if (s) {
            ev_io_stop(d->loop, &s->w);
            *pp = s->next;
            free(s);
        }
        return;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) {
            /* The query still ends, by c-ares' timeout. */
            sk_error("[dns] out of memory watching socket %d", (int)fd);
            return;
        }
        s->next = d->socks;
        d->socks = s;
    } else {
        ev_io_stop(d->loop, &s->w);
    }
    ev_io_init(&s->w, io_cb, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    s->w.data = d;
    ev_io_start(d->loop, &s->w);
}

static void addrinfo_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res);

static void start_lookup(struct sk_dns_query *q, int af)
{
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = af;
    /* We sort ourselves; c-ares' RFC 6724 sort would also connect() a probe
     * socket per address, synchronously. */
    hints.ai_flags = ARES_AI_NOSORT;
    q->stage = af;
    q->in_ares = true;
    /* May call addrinfo_cb synchronously (hosts file hit, bad name, ...). */
    ares_getaddrinfo(q->d->ch, q->host, NULL, &hints, addrinfo_cb, q);
}

static int first_family(int policy)
{
    switch (policy) {
    case SK_DNS_V4_ONLY:
    case SK_DNS_V4_PREFERRED:
        return AF_INET;
    case SK_DNS_ALL:
        return AF_UNSPEC; /* c-ares sends A and AAAA in parallel */
    default:
        return AF_INET6; /* AUTO, V6_ONLY */
    }
}

/* Envoy: AUTO falls back from v6 to v4, V4_PREFERRED from v4 to v6, whenever
 * the first lookup yields no address, whatever the reason. */
static int fallback_family(const struct sk_dns_query *q)
{
    if (q->family == SK_DNS_AUTO && q->stage == AF_INET6)
        return AF_INET;
    if (q->family == SK_DNS_V4_PREFERRED && q->stage == AF_INET)
        return AF_INET6;
    return AF_UNSPEC;
}

static void addrinfo_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    struct sk_dns_query *q = arg;
    struct sk_dns *d = q->d;
    q->in_ares = false;
    if (q->cancelled || d->closing) {
        /* Cancelled, or inside ares_destroy(): freeing our own record is fine,
         * c-ares no longer refers to it. */
        if (res)
            ares_freeaddrinfo(res);
        query_free(q);
        return;
    }
    int err = 0;
    if (status == ARES_SUCCESS && res) {
        for (struct ares_addrinfo_node *n = res->nodes; n && !err; n = n->ai_next) {
            if (!n->ai_addr)
                continue;
            if (q->stage != AF_UNSPEC && n->ai_family != q->stage)
                continue;
            err = add_addr(q, n->ai_addr);
        }
    }
    if (res)
        ares_freeaddrinfo(res);
    if (err) {
        q->n = 0;
        q->status = err;
        query_finish(q);
        return;
    }
    q->status = map_ares_status(status);
    int next = fallback_family(q);
    if (q->n == 0 && next != AF_UNSPEC && status != ARES_EDESTRUCTION &&
        status != ARES_ECANCELLED) {
        sk_debug("[dns] %s: no %s address (%s), trying %s", q->host,
                 q->stage == AF_INET6 ? "IPv6" : "IPv4", ares_strerror(status),
                 next == AF_INET6 ? "IPv6" : "IPv4");
        /* Starting a query from a c-ares callback is supported (c-ares'
         * own getaddrinfo chains lookups this way). */
        start_lookup(q, next);
        return;
    }
    query_finish(q);
}

/* ---- no-network answers ----------------------------------------------- */

static bool family_allows(int policy, int af)
{
    if (policy == SK_DNS_V4_ONLY)
        return af == AF_INET;
    if (policy == SK_DNS_V6_ONLY)
        return af == AF_INET6;
    return true;
}

/* Returns 1 if host was answered locally (q finished), 0 if it needs c-ares,
 * or SK_ERR_NOMEM. */
static int answer_locally(struct sk_dns_query *q)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } u;
    memset(&u, 0, sizeof(u));
    int err = 0;
    if (inet_pton(AF_INET, q->host, &u.in.sin_addr) == 1) {
        u.in.sin_family = AF_INET;
        if (family_allows(q->family, AF_INET))
            err = add_addr(q, &u.sa);
    } else if (inet_pton(AF_INET6, q->host, &u.in6.sin6_addr) == 1) {
        u.in6.sin6_family = AF_INET6;
        if (family_allows(q->family, AF_INET6))
            err = add_addr(q, &u.sa);
    } else if (strcasecmp(q->host, "localhost") == 0 || strcasecmp(q->host, "localhost.") == 0) {
        /* RFC 6761: never sent to a server. Deliberately IPv4 for AUTO (not
         * Envoy's ::1 via /etc/hosts): the local app usually listens on
         * 127.0.0.1 or 0.0.0.0, and pods may have no IPv6 at all. */
        bool v4 = q->family != SK_DNS_V6_ONLY;
        bool v6 = q->family == SK_DNS_V6_ONLY || q->family == SK_DNS_ALL;
        if (v4) {
            u.in.sin_family = AF_INET;
            u.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            err = add_addr(q, &u.sa);
        }
        if (v6 && !err) {
            memset(&u, 0, sizeof(u));
            u.in6.sin6_family = AF_INET6;
            u.in6.sin6_addr = in6addr_loopback;
            err = add_addr(q, &u.sa);
        }
    } else {
        return 0;
    }
    if (err)
        return err;
    q->status = q->n ? 0 : SK_ERR_NOTFOUND;
    query_finish(q);
    return 1;
}

/* ---- public API ------------------------------------------------------- */

struct sk_dns *sk_dns_new(struct ev_loop *loop, const struct sk_dns_opts *opts)
{
    static const struct sk_dns_opts defaults;
    if (!loop)
        return NULL;
    if (!opts)
        opts = &defaults;
    struct sk_dns *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->loop = loop;
    link_init(&d->done);
    link_init(&d->batch);
    ev_timer_init(&d->ares_w, ares_timer_cb, 0., 0.);
    d->ares_w.data = d;
    ev_timer_init(&d->deliver_w, deliver_cb, 0., 0.);
    d->deliver_w.data = d;

    struct ares_options o;
    memset(&o, 0, sizeof(o));
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = d;
    o.timeout = opts->timeout_ms ? (int)opts->timeout_ms : 5000;
    o.tries = opts->tries ? (int)opts->tries : 4;
    if (opts->resolv_conf) {
        mask |= ARES_OPT_RESOLVCONF;
        o.resolvconf_path = (char *)opts->resolv_conf;
    }
    if (opts->no_search_domains) {
        mask |= ARES_OPT_DOMAINS;
        o.domains = NULL;
        o.ndomains = 0;
    }
    if (opts->use_tcp) {
        mask |= ARES_OPT_FLAGS;
        o.flags = ARES_FLAG_USEVC;
    }
    int st = ares_init_options(&d->ch, &o, mask);
    if (st != ARES_SUCCESS) {
        sk_error("[dns] c-ares init failed: %s", ares_strerror(st));
        free(d);
        return NULL;
    }
    if (opts->servers) {
        st = ares_set_servers_ports_csv(d->ch, opts->servers);
        if (st != ARES_SUCCESS) {
            sk_error("[dns] bad DNS servers \"%s\": %s", opts->servers, ares_strerror(st));
            ares_destroy(d->ch);
            free(d);
            return NULL;
        }
    }
    return d;
}

void sk_dns_free(struct sk_dns *d)
{
    if (!d || d->closing)
        return;
    d->closing = true;
    ev_timer_stop(d->loop, &d->ares_w);
    ev_timer_stop(d->loop, &d->deliver_w);
    /* Calls addrinfo_cb(ARES_EDESTRUCTION) for every query in flight, which
     * frees it (closing is set), and sock_state_cb(fd, 0, 0) per socket. */
    ares_destroy(d->ch);
    d->ch = NULL;
    while (d->socks) {
        struct sk_dns_sock *s = d->socks;
        ev_io_stop(d->loop, &s->w);
        d->socks = s->next;
        free(s);
    }
    free_list(&d->done);
    if (d->delivering)
        return; /* deliver_cb drops the rest of its batch, then frees d */
    free_list(&d->batch);
    dns_destroy(d);
}

int sk_dns_resolve(struct sk_dns *d, const char *host, uint16_t port, int family, sk_dns_cb cb,
                   void *arg, struct sk_dns_query **qp)
{
    if (qp)
        *qp = NULL;
    if (!d || d->closing || !host || !cb || family < SK_DNS_AUTO || family > SK_DNS_ALL)
        return SK_ERR_INVAL;
    size_t len = strlen(host);
    if (len == 0 || len > MAX_HOST_LEN)
        return SK_ERR_INVAL;
    struct sk_dns_query *q = calloc(1, sizeof(*q));
    if (!q)
        return SK_ERR_NOMEM;
    link_init(&q->link);
    q->host = strdup(host);
    if (!q->host) {
        free(q);
        return SK_ERR_NOMEM;
    }
    q->d = d;
    q->cb = cb;
    q->arg = arg;
    q->port = port;
    q->family = family;

    int r = answer_locally(q);
    if (r < 0) {
        query_free(q);
        return r;
    }
    d->npending++;
    if (qp)
        *qp = q;
    if (r == 0) {
        start_lookup(q, first_family(family));
        rearm_ares_timer(d);
    }
    return 0;
}

void sk_dns_cancel(struct sk_dns_query *q)
{
    if (!q || q->delivering || q->cancelled)
        return;
    q->cancelled = true;
    q->cb = NULL;
    q->d->npending--;
    if (q->in_ares)
        return;    /* freed when c-ares calls back */
    query_free(q); /* finished, waiting on the done list */
}

size_t sk_dns_pending(const struct sk_dns *d)
{
    return d ? d->npending : 0;
}
