/* Batched socket sends through io_uring (raw system calls, no liburing).
 *
 * A worker collects the connections that have bytes to send in one loop
 * iteration and sends them all with a single io_uring_enter instead of one
 * send(2) each: the TCP work is the same, the per-call entry/exit cost (high
 * on VMs with page-table isolation) is paid once. Sends are non-blocking
 * (MSG_DONTWAIT): a full socket completes at once with -EAGAIN, never waits,
 * so the call returns with every result.
 *
 * Where io_uring is missing or forbidden (old kernel, seccomp profiles that
 * block it, kernel.io_uring_disabled), sk_uring_new returns NULL and callers
 * send one by one as before. */
#ifndef SKIFF_URING_H
#define SKIFF_URING_H

#include <stddef.h>

struct sk_uring;

struct sk_uring_send {
    int fd;
    const void *p;
    size_t len;
};

/* A ring of `entries` submission slots (a power of two is used); NULL when
 * io_uring cannot be used here (errno says why). */
struct sk_uring *sk_uring_new(unsigned entries);
void sk_uring_free(struct sk_uring *r);
/* Slots per batch. */
unsigned sk_uring_capacity(const struct sk_uring *r);
/* Send v[0..n) (n <= capacity), each send(fd, p, len, MSG_NOSIGNAL |
 * MSG_DONTWAIT), and wait for all: res[i] = bytes sent or -errno. An entry
 * the kernel did not take gets res[i] = SK_URING_NOT_SENT. Returns how many
 * were submitted, or -1 (errno) if the ring failed: res[] then holds what
 * completed, and the ring must not be used again. */
#define SK_URING_NOT_SENT (-0x7fffffff)
int sk_uring_send_batch(struct sk_uring *r, const struct sk_uring_send *v, int *res, unsigned n);

#endif
