/* Listen sockets: bound on the main thread, accepted on by workers. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "skiff/err.h"
#include "skiff/evio.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/scope.h"
#include "skiff/tls.h"
#include "skiff/worker.h"

int sk_addr_parse(const char *s, struct sk_sockaddr *out)
{
    char host[128];
    const char *colon;
    memset(out, 0, sizeof(*out));
    if (!s)
        return SK_ERR_INVAL;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof(host))
            return SK_ERR_INVAL;
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = 0;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host))
            return SK_ERR_INVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = 0;
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || port < 0 || port > 65535)
        return SK_ERR_INVAL;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        out->len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*v6);
        return 0;
    }
    return SK_ERR_INVAL;
}

const char *sk_addr_str(const struct sk_sockaddr *a, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
        snprintf(buf, len, "%s:%u", ip, ntohs(v4->sin_port));
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, len, "[%s]:%u", ip, ntohs(v6->sin6_port));
    } else {
        snprintf(buf, len, "?");
    }
    return buf;
}

int sk_set_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int listen_socket(const struct sk_sockaddr *a, int backlog, bool reuseport,
                         const char **err)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = "socket";
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        int e = errno;
        close(fd);
        *err = "SO_REUSEPORT";
        return -e;
    }
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
        int e = errno;
        close(fd);
        *err = "bind";
        return -e;
    }
    if (listen(fd, backlog > 0 ? backlog : 1024) < 0) {
        int e = errno;
        close(fd);
        *err = "listen";
        return -e;
    }
    return fd;
}

int sk_listen_socket(const struct sk_sockaddr *a, int backlog, const char **err)
{
    return listen_socket(a, backlog, true, err);
}

int sk_listen_socket_exclusive(const struct sk_sockaddr *a, int backlog, const char **err)
{
    return listen_socket(a, backlog, false, err);
}

int sk_connect_socket(const struct sk_sockaddr *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    sk_set_nodelay(fd);
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* ---- main thread: bound set --------------------------------------------- */

static int addr_eq(const struct sk_sockaddr *a, const struct sk_sockaddr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

static struct sk_bound *bound_find(struct sk_bound_set *set, const char *name)
{
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->v[i].name, name) == 0)
            return &set->v[i];
    return NULL;
}

int sk_bound_prepare(struct sk_bound_set *set, const struct sk_snapshot *snap, int nworkers,
                     struct sk_listen_fd ***lfds_out, char *err, size_t errlen)
{
    size_t nl = snap->nlisteners;
    struct sk_bound *nv = calloc(nl ? nl : 1, sizeof(*nv));
    if (!nv) {
        snprintf(err, errlen, "out of memory");
        return SK_ERR_NOMEM;
    }
    for (size_t i = 0; i < set->n; i++)
        set->v[i].seen = false;
    for (size_t i = 0; i < nl; i++) {
        const struct sk_listener *l = &snap->listeners[i];
        struct sk_bound *old = bound_find(set, l->name);
        nv[i].name = strdup(l->name);
        nv[i].addr = l->addr;
        nv[i].fds = malloc(sizeof(int) * (size_t)nworkers);
        if (nv[i].fds)
            for (int k = 0; k < nworkers; k++)
                nv[i].fds[k] = -1;
        if (!nv[i].name || !nv[i].fds) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        bool want_bind = l->bind_to_port;
        bool old_bound = old && old->fds[0] >= 0;
        if (old && addr_eq(&old->addr, &l->addr) && want_bind == old_bound) {
            memcpy(nv[i].fds, old->fds, sizeof(int) * (size_t)nworkers);
            old->seen = true;
            nv[i].seen = true; /* reused, not ours to close on failure */
            continue;
        }
        if (!want_bind)
            continue;
        for (int k = 0; k < nworkers; k++) {
            const char *what = "";
            int fd = sk_listen_socket(&l->addr, (int)l->tcp_backlog_size, &what);
            if (fd < 0) {
                snprintf(err, errlen, "listener '%s' on %s: %s: %s", l->name, l->addr_str, what,
                         strerror(-fd));
                goto fail;
            }
            nv[i].fds[k] = fd;
        }
    }
    /* build the per-worker hand-off arrays */
    struct sk_listen_fd **per = calloc((size_t)nworkers, sizeof(*per));
    if (!per)
        goto fail;
    for (int k = 0; k < nworkers; k++) {
        per[k] = calloc(nl ? nl : 1, sizeof(**per));
        if (!per[k]) {
            for (int j = 0; j < k; j++)
                free(per[j]);
            free(per);
            goto fail;
        }
        for (size_t j = 0; j < nl; j++) {
            per[k][j].name = strdup(nv[j].name);
            per[k][j].fd = nv[j].fds[k];
        }
    }
    /* success: listeners not carried over are closed by their workers */
    for (size_t j = 0; j < set->n; j++) {
        free(set->v[j].name);
        free(set->v[j].fds);
    }
    free(set->v);
    set->v = nv;
    set->n = nl;
    *lfds_out = per;
    return 0;
fail:
    /* close only sockets bound in this attempt (reused ones stay with their workers) */
    for (size_t j = 0; j < nl; j++) {
        if (nv[j].fds && !nv[j].seen)
            for (int k = 0; k < nworkers; k++)
                if (nv[j].fds[k] >= 0)
                    close(nv[j].fds[k]);
        free(nv[j].name);
        free(nv[j].fds);
    }
    free(nv);
    return SK_ERR_IO;
}

/* ---- worker side ---------------------------------------------------------- */

/* What we know about a new connection when choosing its filter chain. */
struct conn_facts {
    uint16_t dport;
    bool tls;               /* ClientHello seen */
    const char *sni;        /* lower-case, "" if none */
    const struct sk_client_hello *ch; /* ALPN list (TLS only) */
};

static bool sni_match(const char *pat, const char *sni, int *spec)
{
    if (pat[0] == '*' && pat[1] == '.') {
        size_t pl = strlen(pat) - 1, sl = strlen(sni);
        if (sl > pl && strcasecmp(sni + sl - pl, pat + 1) == 0) {
            *spec = 1;
            return true;
        }
        return false;
    }
    if (strcasecmp(pat, sni) == 0) {
        *spec = 2;
        return true;
    }
    return false;
}

/* Envoy's "most specific wins", criterion by criterion: destination port,
 * server name (exact > wildcard > unset), transport protocol, application
 * protocols. A chain that constrains a criterion and does not match it is out. */
static const struct sk_filter_chain *select_chain_facts(const struct sk_listener *l,
                                                        const struct conn_facts *f)
{
    const struct sk_filter_chain *best = NULL;
    long best_score = -1;
    for (size_t i = 0; i < l->nchains; i++) {
        const struct sk_filter_chain *fc = &l->chains[i];
        const struct sk_chain_match *m = &fc->match;
        int s_port = 0, s_sni = 0, s_tp = 0, s_alpn = 0;
        if (m->destination_port) {
            if (m->destination_port != f->dport)
                continue;
            s_port = 1;
        }
        if (m->nserver_names) {
            bool ok = false;
            int spec = 0;
            for (size_t k = 0; k < m->nserver_names && f->sni && f->sni[0]; k++) {
                int sp = 0;
                if (sni_match(m->server_names[k], f->sni, &sp) && sp > spec) {
                    spec = sp;
                    ok = true;
                }
            }
            if (!ok)
                continue;
            s_sni = spec;
        }
        if (m->transport_protocol) {
            const char *tp = f->tls ? "tls" : "raw_buffer";
            if (strcmp(m->transport_protocol, tp) != 0)
                continue;
            s_tp = 1;
        }
        if (m->napplication_protocols) {
            /* Envoy walks the client's ALPN list in order: a chain matching
             * an earlier (preferred) protocol is more specific */
            size_t best_j = SIZE_MAX;
            for (size_t k = 0; k < m->napplication_protocols && f->tls && f->ch; k++)
                for (size_t j = 0; j < f->ch->nalpn && j < best_j; j++)
                    if (strcmp(m->application_protocols[k], f->ch->alpn[j]) == 0)
                        best_j = j;
            if (best_j == SIZE_MAX)
                continue;
            s_alpn = (int)(SK_CH_MAX_ALPN - best_j);
        }
        long score = s_port * 100000L + s_sni * 1000L + s_tp * 100L + s_alpn;
        if (score > best_score) {
            best = fc;
            best_score = score;
        }
    }
    return best ? best : l->default_chain;
}

static uint16_t local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            return ntohs(((struct sockaddr_in *)&ss)->sin_port);
        if (ss.ss_family == AF_INET6)
            return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return 0;
}

/* Does choosing a chain on this listener need the ClientHello? */
static bool needs_inspection(const struct sk_listener *l)
{
    for (size_t i = 0; i < l->nchains; i++) {
        const struct sk_chain_match *m = &l->chains[i].match;
        if (m->nserver_names || m->transport_protocol || m->napplication_protocols)
            return true;
    }
    return false;
}

static void hand_off(struct sk_worker *w, const struct sk_listener *l,
                     const struct sk_filter_chain *fc, int fd, SSL *ssl,
                     const struct sk_sockaddr *peer)
{
    if (fc->kind == SK_CHAIN_TCP)
        sk_tcp_proxy_accept(w, l, fc, fd, ssl);
    else
        sk_http_accept(w, l, fc, fd, ssl, peer);
}

/* ---- pre-codec stage: ClientHello inspection, TLS handshake ---------------- */

#define PRE_TIMEOUT_S 10.0

struct pre_conn {
    struct sk_conn_base base;
    struct sk_reap reap;
    int fd;
    ev_io io;
    ev_timer timer;
    struct sk_snapshot *snap; /* keeps l/fc alive */
    const struct sk_listener *l;
    const struct sk_filter_chain *fc;
    struct sk_sockaddr peer;
    uint16_t dport;
    SSL *ssl;
    bool inspecting;
    bool done;
    ev_timer repeek;   /* partial ClientHello: peek again after a pause */
    double repeek_s;
};

static void pre_free(struct sk_reap *r)
{
    struct pre_conn *p = SK_CONTAINER_OF(r, struct pre_conn, reap);
    if (p->snap)
        sk_snapshot_unref(p->snap);
    free(p);
}

static void pre_end(struct pre_conn *p, bool close_fd)
{
    struct sk_worker *w = p->base.w;
    if (p->done)
        return;
    p->done = true;
    ev_io_stop(w->loop, &p->io);
    ev_timer_stop(w->loop, &p->timer);
    ev_timer_stop(w->loop, &p->repeek);
    sk_worker_conn_unlink(w, &p->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, -1);
    if (close_fd) {
        if (p->ssl)
            SSL_free(p->ssl);
        p->ssl = NULL;
        close(p->fd);
        sk_stat_add(&w->stats, SK_ST_downstream_cx_destroy, 1);
    }
    sk_worker_reap(w, &p->reap);
}

static void pre_drain(struct sk_conn_base *b)
{
    pre_end((struct pre_conn *)b, true);
}

static void pre_set_io(struct pre_conn *p, int ev)
{
    sk_io_set(p->base.w->loop, &p->io, ev);
}

/* The codecs take a reference on the worker's current snapshot: if a reload
 * happened while we waited, re-resolve the listener and chain there (same
 * name, same chain position); gone -> close. */
static void pre_hand_off(struct pre_conn *p, const struct sk_filter_chain *fc, int fd, SSL *ssl)
{
    struct sk_worker *w = p->base.w;
    const struct sk_listener *l = p->l;
    if (w->snap != p->snap) {
        const struct sk_listener *nl = sk_snapshot_find_listener(w->snap, l->name);
        const struct sk_filter_chain *nfc = NULL;
        if (nl && fc == l->default_chain)
            nfc = nl->default_chain;
        else if (nl && (size_t)(fc - l->chains) < nl->nchains)
            nfc = &nl->chains[fc - l->chains];
        if (!nfc || nfc->kind != fc->kind || (nfc->tls != NULL) != (ssl != NULL)) {
            p->ssl = ssl;
            pre_end(p, true);
            return;
        }
        l = nl;
        fc = nfc;
    }
    struct sk_sockaddr peer = p->peer;
    pre_end(p, false);
    hand_off(w, l, fc, fd, ssl, &peer);
}

/* Chain chosen: handshake if it terminates TLS, else hand off now. */
static void pre_chain_chosen(struct pre_conn *p, const struct sk_filter_chain *fc);

static void pre_handshake(struct pre_conn *p)
{
    int want = 0;
    const char *why = NULL;
    int r = sk_tls_handshake(p->ssl, &want, &why);
    if (r == 0) {
        pre_set_io(p, want == SK_TLS_WANT_WRITE ? EV_WRITE : EV_READ);
        return;
    }
    if (r < 0) {
        char ip[64];
        sk_warn("listener %s: TLS handshake from %s failed: %s", p->l->name,
                sk_addr_str(&p->peer, ip, sizeof(ip)), why ? why : "?");
        pre_end(p, true);
        return;
    }
    /* established: the codec takes fd + SSL; our snapshot ref goes with us
     * (the codec takes its own on the worker's snapshot) */
    int fd = p->fd;
    SSL *ssl = p->ssl;
    p->ssl = NULL;
    pre_hand_off(p, p->fc, fd, ssl);
}

static void pre_chain_chosen(struct pre_conn *p, const struct sk_filter_chain *fc)
{
    if (!fc) {
        sk_debug("listener %s: no filter chain matches; closing connection", p->l->name);
        pre_end(p, true);
        return;
    }
    p->fc = fc;
    if (!fc->tls) {
        pre_hand_off(p, fc, p->fd, NULL);
        return;
    }
    p->ssl = sk_tls_ssl_new(fc->tls);
    if (!p->ssl) {
        sk_warn("listener %s: cannot create a TLS session", p->l->name);
        pre_end(p, true);
        return;
    }
    SSL_set_fd(p->ssl, p->fd);
    p->inspecting = false;
    pre_handshake(p);
}

static void pre_inspect(struct pre_conn *p)
{
    uint8_t buf[SK_CH_INSPECT_MAX];
    ssize_t n = recv(p->fd, buf, sizeof(buf), MSG_PEEK);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        pre_end(p, true);
        return;
    }
    if (n == 0) {
        pre_end(p, true);
        return;
    }
    struct sk_client_hello ch;
    memset(&ch, 0, sizeof(ch));
    int r = sk_tls_inspect(buf, (size_t)n, &ch);
    if (r == 0) {
        /* More of the ClientHello is needed. Peeking consumes nothing, so the
         * socket stays readable: stop watching it and look again after a
         * short, growing pause. A FIN now means it will never be whole. */
        struct pollfd pf = {p->fd, POLLRDHUP, 0};
        if (poll(&pf, 1, 0) > 0 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            pre_end(p, true);
            return;
        }
        struct sk_worker *w = p->base.w;
        ev_io_stop(w->loop, &p->io);
        p->repeek_s = p->repeek_s ? p->repeek_s * 2 : 0.002;
        if (p->repeek_s > 0.1)
            p->repeek_s = 0.1;
        ev_timer_set(&p->repeek, p->repeek_s, 0.);
        ev_timer_start(w->loop, &p->repeek);
        return;
    }
    struct conn_facts f = {p->dport, r == 1, r == 1 ? ch.sni : "", r == 1 ? &ch : NULL};
    pre_chain_chosen(p, select_chain_facts(p->l, &f));
}

static void pre_repeek_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct pre_conn *p = t->data;
    if (p->inspecting && !p->done)
        pre_inspect(p);
}

static void pre_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct pre_conn *p = io->data;
    if (p->inspecting)
        pre_inspect(p);
    else
        pre_handshake(p);
}

static void pre_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct pre_conn *p = t->data;
    if (p->inspecting) {
        /* nothing decisive arrived: choose with what we know (plaintext) */
        struct conn_facts f = {p->dport, false, "", NULL};
        p->inspecting = false;
        pre_chain_chosen(p, select_chain_facts(p->l, &f));
        return;
    }
    sk_warn("listener %s: TLS handshake timed out", p->l->name);
    pre_end(p, true);
}

static void pre_start(struct sk_worker *w, const struct sk_listener *l, int fd,
                      const struct sk_sockaddr *peer, uint16_t dport,
                      const struct sk_filter_chain *fc)
{
    struct pre_conn *p = calloc(1, sizeof(*p));
    if (!p) {
        close(fd);
        return;
    }
    p->reap.free_fn = pre_free;
    p->base.drain = pre_drain;
    p->fd = fd;
    p->snap = sk_snapshot_ref(w->snap);
    p->l = l;
    p->peer = *peer;
    p->dport = dport;
    p->inspecting = fc == NULL;
    sk_worker_conn_link(w, &p->base);
    sk_stat_add(&w->stats, SK_ST_downstream_cx_active, 1);
    ev_io_init(&p->io, pre_io_cb, fd, EV_READ);
    p->io.data = p;
    ev_io_start(w->loop, &p->io);
    ev_timer_init(&p->timer, pre_timeout_cb, PRE_TIMEOUT_S, 0.);
    p->timer.data = p;
    ev_init(&p->repeek, pre_repeek_cb);
    p->repeek.data = p;
    ev_timer_start(w->loop, &p->timer);
    if (fc)
        pre_chain_chosen(p, fc);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct sk_listener_rt *lr = io->data;
    struct sk_worker *w = lr->w;
    /* bounded batch so one busy listener cannot starve the loop */
    for (int n = 0; n < 64; n++) {
        struct sk_sockaddr peer;
        peer.len = sizeof(peer.ss);
        int fd = accept4(lr->fd, (struct sockaddr *)&peer.ss, &peer.len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                sk_warn("listener %s: accept: %s", lr->name, strerror(errno));
            return;
        }
        const struct sk_listener *l = lr->cfg;
        sk_stat_add(&w->stats, SK_ST_downstream_cx_total, 1);
        sk_scope_add(l->scope, w->id, SK_SC_downstream_cx_total, 1);
        sk_set_nodelay(fd);
        uint16_t dport = local_port(fd);
        if (needs_inspection(l)) {
            pre_start(w, l, fd, &peer, dport, NULL);
            continue;
        }
        struct conn_facts f = {dport, false, "", NULL};
        const struct sk_filter_chain *fc = select_chain_facts(l, &f);
        if (!fc) {
            sk_debug("listener %s: no filter chain matches; closing connection", lr->name);
            close(fd);
            continue;
        }
        if (fc->tls) {
            pre_start(w, l, fd, &peer, dport, fc);
            continue;
        }
        hand_off(w, l, fc, fd, NULL, &peer);
    }
}

static void lr_close(struct sk_worker *w, struct sk_listener_rt *lr)
{
    if (lr->fd >= 0) {
        ev_io_stop(w->loop, &lr->io);
        close(lr->fd);
        lr->fd = -1;
    }
}

void sk_listeners_apply(struct sk_worker *w, struct sk_snapshot *snap, struct sk_listen_fd *lfds,
                        size_t n)
{
    struct sk_listener_rt *keep = NULL;
    /* match existing runtime listeners by fd (same fd = unchanged socket) */
    for (size_t i = 0; i < n; i++) {
        const struct sk_listener *cfg = sk_snapshot_find_listener(snap, lfds[i].name);
        struct sk_listener_rt **pp = &w->listeners, *lr = NULL;
        while (*pp) {
            if ((*pp)->fd == lfds[i].fd && lfds[i].fd >= 0 && strcmp((*pp)->name, lfds[i].name) == 0) {
                lr = *pp;
                *pp = lr->next;
                break;
            }
            pp = &(*pp)->next;
        }
        if (!lr) {
            lr = calloc(1, sizeof(*lr));
            if (!lr) {
                if (lfds[i].fd >= 0)
                    close(lfds[i].fd);
                continue;
            }
            lr->name = strdup(lfds[i].name);
            lr->fd = lfds[i].fd;
            lr->w = w;
            ev_io_init(&lr->io, accept_cb, lr->fd, EV_READ);
            lr->io.data = lr;
            if (lr->fd >= 0 && !w->draining)
                ev_io_start(w->loop, &lr->io);
        }
        lr->cfg = cfg;
        lr->next = keep;
        keep = lr;
    }
    /* whatever is left was removed from the config */
    struct sk_listener_rt *lr = w->listeners;
    while (lr) {
        struct sk_listener_rt *nx = lr->next;
        sk_info("worker %d: listener %s removed; closing its socket", w->id, lr->name);
        lr_close(w, lr);
        free(lr->name);
        free(lr);
        lr = nx;
    }
    w->listeners = keep;
}

void sk_listeners_close_all(struct sk_worker *w)
{
    for (struct sk_listener_rt *lr = w->listeners; lr; lr = lr->next)
        lr_close(w, lr);
}
