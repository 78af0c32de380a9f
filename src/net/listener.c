/* Listen sockets: bound on the main thread, accepted on by workers. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/net.h"
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

static int chain_matches(const struct sk_filter_chain *fc, uint16_t dport)
{
    const struct sk_chain_match *m = &fc->match;
    if (m->destination_port && m->destination_port != dport)
        return 0;
    if (m->transport_protocol && strcmp(m->transport_protocol, "raw_buffer") != 0)
        return 0;
    if (m->nserver_names)
        return 0; /* no SNI on plaintext */
    if (m->napplication_protocols)
        return 0; /* needs tls_inspector / http_inspector (not yet) */
    return 1;
}

/* Envoy's "most specific wins": destination_port first, then transport. */
static const struct sk_filter_chain *select_chain(const struct sk_listener *l, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    uint16_t dport = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            dport = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            dport = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    const struct sk_filter_chain *best = NULL;
    int best_score = -1;
    for (size_t i = 0; i < l->nchains; i++) {
        const struct sk_filter_chain *fc = &l->chains[i];
        if (!chain_matches(fc, dport))
            continue;
        int score = (fc->match.destination_port ? 2 : 0) + (fc->match.transport_protocol ? 1 : 0);
        if (score > best_score) {
            best = fc;
            best_score = score;
        }
    }
    return best ? best : l->default_chain;
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
        const struct sk_filter_chain *fc = select_chain(l, fd);
        if (!fc) {
            sk_debug("listener %s: no filter chain matches; closing connection", lr->name);
            close(fd);
            continue;
        }
        sk_stat_add(&w->stats, SK_ST_downstream_cx_total, 1);
        sk_set_nodelay(fd);
        if (fc->kind == SK_CHAIN_TCP)
            sk_tcp_proxy_accept(w, l, fc, fd);
        else
            sk_http_accept(w, l, fc, fd, &peer);
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
