/* Unit tests for the latency histogram: bucket layout (edges, monotonic,
 * 2 significant digits), quantiles, Prometheus-style cumulative counts,
 * merging, the per-worker cluster table, and a rough per-record cost. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "skiff/histogram.h"

static int failures, checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void test_layout(void)
{
    CHECK(sk_hist_index(0) == 0);
    CHECK(sk_hist_index(99) == 99);
    CHECK(sk_hist_index(100) == 100);
    CHECK(sk_hist_index(109) == 100);
    CHECK(sk_hist_index(110) == 101);
    CHECK(sk_hist_index(999) == 189);
    CHECK(sk_hist_index(1000) == 190);
    CHECK(sk_hist_index(59999999) == SK_HIST_OVERFLOW - 1);
    CHECK(sk_hist_index(60000000) == SK_HIST_OVERFLOW);
    CHECK(sk_hist_index(UINT64_MAX) == SK_HIST_OVERFLOW);
    /* every bucket's edges contain exactly the values that map to it */
    for (unsigned i = 0; i < SK_HIST_OVERFLOW; i++) {
        uint64_t lo = sk_hist_lower(i), hi = sk_hist_upper(i);
        CHECK(lo < hi);
        CHECK(sk_hist_index(lo) == i);
        CHECK(sk_hist_index(hi - 1) == i);
        CHECK(sk_hist_index(hi) == i + 1);
        /* 2 significant digits: width <= 10% of the lower edge above 100 us */
        if (lo >= 100)
            CHECK((hi - lo) * 10 <= lo);
        if (i)
            CHECK(sk_hist_upper(i - 1) == lo);
    }
    CHECK(sk_hist_lower(SK_HIST_OVERFLOW) == SK_HIST_MAX_US);
    CHECK(sk_hist_upper(SK_HIST_OVERFLOW) == UINT64_MAX);
    /* monotonic over a sweep */
    unsigned prev = 0;
    for (uint64_t v = 0; v < 70000000; v = v < 1000 ? v + 1 : v + v / 97) {
        unsigned ix = sk_hist_index(v);
        CHECK(ix >= prev);
        prev = ix;
    }
    /* nice edges used by the Prometheus le buckets are bucket boundaries */
    static const uint64_t nice[] = {100,    250,    500,     1000,    2500,    5000,
                                    10000,  25000,  50000,   100000,  250000,  500000,
                                    1000000, 2500000, 5000000, 10000000, 30000000, 60000000};
    for (size_t i = 0; i < sizeof(nice) / sizeof(nice[0]); i++)
        CHECK(sk_hist_lower(sk_hist_index(nice[i])) == nice[i]);
}

static void test_quantiles(void)
{
    static struct sk_hist h; /* zero */
    struct sk_hist_snap s;
    sk_hist_snap_init(&s);
    sk_hist_merge(&s, &h);
    CHECK(s.count == 0);
    CHECK(sk_hist_quantile_us(&s, 0.5) == 0);
    /* 1..10000 us uniformly: quantiles within the bucket error (<= 10%) */
    for (uint64_t v = 1; v <= 10000; v++)
        sk_hist_record(&h, v);
    sk_hist_snap_init(&s);
    sk_hist_merge(&s, &h);
    CHECK(s.count == 10000);
    CHECK(s.sum_us == 10000ull * 10001 / 2);
    double p50 = sk_hist_quantile_us(&s, 0.5), p90 = sk_hist_quantile_us(&s, 0.9),
           p99 = sk_hist_quantile_us(&s, 0.99);
    CHECK(fabs(p50 - 5000) / 5000 < 0.02);
    CHECK(fabs(p90 - 9000) / 9000 < 0.02);
    CHECK(fabs(p99 - 9900) / 9900 < 0.02);
    CHECK(sk_hist_quantile_us(&s, 0) == 1);
    CHECK(sk_hist_quantile_us(&s, 0.00005) == 1);
    /* exact below 100 us */
    CHECK(sk_hist_quantile_us(&s, 0.005) == 50);
    /* cumulative counts at edges */
    CHECK(sk_hist_count_below(&s, 1000) == 999);
    CHECK(sk_hist_count_below(&s, 2500) == 2499);
    CHECK(sk_hist_count_below(&s, 60000000) == 10000);
    /* merge of two writers */
    static struct sk_hist h2;
    sk_hist_record(&h2, 70000000); /* overflow */
    sk_hist_merge(&s, &h2);
    CHECK(s.count == 10001);
    CHECK(s.b[SK_HIST_OVERFLOW] == 1);
    CHECK(sk_hist_count_below(&s, 60000000) == 10000);
    CHECK(sk_hist_quantile_us(&s, 1.0) == (double)SK_HIST_MAX_US);
}

struct visit {
    int n;
    uint64_t total;
};
static void visit_cb(const void *key, const char *name, const struct sk_hist *h, void *arg)
{
    struct visit *v = arg;
    struct sk_hist_snap s;
    sk_hist_snap_init(&s);
    sk_hist_merge(&s, h);
    v->n++;
    v->total += s.count;
    (void)key;
    (void)name;
}

static void test_worker(void)
{
    static struct sk_hist_worker hw;
    static int keys[100];
    char names[100][8];
    for (int i = 0; i < 100; i++)
        snprintf(names[i], sizeof(names[i]), "c%d", i);
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 100; i++)
            sk_hist_stream_end(&hw, 0.002, 0.001, &keys[i], names[i]);
    sk_hist_stream_end(&hw, 0.003, -1, NULL, NULL);    /* no upstream */
    sk_hist_stream_end(&hw, 0.003, 0.002, NULL, NULL); /* upstream, no cluster */
    CHECK(hw.nclusters == 100);
    CHECK(sk_hist_cluster(&hw, &keys[7], names[7]) == sk_hist_cluster(&hw, &keys[7], names[7]));
    CHECK(hw.nclusters == 100);
    struct visit v = {0};
    sk_hist_foreach_cluster(&hw, visit_cb, &v);
    CHECK(v.n == 100);
    CHECK(v.total == 300);
    struct sk_hist_snap d, u;
    sk_hist_snap_init(&d);
    sk_hist_snap_init(&u);
    sk_hist_merge(&d, &hw.downstream_rq_time);
    sk_hist_merge(&u, &hw.upstream_rq_time);
    CHECK(d.count == 302);
    CHECK(u.count == 301);
    CHECK(d.b[sk_hist_index(2000)] == 300);
    sk_hist_stream_end(&hw, -1.0, NAN, NULL, NULL); /* clock oddities: 0, no upstream */
    sk_hist_stream_end(&hw, 1e9, -1, NULL, NULL);   /* clamps to overflow */
    sk_hist_snap_init(&d);
    sk_hist_merge(&d, &hw.downstream_rq_time);
    CHECK(d.b[0] == 1);
    CHECK(d.b[SK_HIST_OVERFLOW] == 1);
    sk_hist_worker_free(&hw);
    v.n = 0;
    sk_hist_foreach_cluster(&hw, visit_cb, &v);
    CHECK(v.n == 0);
}

static void bench_record(void)
{
    static struct sk_hist h;
    struct timespec a, b;
    const int n = 20000000;
    uint64_t x = 12345;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        sk_hist_record(&h, (x >> 40) % 2000000);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / n;
    printf("sk_hist_record: %.1f ns per record (incl. the RNG)\n", ns);
}

int main(void)
{
    test_layout();
    test_quantiles();
    test_worker();
    bench_record();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
