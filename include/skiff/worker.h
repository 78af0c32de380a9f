/* Worker threads: each owns a libev loop, its accepting sockets, its
 * connections for their whole life, its upstream pools and its counters.
 * The main thread talks to a worker only through its mailbox (a mutex-guarded
 * queue + ev_async); nothing on the request path takes a lock.
 *
 * Objects are never freed inside the callback that decides to close them:
 * sk_worker_reap() queues them and an ev_prepare watcher frees them before
 * the loop next blocks. */
#ifndef SKIFF_WORKER_H
#define SKIFF_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "skiff/histogram.h"
#include "skiff/model.h"
#include "skiff/stats.h"

#define SK_MAX_WORKERS 64

/* The object that embeds `ptr` as its `member` (reap / defer nodes). */
#define SK_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

struct sk_reap {
    struct sk_reap *next;
    void (*free_fn)(struct sk_reap *r);
};

/* One listening socket handed to a worker. */
struct sk_listen_fd {
    char *name; /* listener name */
    int fd;     /* -1 for bind_to_port: false listeners (reachable by hand-off only) */
};

enum sk_msg_kind {
    SK_MSG_CONFIG = 1, /* new snapshot + listen set */
    SK_MSG_DRAIN = 2,  /* stop accepting, close idle, finish in-flight */
    SK_MSG_STOP = 3,   /* leave the loop now */
    SK_MSG_HOSTS = 4,  /* DNS result for a cluster */
    SK_MSG_CALL = 5,   /* run fn(worker, arg) on the worker's thread (e.g. chaos rules) */
};

struct sk_worker;

struct sk_msg {
    struct sk_msg *next;
    int kind;
    struct sk_snapshot *snap;    /* CONFIG: a reference owned by the message */
    struct sk_listen_fd *lfds;   /* CONFIG: malloc'd array, owned by the message */
    size_t nlfds;
    char *cluster;               /* HOSTS */
    struct sk_sockaddr *addrs;   /* HOSTS: malloc'd */
    size_t naddrs;
    void (*fn)(struct sk_worker *w, void *arg); /* CALL: fn owns arg */
    void *arg;
};

struct sk_listener_rt;
struct sk_cluster_rt;
struct sk_conn_base;
struct sk_transport;
struct sk_buf;
struct sk_uring;

/* Connections with bytes to send this loop iteration (sk_worker_defer_write). */
#define SK_WBATCH_MAX 128
struct sk_wbatch_ent {
    struct sk_transport *t;
    struct sk_buf *b;
};

struct sk_worker {
    int id;
    pthread_t thread;
    struct ev_loop *loop;
    ev_async wake;
    ev_prepare reap_w;
    /* deferred work queued after reap_w ran (by events fed from its
     * callbacks, invoked before the loop polls) must not wait for the next
     * event: kick_w (idle) keeps that poll from blocking; chk_w (check)
     * marks the end of that window when the poll returns */
    ev_idle kick_w;
    ev_check chk_w;
    bool after_reap;
    pthread_mutex_t mbox_lock;
    struct sk_msg *mbox_head, *mbox_tail;
    struct sk_reap *reap_list;
    struct sk_reap *defer_list; /* run (not freed) before the loop blocks */

    struct sk_snapshot *snap; /* current config */
    _Atomic uint64_t applied_version; /* snap->version once applied (read by main) */
    struct sk_listener_rt *listeners;
    /* cluster runtime state, keyed by name, survives snapshots */
    struct sk_cluster_rt *clusters;
    struct sk_cluster_rt **rt_by_index; /* for `snap`: cluster->index -> runtime */
    /* all downstream connections, for drain */
    struct sk_conn_base *conns;
    bool draining;
    bool stopping;
    uint32_t rng; /* xorshift state for LB / weights */
    uint64_t next_conn_id;
    struct sk_stats stats;
    struct sk_hist_worker hist; /* latency histograms (admin/histogram.c), single writer */
    void *al_writers; /* access log sinks of this worker (accesslog.c) */
    /* scratch for request ids etc. */
    char date_str[40];
    /* memory released by idle connections (h2 hibernation) since the last
     * malloc_trim; trim_w returns it to the kernel (sk_worker_released) */
    size_t released;
    ev_timer trim_w;
    /* batched sends (uring.h): NULL = one send(2) per connection */
    struct sk_uring *uring;
    unsigned wb_n;
    struct sk_wbatch_ent wb[SK_WBATCH_MAX];
};

/* Every downstream connection starts with this, linked in worker->conns so
 * drain can reach idle ones. */
struct sk_conn_base {
    struct sk_conn_base *prev, *next;
    struct sk_worker *w;
    /* called on drain: close now if idle, else after the in-flight response */
    void (*drain)(struct sk_conn_base *c);
};

extern struct sk_worker *sk_workers;
extern int sk_nworkers;

/* Create and start n worker threads (each runs its loop until STOP). */
int sk_workers_start(int n);
void sk_workers_join(void);
/* Post a message; takes ownership of msg. Safe from any thread. */
void sk_worker_post(struct sk_worker *w, struct sk_msg *msg);
/* Queue an object to be freed before the loop blocks again. */
void sk_worker_reap(struct sk_worker *w, struct sk_reap *r);
/* Run r->free_fn(r) once before the loop next blocks (used to coalesce
 * writes: one send per connection per loop iteration). The node must stay
 * valid until then; it is not freed. */
void sk_worker_defer(struct sk_worker *w, struct sk_reap *r);
/* sk_worker_defer for a connection's flush, which writes b to t: when two or
 * more plaintext connections have bytes to send in a loop iteration, the
 * worker sends them all with one io_uring call just before running the
 * deferred callbacks (consuming what was sent from each b), so those
 * callbacks find their buffers already written. The owner must keep t and b
 * valid until its callback has run (as for sk_worker_defer), and b must be
 * the only buffer written to t. */
void sk_worker_defer_write(struct sk_worker *w, struct sk_reap *r, struct sk_transport *t,
                           struct sk_buf *b);
/* Batched sends through io_uring where the kernel allows it (default true);
 * set before sk_workers_start. */
extern bool sk_workers_io_uring;
/* An idle connection freed `bytes` of per-connection state (an h2 session
 * hibernating). Freed blocks between live ones stay resident in malloc's
 * heap; once 256 KiB have been released, a timer 0.1 s later gives free pages
 * back to the kernel (malloc_trim), at most once per 0.1 s. */
void sk_worker_released(struct sk_worker *w, size_t bytes);
/* Cheap per-worker random number. */
uint32_t sk_worker_rand(struct sk_worker *w);

void sk_worker_conn_link(struct sk_worker *w, struct sk_conn_base *c);
void sk_worker_conn_unlink(struct sk_worker *w, struct sk_conn_base *c);

/* Runtime of a cluster for the worker's current snapshot (NULL if the
 * cluster is not known to this worker). */
struct sk_cluster_rt *sk_worker_cluster_rt(struct sk_worker *w, const struct sk_snapshot *snap,
                                           const struct sk_cluster *c);

/* Total of one counter over all workers (admin thread). */
uint64_t sk_workers_stat(enum sk_stat_id id);

#endif
