/* Batched socket sends and receives through io_uring (raw system calls, no
 * liburing).
 *
 * A worker collects the connections that have bytes to send (or that became
 * readable) in one loop iteration and does all their send(2)s (recv(2)s) with
 * a single io_uring_enter instead of one system call each: the TCP work is
 * the same, the per-call entry/exit cost (high on VMs with page-table
 * isolation) is paid once. Every operation is non-blocking (MSG_DONTWAIT): a
 * full (empty) socket completes at once with -EAGAIN, never waits, so the
 * call returns with every result.
 *
 * Where io_uring is missing or forbidden (old kernel, seccomp profiles that
 * block it, kernel.io_uring_disabled), sk_uring_new returns NULL and callers
 * send one by one as before. */
#ifndef SKIFF_URING_H
#define SKIFF_URING_H

#include <stddef.h>

struct sk_uring;

enum { SK_URING_SEND = 0, SK_URING_RECV = 1 };

struct sk_uring_op {
    int fd;
    int op; /* SK_URING_SEND / SK_URING_RECV */
    void *p;
    size_t len;
};

/* A ring of `entries` submission slots (a power of two is used); NULL when
 * io_uring cannot be used here (errno says why). */
struct sk_uring *sk_uring_new(unsigned entries);
void sk_uring_free(struct sk_uring *r);
/* Slots per batch. */
unsigned sk_uring_capacity(const struct sk_uring *r);
/* Run v[0..n) (n <= capacity), each send(fd, p, len, MSG_NOSIGNAL |
 * MSG_DONTWAIT) or recv(fd, p, len, MSG_DONTWAIT), and wait for all:
 * res[i] = bytes sent / received (0: end of stream) or -errno. An entry
 * the kernel did not take gets res[i] = SK_URING_NOT_SENT. Returns how many
 * were submitted, or -1 (errno) if the ring failed: res[] then holds what
 * completed, and the ring must not be used again. */
#define SK_URING_NOT_SENT (-0x7fffffff)
int sk_uring_batch(struct sk_uring *r, const struct sk_uring_op *v, int *res, unsigned n);

#endif
