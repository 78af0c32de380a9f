/* Unit tests for src/core: buffers, arena, errors. */
#include "skiff/arena.h"
#include "skiff/buf.h"
#include "skiff/err.h"

#include <stdio.h>
#include <string.h>

static int failures;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void test_buf_cap(void)
{
    struct sk_buf b;
    sk_buf_init(&b, 10);
    CHECK(sk_buf_append(&b, "0123456789", 10) == 0);
    CHECK(sk_buf_room(&b) == 0);
    CHECK(sk_buf_append(&b, "x", 1) == SK_ERR_TOO_LARGE);
    sk_buf_consume(&b, 4);
    CHECK(sk_buf_used(&b) == 6);
    CHECK(memcmp(sk_buf_rptr(&b), "456789", 6) == 0);
    CHECK(sk_buf_append(&b, "abcd", 4) == 0); /* compaction makes room */
    CHECK(memcmp(sk_buf_rptr(&b), "456789abcd", 10) == 0);
    sk_buf_consume(&b, 10);
    CHECK(sk_buf_used(&b) == 0);
    sk_buf_shrink(&b);
    CHECK(b.data == NULL);
    CHECK(sk_buf_appendf(&b, "%d-%s", 42, "x") == 0);
    CHECK(sk_buf_used(&b) == 4 && memcmp(sk_buf_rptr(&b), "42-x", 4) == 0);
    sk_buf_free(&b);
}

static void test_buf_grow(void)
{
    struct sk_buf b;
    sk_buf_init(&b, 1 << 20);
    char chunk[3000];
    memset(chunk, 'a', sizeof(chunk));
    for (int i = 0; i < 100; i++)
        CHECK(sk_buf_append(&b, chunk, sizeof(chunk)) == 0);
    CHECK(sk_buf_used(&b) == 300000);
    CHECK(b.size <= 1 << 20);
    sk_buf_free(&b);
}

static void test_arena(void)
{
    struct sk_arena a;
    sk_arena_init(&a, 256);
    char *s = sk_arena_strdup(&a, "hello");
    CHECK(strcmp(s, "hello") == 0);
    void *big = sk_arena_alloc(&a, 10000);
    CHECK(big != NULL);
    char *t = sk_arena_strndup(&a, "worldwide", 5);
    CHECK(strcmp(t, "world") == 0);
    CHECK(((unsigned long)sk_arena_alloc(&a, 3) & 15) == 0);
    CHECK(sk_arena_strdup(&a, NULL) == NULL);
    sk_arena_free(&a);
}

static void test_fmt(void)
{
    char b[32];
    CHECK(sk_fmt_u64(b, 0) == 1 && b[0] == '0');
    CHECK(sk_fmt_u64(b, 18446744073709551615ull) == 20 && memcmp(b, "18446744073709551615", 20) == 0);
    CHECK(sk_fmt_hex(b, 0x1f3a) == 4 && memcmp(b, "1f3a", 4) == 0);
    unsigned char ip[4] = {10, 0, 255, 7};
    CHECK(sk_fmt_ipv4(b, ip) == 10 && strcmp(b, "10.0.255.7") == 0);
    unsigned char ip0[4] = {0, 0, 0, 0};
    CHECK(sk_fmt_ipv4(b, ip0) == 7 && strcmp(b, "0.0.0.0") == 0);
}

static void test_buf_cache(void)
{
    /* blocks of the cached sizes come back through the per-thread cache */
    struct sk_buf a, c;
    sk_buf_init(&a, 1 << 20);
    sk_buf_init(&c, 1 << 20);
    size_t av;
    CHECK(sk_buf_wptr(&a, 16384, &av) != NULL && a.size == 16384);
    char *first = a.data;
    sk_buf_free(&a);
    CHECK(sk_buf_wptr(&c, 16384, &av) == first); /* reused */
    /* growing out of a cached class keeps the content */
    sk_buf_free(&c);
    sk_buf_init(&c, 1 << 20);
    CHECK(sk_buf_append(&c, "abc", 3) == 0 && c.size == 1024);
    char big[5000];
    memset(big, 'z', sizeof(big));
    CHECK(sk_buf_append(&c, big, sizeof(big)) == 0);
    CHECK(memcmp(sk_buf_rptr(&c), "abc", 3) == 0 && sk_buf_used(&c) == 5003);
    sk_buf_free(&c);
    sk_buf_thread_cache_free();
}

int main(void)
{
    test_fmt();
    test_buf_cache();
    test_buf_cap();
    test_buf_grow();
    test_arena();
    CHECK(strcmp(sk_strerror(SK_ERR_H1_SMUGGLE), "ambiguous message framing") == 0);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("core: ok\n");
    return 0;
}
