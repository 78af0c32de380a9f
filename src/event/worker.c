/* Worker threads, their mailboxes and reap lists. */
#include "skiff/worker.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "skiff/accesslog.h"
#include "skiff/h2_client.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/transport.h"
#include "skiff/upstream.h"
#include "skiff/uring.h"

struct sk_worker *sk_workers;
int sk_nworkers;
bool sk_workers_io_uring = true;

uint32_t sk_worker_rand(struct sk_worker *w)
{
    uint32_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    w->rng = x;
    return x;
}

void sk_worker_reap(struct sk_worker *w, struct sk_reap *r)
{
    r->next = w->reap_list;
    w->reap_list = r;
}

void sk_worker_defer(struct sk_worker *w, struct sk_reap *r)
{
    r->next = w->defer_list;
    w->defer_list = r;
    if (w->after_reap && !ev_is_active(&w->kick_w))
        ev_idle_start(w->loop, &w->kick_w);
}

static void kick_cb(struct ev_loop *loop, ev_idle *i, int revents)
{
    (void)revents;
    ev_idle_stop(loop, i); /* the poll did not block; reap_w runs next */
}

static void chk_cb(struct ev_loop *loop, ev_check *c, int revents)
{
    (void)loop;
    (void)revents;
    struct sk_worker *w = c->data;
    w->after_reap = false;
}

void sk_worker_defer_write(struct sk_worker *w, struct sk_reap *r, struct sk_transport *t,
                           struct sk_buf *b)
{
    sk_worker_defer(w, r);
    if (w->uring && !t->wb_queued && w->wb_n < SK_WBATCH_MAX) {
        t->wb_queued = 1;
        w->wb[w->wb_n++] = (struct sk_wbatch_ent){t, b};
    }
}

/* Send what the queued connections hold, all in one io_uring call; each
 * buffer loses the bytes that went out, the owners' flush callbacks (run
 * right after) see the rest, or nothing. Entries are live: the objects
 * holding them are freed only from the reap list, which runs after. A lone
 * send is left to its owner (same cost either way). */
static void batch_send(struct sk_worker *w)
{
    unsigned n = w->wb_n, m = 0;
    w->wb_n = 0;
    struct sk_uring_send v[SK_WBATCH_MAX];
    unsigned at[SK_WBATCH_MAX];
    for (unsigned i = 0; i < n; i++) {
        struct sk_wbatch_ent *e = &w->wb[i];
        e->t->wb_queued = 0;
        if (e->t->fd < 0 || e->t->ssl || e->t->tox || sk_buf_used(e->b) == 0)
            continue;
        v[m] = (struct sk_uring_send){e->t->fd, sk_buf_rptr(e->b), sk_buf_used(e->b)};
        at[m++] = i;
    }
    if (m < 2)
        return;
    int res[SK_WBATCH_MAX];
    int sub = sk_uring_send_batch(w->uring, v, res, m);
    for (unsigned j = 0; j < m; j++) {
        if (res[j] > 0) {
            sk_buf_consume(w->wb[at[j]].b, (size_t)res[j]);
            sk_stat_add(&w->stats, SK_ST_io_batched_sends, 1);
        }
    }
    if (sub > 0)
        sk_stat_add(&w->stats, SK_ST_io_batches, 1);
    if (sub < 0) {
        sk_warn("worker %d: io_uring send batch failed (%s); sending one by one from now on",
                w->id, strerror(errno));
        sk_uring_free(w->uring);
        w->uring = NULL;
    }
}

#define SK_TRIM_BYTES (256u * 1024)
#define SK_TRIM_DELAY 0.1

static void trim_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct sk_worker *w = t->data;
    w->released = 0;
    malloc_trim(0);
}

void sk_worker_released(struct sk_worker *w, size_t bytes)
{
    w->released += bytes;
    if (w->released >= SK_TRIM_BYTES && !ev_is_active(&w->trim_w)) {
        ev_timer_set(&w->trim_w, SK_TRIM_DELAY, 0.);
        ev_timer_start(w->loop, &w->trim_w);
    }
}

static void reap_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct sk_worker *w = p->data;
    w->after_reap = false;
    if (ev_is_active(&w->kick_w))
        ev_idle_stop(loop, &w->kick_w);
    while (w->defer_list) {
        if (w->wb_n)
            batch_send(w);
        struct sk_reap *r = w->defer_list;
        w->defer_list = NULL;
        while (r) {
            struct sk_reap *n = r->next;
            r->free_fn(r);
            r = n;
        }
    }
    /* freeing may queue more objects (a stream freeing its upstream conn):
     * loop until the list stays empty */
    while (w->reap_list) {
        struct sk_reap *r = w->reap_list;
        w->reap_list = NULL;
        while (r) {
            struct sk_reap *n = r->next;
            r->free_fn(r);
            r = n;
        }
    }
    w->after_reap = true;
}

void sk_worker_conn_link(struct sk_worker *w, struct sk_conn_base *c)
{
    c->w = w;
    c->prev = NULL;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
}

void sk_worker_conn_unlink(struct sk_worker *w, struct sk_conn_base *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else if (w->conns == c)
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

void sk_worker_post(struct sk_worker *w, struct sk_msg *msg)
{
    msg->next = NULL;
    pthread_mutex_lock(&w->mbox_lock);
    if (w->mbox_tail)
        w->mbox_tail->next = msg;
    else
        w->mbox_head = msg;
    w->mbox_tail = msg;
    pthread_mutex_unlock(&w->mbox_lock);
    ev_async_send(w->loop, &w->wake);
}

static void msg_free(struct sk_msg *m)
{
    if (m->snap)
        sk_snapshot_unref(m->snap);
    for (size_t i = 0; i < m->nlfds; i++)
        free(m->lfds[i].name);
    free(m->lfds);
    free(m->cluster);
    free(m->addrs);
    free(m);
}

static void start_drain(struct sk_worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    sk_listeners_close_all(w);
    /* drain() may unlink and reap the connection: walk with a saved next */
    struct sk_conn_base *c = w->conns;
    while (c) {
        struct sk_conn_base *n = c->next;
        c->drain(c);
        c = n;
    }
}

static void apply_config(struct sk_worker *w, struct sk_msg *m)
{
    struct sk_snapshot *old = w->snap;
    w->snap = m->snap;
    m->snap = NULL;
    sk_clusters_apply(w, w->snap);
    sk_listeners_apply(w, w->snap, m->lfds, m->nlfds);
    /* fds now belong to the worker's listener objects (msg_free frees
     * only the names and the array) */
    atomic_store(&w->applied_version, w->snap->version);
    if (old)
        sk_snapshot_unref(old);
}

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct sk_worker *w = a->data;
    for (;;) {
        pthread_mutex_lock(&w->mbox_lock);
        struct sk_msg *m = w->mbox_head;
        if (m) {
            w->mbox_head = m->next;
            if (!w->mbox_head)
                w->mbox_tail = NULL;
        }
        pthread_mutex_unlock(&w->mbox_lock);
        if (!m)
            break;
        switch (m->kind) {
        case SK_MSG_CONFIG:
            apply_config(w, m);
            break;
        case SK_MSG_DRAIN:
            start_drain(w);
            break;
        case SK_MSG_STOP:
            w->stopping = true;
            ev_break(loop, EVBREAK_ALL);
            break;
        case SK_MSG_HOSTS:
            sk_clusters_set_hosts(w, m->cluster, m->addrs, m->naddrs);
            break;
        case SK_MSG_CALL:
            m->fn(w, m->arg);
            break;
        }
        msg_free(m);
    }
}

static void *worker_main(void *arg)
{
    struct sk_worker *w = arg;
    if (sk_workers_io_uring) {
        /* made on this thread: it is the ring's only submitter */
        w->uring = sk_uring_new(SK_WBATCH_MAX);
        if (!w->uring)
            sk_debug("worker %d: io_uring unavailable (%s): one send per connection", w->id,
                     strerror(errno));
    }
    sk_debug("worker %d started%s", w->id, w->uring ? " (batched sends: io_uring)" : "");
    ev_run(w->loop, 0);
    /* STOP: close what is left (drain deadline passed) */
    struct sk_conn_base *c = w->conns;
    while (c) {
        struct sk_conn_base *n = c->next;
        c->drain(c);
        c = n;
    }
    sk_listeners_close_all(w);
    /* run the reap list once more so nothing queued is left, then pools */
    reap_cb(w->loop, &w->reap_w, 0);
    sk_access_log_worker_close(w);
    sk_http_thread_cleanup();
    sk_h2_client_thread_cleanup();
    sk_buf_thread_cache_free();
    sk_uring_free(w->uring);
    w->uring = NULL;
    return NULL;
}

int sk_workers_start(int n)
{
    sk_workers = calloc((size_t)n, sizeof(*sk_workers));
    if (!sk_workers)
        return -1;
    sk_nworkers = n;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (int i = 0; i < n; i++) {
        struct sk_worker *w = &sk_workers[i];
        w->id = i;
        w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
        if (!w->loop)
            w->loop = ev_loop_new(0);
        if (!w->loop)
            return -1;
        w->rng = (uint32_t)(ts.tv_nsec ^ (i * 2654435761u) ^ (uint32_t)getpid()) | 1u;
        pthread_mutex_init(&w->mbox_lock, NULL);
        ev_async_init(&w->wake, wake_cb);
        w->wake.data = w;
        ev_async_start(w->loop, &w->wake);
        ev_prepare_init(&w->reap_w, reap_cb);
        w->reap_w.data = w;
        ev_prepare_start(w->loop, &w->reap_w);
        ev_idle_init(&w->kick_w, kick_cb);
        ev_check_init(&w->chk_w, chk_cb);
        w->chk_w.data = w;
        ev_check_start(w->loop, &w->chk_w);
        ev_init(&w->trim_w, trim_cb);
        w->trim_w.data = w;
        ev_set_userdata(w->loop, w);
    }
    for (int i = 0; i < n; i++) {
        if (pthread_create(&sk_workers[i].thread, NULL, worker_main, &sk_workers[i]) != 0)
            return -1;
    }
    return 0;
}

void sk_workers_join(void)
{
    for (int i = 0; i < sk_nworkers; i++)
        pthread_join(sk_workers[i].thread, NULL);
}

uint64_t sk_workers_stat(enum sk_stat_id id)
{
    uint64_t t = 0;
    for (int i = 0; i < sk_nworkers; i++)
        t += sk_stat_get(&sk_workers[i].stats, id);
    return t;
}
