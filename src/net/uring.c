/* Batched socket sends through io_uring (see uring.h). */
#include "skiff/uring.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct sk_uring {
    int fd;
    unsigned entries;
    /* submission ring */
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    struct io_uring_sqe *sqes;
    /* completion ring */
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    void *map; /* both rings: one mapping (IORING_FEAT_SINGLE_MMAP) */
    size_t map_len, sqes_len;
};

static int ring_setup(unsigned entries, struct io_uring_params *p, unsigned flags)
{
    memset(p, 0, sizeof(*p));
    p->flags = flags;
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int ring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

void sk_uring_free(struct sk_uring *r)
{
    if (!r)
        return;
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_len);
    if (r->map && r->map != MAP_FAILED)
        munmap(r->map, r->map_len);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
}

struct sk_uring *sk_uring_new(unsigned entries)
{
    if (entries < 2)
        entries = 2;
    struct io_uring_params p;
    /* newest flags first: one issuer (the worker thread), completions run
     * only when we ask, no error stops a batch half-way; older kernels reject
     * what they do not know (EINVAL) */
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SUBMIT_ALL,
        0,
    };
    int fd = -1;
    for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        fd = ring_setup(entries, &p, tries[i]);
        if (fd >= 0 || errno != EINVAL)
            break;
    }
    if (fd < 0)
        return NULL;
    if (!(p.features & IORING_FEAT_NODROP) || !(p.features & IORING_FEAT_SINGLE_MMAP)) {
        /* kernels before 5.5: not worth supporting a second mapping scheme */
        close(fd);
        errno = ENOSYS;
        return NULL;
    }
    struct sk_uring *r = calloc(1, sizeof(*r));
    if (!r) {
        close(fd);
        return NULL;
    }
    r->fd = fd;
    r->entries = p.sq_entries;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    r->map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                  IORING_OFF_SQ_RING);
    if (r->map == MAP_FAILED)
        goto fail;
    r->map_len = len;
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;
    char *sq = r->map, *cq = r->map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return r;
fail:;
    int e = errno;
    sk_uring_free(r);
    errno = e;
    return NULL;
}

unsigned sk_uring_capacity(const struct sk_uring *r)
{
    return r->entries;
}

/* Take every completion there is: res[user_data] = result. */
static unsigned reap(struct sk_uring *r, int *res, unsigned n)
{
    unsigned head = *r->cq_head; /* only we move the head */
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    unsigned mask = *r->cq_mask, got = 0;
    while (head != tail) {
        const struct io_uring_cqe *c = &r->cqes[head & mask];
        if (c->user_data < n)
            res[c->user_data] = c->res;
        head++;
        got++;
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return got;
}

int sk_uring_send_batch(struct sk_uring *r, const struct sk_uring_send *v, int *res, unsigned n)
{
    if (n > r->entries)
        n = r->entries;
    if (n == 0)
        return 0;
    unsigned mask = *r->sq_mask;
    unsigned tail = *r->sq_tail; /* only we move the tail */
    for (unsigned i = 0; i < n; i++) {
        unsigned idx = (tail + i) & mask;
        struct io_uring_sqe *s = &r->sqes[idx];
        memset(s, 0, sizeof(*s));
        s->opcode = IORING_OP_SEND;
        s->fd = v[i].fd;
        s->addr = (uint64_t)(uintptr_t)v[i].p;
        s->len = v[i].len > 0x7ffff000u ? 0x7ffff000u : (unsigned)v[i].len;
        /* MSG_DONTWAIT: a full socket fails the send with -EAGAIN at once
         * instead of arming a poll, so every entry completes in the call */
        s->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
        s->user_data = i;
        r->sq_array[idx] = idx;
        res[i] = SK_URING_NOT_SENT;
    }
    __atomic_store_n(r->sq_tail, tail + n, __ATOMIC_RELEASE);
    int sub;
    do {
        sub = ring_enter(r->fd, n, n, IORING_ENTER_GETEVENTS);
    } while (sub < 0 && errno == EINTR && __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE) == tail);
    if (sub < 0) {
        /* taken or not? the kernel's head says */
        unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        sub = (int)(head - tail);
        if (sub == 0) {
            int e = errno;
            __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
            errno = e;
            return -1;
        }
    }
    if ((unsigned)sub < n) /* withdraw what the kernel did not take */
        __atomic_store_n(r->sq_tail, tail + (unsigned)sub, __ATOMIC_RELEASE);
    unsigned got = reap(r, res, n);
    while (got < (unsigned)sub) {
        /* non-blocking sends complete in the submitting call; this wait is
         * for completions posted late, not for socket space */
        int e = ring_enter(r->fd, 0, (unsigned)sub - got, IORING_ENTER_GETEVENTS);
        if (e < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
            errno = EIO;
            return -1; /* res[] holds what completed; stop using this ring */
        }
        got += reap(r, res, n);
    }
    return sub;
}
