/* Unit tests for src/net/uring.c: batched non-blocking sends and receives. */
#include "skiff/uring.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define NP 8

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Every socket gets its own bytes, in one call. */
static void test_many(struct sk_uring *r)
{
    int sv[NP][2];
    char msg[NP][32];
    struct sk_uring_op v[NP];
    int res[NP];
    for (int i = 0; i < NP; i++) {
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i]) == 0);
        nonblock(sv[i][0]);
        snprintf(msg[i], sizeof(msg[i]), "message number %d", i);
        v[i] = (struct sk_uring_op){sv[i][0], SK_URING_SEND, msg[i], strlen(msg[i])};
    }
    CHECK(sk_uring_batch(r, v, res, NP) == NP);
    for (int i = 0; i < NP; i++) {
        CHECK(res[i] == (int)strlen(msg[i]));
        char got[64];
        ssize_t n = recv(sv[i][1], got, sizeof(got), MSG_DONTWAIT);
        CHECK(n == (ssize_t)strlen(msg[i]) && memcmp(got, msg[i], (size_t)n) == 0);
        close(sv[i][0]);
        close(sv[i][1]);
    }
}

/* A full socket answers -EAGAIN at once (the call does not wait for room);
 * a bad descriptor fails alone; a partial send reports what went out. */
static void test_full_bad_partial(struct sk_uring *r)
{
    int full[2], ok[2], part[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, full) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, ok) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, part) == 0);
    nonblock(full[0]);
    nonblock(ok[0]);
    nonblock(part[0]);
    int small = 4096;
    setsockopt(full[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(part[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    char junk[4096];
    memset(junk, 'j', sizeof(junk));
    while (send(full[0], junk, sizeof(junk), MSG_DONTWAIT) > 0)
        ;
    size_t big_len = 4u << 20;
    char *big = malloc(big_len);
    memset(big, 'b', big_len);
    struct sk_uring_op v[4] = {
        {full[0], SK_URING_SEND, "x", 1},
        {-1, SK_URING_SEND, "y", 1},
        {ok[0], SK_URING_SEND, "hello", 5},
        {part[0], SK_URING_SEND, big, big_len},
    };
    int res[4];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK(sk_uring_batch(r, v, res, 4) == 4);
    clock_gettime(CLOCK_MONOTONIC, &b);
    CHECK(b.tv_sec - a.tv_sec < 5); /* returned without waiting for the reader */
    CHECK(res[0] == -EAGAIN);
    CHECK(res[1] == -EBADF);
    CHECK(res[2] == 5);
    CHECK(res[3] > 0 && (size_t)res[3] < big_len);
    char got[8];
    CHECK(recv(ok[1], got, sizeof(got), MSG_DONTWAIT) == 5 && memcmp(got, "hello", 5) == 0);
    /* the ring stays usable after errors */
    struct sk_uring_op again[2] = {{ok[0], SK_URING_SEND, "abc", 3}, {ok[0], SK_URING_SEND, "def", 3}};
    CHECK(sk_uring_batch(r, again, res, 2) == 2);
    CHECK(res[0] == 3 && res[1] == 3);
    CHECK(recv(ok[1], got, sizeof(got), MSG_DONTWAIT) == 6 && memcmp(got, "abcdef", 6) == 0);
    free(big);
    close(full[0]); close(full[1]);
    close(ok[0]); close(ok[1]);
    close(part[0]); close(part[1]);
}

/* A peer that went away: -EPIPE, no SIGPIPE (MSG_NOSIGNAL). */
static void test_epipe(struct sk_uring *r)
{
    int sv[2], sv2[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv2) == 0);
    close(sv[1]);
    struct sk_uring_op v[2] = {{sv[0], SK_URING_SEND, "z", 1}, {sv2[0], SK_URING_SEND, "w", 1}};
    int res[2];
    CHECK(sk_uring_batch(r, v, res, 2) == 2);
    CHECK(res[0] == -EPIPE);
    CHECK(res[1] == 1);
    close(sv[0]);
    close(sv2[0]);
    close(sv2[1]);
}

/* Receives next to sends in one batch: data, an empty socket (-EAGAIN at
 * once, no wait), end of stream (0), a reset (-ECONNRESET). */
static void test_recv(struct sk_uring *r)
{
    int data[2], empty[2], eof[2], snd[2], rst[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, data) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, empty) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, eof) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, snd) == 0);
    nonblock(data[0]);
    nonblock(empty[0]);
    nonblock(eof[0]);
    CHECK(send(data[1], "payload", 7, 0) == 7);
    close(eof[1]);
    /* a TCP connection reset by its peer (SO_LINGER 0) */
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t al = sizeof(a);
    CHECK(bind(ls, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(ls, 1) == 0);
    CHECK(getsockname(ls, (struct sockaddr *)&a, &al) == 0);
    rst[0] = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(rst[0], (struct sockaddr *)&a, sizeof(a)) == 0);
    rst[1] = accept(ls, NULL, NULL);
    nonblock(rst[0]);
    struct linger lg = {1, 0};
    setsockopt(rst[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(rst[1]);
    usleep(20000);
    char b1[64], b2[64], b3[64], b4[64];
    struct sk_uring_op v[5] = {
        {data[0], SK_URING_RECV, b1, sizeof(b1)},
        {empty[0], SK_URING_RECV, b2, sizeof(b2)},
        {snd[0], SK_URING_SEND, "out", 3},
        {eof[0], SK_URING_RECV, b3, sizeof(b3)},
        {rst[0], SK_URING_RECV, b4, sizeof(b4)},
    };
    int res[5];
    CHECK(sk_uring_batch(r, v, res, 5) == 5);
    CHECK(res[0] == 7 && memcmp(b1, "payload", 7) == 0);
    CHECK(res[1] == -EAGAIN);
    CHECK(res[2] == 3);
    CHECK(res[3] == 0);
    CHECK(res[4] == -ECONNRESET);
    char got[8];
    CHECK(recv(snd[1], got, sizeof(got), MSG_DONTWAIT) == 3 && memcmp(got, "out", 3) == 0);
    close(data[0]); close(data[1]);
    close(empty[0]); close(empty[1]);
    close(eof[0]);
    close(snd[0]); close(snd[1]);
    close(rst[0]);
    close(ls);
}

/* More entries than slots: only `capacity` are taken. */
static void test_capacity(struct sk_uring *r)
{
    unsigned cap = sk_uring_capacity(r);
    CHECK(cap >= 4);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    nonblock(sv[0]);
    unsigned n = cap + 3;
    struct sk_uring_op *v = calloc(n, sizeof(*v));
    int *res = calloc(n, sizeof(*res));
    for (unsigned i = 0; i < n; i++)
        v[i] = (struct sk_uring_op){sv[0], SK_URING_SEND, "k", 1};
    CHECK(sk_uring_batch(r, v, res, n) == (int)cap);
    char buf[1024];
    ssize_t got = recv(sv[1], buf, sizeof(buf), MSG_DONTWAIT);
    CHECK(got == (ssize_t)cap);
    free(v);
    free(res);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    struct sk_uring *r = sk_uring_new(16);
    if (!r) {
        /* kernel without io_uring or a sandbox that forbids it: skiff then
         * sends one by one; nothing to test here */
        printf("SKIP: io_uring unavailable (%s)\n", strerror(errno));
        return 77;
    }
    for (int round = 0; round < 3; round++) { /* the rings wrap around */
        test_many(r);
        test_full_bad_partial(r);
        test_epipe(r);
        test_recv(r);
        test_capacity(r);
    }
    sk_uring_free(r);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
