/* Sockets and listeners.
 *
 * The main thread binds every listener once per worker (SO_REUSEPORT), so bind
 * errors are reported synchronously at start-up and on reload, and hands the
 * fds to the workers inside the CONFIG message. A worker owns its fds from
 * then on: it accepts on them, and closes them when a later config drops the
 * listener or when it drains. */
#ifndef SKIFF_NET_H
#define SKIFF_NET_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "skiff/model.h"

struct sk_worker;
struct sk_listen_fd;

/* "1.2.3.4:80" / "[::1]:80" -> sockaddr. 0 or SK_ERR_INVAL. */
int sk_addr_parse(const char *s, struct sk_sockaddr *out);
/* sockaddr -> "ip:port" into buf (always NUL-terminated). */
const char *sk_addr_str(const struct sk_sockaddr *a, char *buf, size_t len);

/* Bind + listen a non-blocking SO_REUSEPORT socket. Returns fd or -errno;
 * on error, *err gets a short reason. */
int sk_listen_socket(const struct sk_sockaddr *a, int backlog, const char **err);
/* Same without SO_REUSEPORT (admin: a second instance must fail to bind). */
int sk_listen_socket_exclusive(const struct sk_sockaddr *a, int backlog, const char **err);
/* Start a non-blocking connect. Returns fd (connect in progress or done) or -errno. */
int sk_connect_socket(const struct sk_sockaddr *a);
int sk_set_nodelay(int fd);

/* Per-worker accepting listener. */
struct sk_listener_rt {
    struct sk_listener_rt *next;
    char *name;
    int fd;
    ev_io io;
    struct sk_worker *w;
    const struct sk_listener *cfg; /* from w->snap */
};

/* Worker side: adopt a new snapshot's listen set (keep, add, close). */
void sk_listeners_apply(struct sk_worker *w, struct sk_snapshot *snap, struct sk_listen_fd *lfds,
                        size_t n);
/* Stop accepting and close all of this worker's listen fds. */
void sk_listeners_close_all(struct sk_worker *w);

/* Main thread side: the set of bound listen sockets, per listener name. */
struct sk_bound {
    char *name;
    struct sk_sockaddr addr;
    int *fds; /* one per worker; -1 when bind_to_port is false */
    bool seen;
};
struct sk_bound_set {
    struct sk_bound *v;
    size_t n;
};
/* Bind what `snap` needs, reusing sockets of listeners whose name and
 * address are unchanged. On success fills *lfds_per_worker (nworkers arrays,
 * one entry per listener in snap) and updates `set` (listeners that are gone
 * are dropped from it: the workers close their fds). On failure binds nothing
 * new that stays open, leaves `set` as it was, and sets *err. */
int sk_bound_prepare(struct sk_bound_set *set, const struct sk_snapshot *snap, int nworkers,
                     struct sk_listen_fd ***lfds_per_worker, char *err, size_t errlen);

/* Connection handlers, by filter-chain kind (take ownership of fd). */
/* `ssl`: the established server-side TLS session (handshake done) when the
 * chain terminates TLS, else NULL. */
void sk_tcp_proxy_accept(struct sk_worker *w, const struct sk_listener *l,
                         const struct sk_filter_chain *fc, int fd, SSL *ssl);
void sk_http_accept(struct sk_worker *w, const struct sk_listener *l,
                    const struct sk_filter_chain *fc, int fd, SSL *ssl,
                    const struct sk_sockaddr *peer);

/* Free the calling worker thread's pooled HTTP objects (at thread exit). */
void sk_http_thread_cleanup(void);

#endif
