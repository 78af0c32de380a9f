/* Unit tests for the trace-context parsers/formatters (filters/tracing.c). */
#include <stdio.h>
#include <string.h>

#include "skiff/tracing.h"

static int failures, checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static bool tp(const char *s, struct sk_trace_ctx *c)
{
    return sk_trace_parse_traceparent(s, strlen(s), c);
}

static void test_traceparent(void)
{
    struct sk_trace_ctx c;
    const char *ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    CHECK(tp(ok, &c));
    CHECK(c.trace_id[0] == 0x4b && c.trace_id[15] == 0x36);
    CHECK(c.span_id[0] == 0x00 && c.span_id[7] == 0xb7);
    CHECK(c.flags == 1 && c.sampled == 1);
    char out[56];
    sk_trace_format_traceparent(out, c.trace_id, c.span_id, c.flags);
    CHECK(strcmp(out, ok) == 0);
    CHECK(tp(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ", &c) && c.flags == 0);
    /* invalid */
    CHECK(!tp("", &c));
    CHECK(!tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", &c));     /* short */
    CHECK(!tp("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", &c));    /* upper */
    CHECK(!tp("00-00000000000000000000000000000000-00f067aa0ba902b7-01", &c));    /* zero trace */
    CHECK(!tp("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", &c));    /* zero span */
    CHECK(!tp("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &c));    /* version ff */
    CHECK(!tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", &c));  /* v00 + extra */
    CHECK(!tp("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &c));    /* separator */
    CHECK(!tp("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", &c));    /* non-hex */
    CHECK(!tp("garbage", &c));
    /* a future version may carry more fields */
    CHECK(tp("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abc", &c));
    CHECK(!tp("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01abc", &c));
    /* every byte value at the first and last digit of each field: accepted
     * exactly when it is a lower-case hex digit, and decoded to its value */
    static const int pos[] = {3, 4, 33, 34, 36, 37, 50, 51, 53, 54};
    int bad = 0;
    for (size_t k = 0; k < sizeof(pos) / sizeof(pos[0]); k++) {
        for (int b = 0; b < 256; b++) {
            char v[56];
            memcpy(v, ok, 56);
            v[pos[k]] = (char)b;
            int d = b >= '0' && b <= '9' ? b - '0' : b >= 'a' && b <= 'f' ? b - 'a' + 10 : -1;
            struct sk_trace_ctx x;
            bool r = sk_trace_parse_traceparent(v, 55, &x);
            if (r != (d >= 0)) {
                bad++;
                continue;
            }
            if (!r)
                continue;
            int p = pos[k];
            const uint8_t *f = p < 35 ? x.trace_id : p < 52 ? x.span_id : &x.flags;
            int off = p < 35 ? p - 3 : p < 52 ? p - 36 : p - 53;
            int nib = off % 2 ? f[off / 2] & 15 : f[off / 2] >> 4;
            if (nib != d)
                bad++;
        }
    }
    CHECK(bad == 0);
}

static size_t slen(const char *x)
{
    return x ? strlen(x) : 0;
}
#define S(x) x, slen(x)

static void test_b3(void)
{
    struct sk_trace_ctx c;
    CHECK(sk_trace_parse_b3_multi(S("463ac35c9f6413ad48485a3953bb6124"), S("a2fb4a1d1a96d312"),
                                  S("0020000000000001"), S("1"), S(NULL), &c));
    CHECK(c.sampled == 1 && c.has_parent && !c.trace_id_64);
    CHECK(c.trace_id[0] == 0x46 && c.span_id[7] == 0x12 && c.parent_id[7] == 0x01);
    /* 64-bit trace id, sampling deferred */
    CHECK(sk_trace_parse_b3_multi(S("48485a3953bb6124"), S("a2fb4a1d1a96d312"), S(NULL), S(NULL),
                                  S(NULL), &c));
    CHECK(c.trace_id_64 && c.sampled == -1 && !c.has_parent);
    CHECK(c.trace_id[0] == 0 && c.trace_id[8] == 0x48);
    /* debug flag */
    CHECK(sk_trace_parse_b3_multi(S("48485a3953bb6124"), S("a2fb4a1d1a96d312"), S(NULL), S(NULL),
                                  S("1"), &c));
    CHECK(c.sampled == 2);
    CHECK(sk_trace_parse_b3_multi(S("48485a3953bb6124"), S("a2fb4a1d1a96d312"), S(NULL),
                                  S("false"), S(NULL), &c) && c.sampled == 0);
    /* invalid */
    CHECK(!sk_trace_parse_b3_multi(S("48485a3953bb612"), S("a2fb4a1d1a96d312"), S(NULL), S(NULL),
                                   S(NULL), &c));
    CHECK(!sk_trace_parse_b3_multi(S("48485a3953bb6124"), S(NULL), S(NULL), S(NULL), S(NULL), &c));
    CHECK(!sk_trace_parse_b3_multi(S("48485a3953bb6124"), S("a2fb4a1d1a96d312"), S(NULL), S("2"),
                                   S(NULL), &c));
    CHECK(!sk_trace_parse_b3_multi(S("0000000000000000"), S("a2fb4a1d1a96d312"), S(NULL), S(NULL),
                                   S(NULL), &c));

    /* single header */
    const char *b1 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
    CHECK(sk_trace_parse_b3_single(S(b1), &c));
    CHECK(c.sampled == 1 && c.has_parent && c.parent_id[0] == 0x05);
    uint8_t span[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    char out[80];
    size_t n = sk_trace_format_b3_single(out, &c, span, true);
    CHECK(n == strlen(out));
    CHECK(strcmp(out, "80f198ee56343ba864fe8b2a57d3eff7-0102030405060708-1-e457b5a2e4d86bd1") == 0);
    CHECK(sk_trace_parse_b3_single(S("64fe8b2a57d3eff7-e457b5a2e4d86bd1"), &c));
    CHECK(c.sampled == -1 && c.trace_id_64);
    n = sk_trace_format_b3_single(out, &c, span, true);
    CHECK(strcmp(out, "64fe8b2a57d3eff7-0102030405060708") == 0);
    CHECK(sk_trace_parse_b3_single(S("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d"), &c) && c.sampled == 2);
    memset(&c, 0, sizeof(c));
    c.sampled = -1;
    CHECK(!sk_trace_parse_b3_single(S("0"), &c) && c.sampled == 0);
    c.sampled = -1;
    CHECK(!sk_trace_parse_b3_single(S("d"), &c) && c.sampled == 2);
    CHECK(!sk_trace_parse_b3_single(S("64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x"), &c));
    CHECK(!sk_trace_parse_b3_single(S("64fe8b2a57d3eff7-e457b5a2e4d86bd1-"), &c));
    CHECK(!sk_trace_parse_b3_single(S("64fe8b2a57d3eff7-e457b5a2e4d86bd1-true"), &c));
    CHECK(!sk_trace_parse_b3_single(S("64fe8b2a57d3eff7"), &c));
    CHECK(!sk_trace_parse_b3_single(S(""), &c));
}

int main(void)
{
    test_traceparent();
    test_b3();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
