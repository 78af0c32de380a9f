/* Unit tests for route selection: virtual host by Host (exact, *.suffix,
 * prefix.*, *; port handling) and route matching (prefix, path, case,
 * headers incl. invert and present). Configs go through the real
 * YAML -> translate path. */
#include <stdio.h>
#include <string.h>

#include "skiff/config.h"
#include "skiff/http1.h"
#include "skiff/stream.h"

static int failures, checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static const char cfg[] =
    "static_resources:\n"
    "  listeners:\n"
    "  - name: l\n"
    "    address: {socket_address: {address: 127.0.0.1, port_value: 1}}\n"
    "    filter_chains:\n"
    "    - filters:\n"
    "      - name: hcm\n"
    "        typed_config:\n"
    "          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n"
    "          stat_prefix: s\n"
    "          route_config:\n"
    "            virtual_hosts:\n"
    "            - {name: exact, domains: [api.example.com, 'api.example.com:8443'],\n"
    "               routes: [{match: {prefix: /}, direct_response: {status: 200}}]}\n"
    "            - {name: suffix, domains: ['*.example.com'],\n"
    "               routes: [{match: {prefix: /}, direct_response: {status: 201}}]}\n"
    "            - {name: longsuffix, domains: ['*.b.example.com'],\n"
    "               routes: [{match: {prefix: /}, direct_response: {status: 202}}]}\n"
    "            - {name: prefix, domains: ['www.*'],\n"
    "               routes: [{match: {prefix: /}, direct_response: {status: 203}}]}\n"
    "            - name: star\n"
    "              domains: ['*']\n"
    "              routes:\n"
    "              - {name: exactpath, match: {path: /exact}, direct_response: {status: 210}}\n"
    "              - {name: nocase, match: {prefix: /CaSe, case_sensitive: false}, direct_response: {status: 211}}\n"
    "              - name: hdr\n"
    "                match:\n"
    "                  prefix: /h\n"
    "                  headers:\n"
    "                  - {name: x-env, string_match: {exact: canary}}\n"
    "                  - {name: x-debug, present_match: true, invert_match: true}\n"
    "                direct_response: {status: 212}\n"
    "              - {name: method, match: {prefix: /m, headers: [{name: ':method', exact_match: POST}]}, direct_response: {status: 213}}\n"
    "              - {name: suffixhdr, match: {prefix: /s, headers: [{name: user-agent, string_match: {suffix: BOT, ignore_case: true}}]}, direct_response: {status: 214}}\n"
    "              - {name: fallback, match: {prefix: /}, direct_response: {status: 299}}\n"
    "          http_filters:\n"
    "          - name: router\n"
    "            typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}\n";

static const struct sk_route_config *rc;

static const char *vh(const char *host)
{
    const struct sk_vhost *v = sk_route_vhost(rc, host, strlen(host));
    return v ? v->name : "(none)";
}

static int route(const char *method, const char *path, const char *const *hdrs)
{
    struct sk_stream st;
    memset(&st, 0, sizeof(st));
    sk_arena_init(&st.arena, 1024);
    st.method = method;
    st.method_len = (uint32_t)strlen(method);
    st.path = path;
    st.path_len = (uint32_t)strlen(path);
    st.authority = "x";
    st.authority_len = 1;
    st.scheme = "http";
    for (int i = 0; hdrs && hdrs[i]; i += 2)
        sk_hdrs_add(&st.req, &st.arena, hdrs[i], strlen(hdrs[i]), hdrs[i + 1], strlen(hdrs[i + 1]));
    const struct sk_vhost *v = sk_route_vhost(rc, "anything", 8);
    const struct sk_route *r = v ? sk_route_match(v, &st) : NULL;
    sk_arena_free(&st.arena);
    return r ? (int)r->direct_status : -1;
}

/* sk_hdrs_add_h1: a parsed head copied in one piece, names lower-cased and
 * NUL-terminated in the copy, values NUL-terminated; the input untouched. */
static void test_hdrs_add_h1(void)
{
    char in[] = "GET /p HTTP/1.1\r\nHost: Ex.COM \r\nX-Long-Header-NAME:\tA b\t\r\nE:\r\n"
                "ACCEPT: */*\r\n\r\n";
    char orig[sizeof(in)];
    memcpy(orig, in, sizeof(in));
    struct sk_h1_header f[8];
    struct sk_h1_msg m = {.hdrs = f, .hdrs_cap = 8};
    CHECK(sk_h1_parse_request(in, sizeof(in) - 1, &m, NULL) == (ssize_t)sizeof(in) - 1);
    struct sk_arena a;
    sk_arena_init(&a, 256);
    struct sk_hdrs h = {0};
    CHECK(sk_hdrs_add(&h, &a, "Pre", 3, "x", 1) == 0);
    char *blk = sk_hdrs_add_h1(&h, &a, m.fields, m.fields_len, m.hdrs, m.nhdrs);
    CHECK(blk != NULL && h.n == 5);
    CHECK(memcmp(in, orig, sizeof(in)) == 0);
    CHECK(strcmp(h.v[0].name, "pre") == 0);
    CHECK(strcmp(h.v[1].name, "host") == 0 && strcmp(h.v[1].value, "Ex.COM") == 0);
    CHECK(h.v[1].nlen == 4 && h.v[1].vlen == 6);
    CHECK(strcmp(h.v[2].name, "x-long-header-name") == 0 && strcmp(h.v[2].value, "A b") == 0);
    CHECK(strcmp(h.v[3].name, "e") == 0 && h.v[3].vlen == 0 && h.v[3].value[0] == 0);
    CHECK(strcmp(h.v[4].name, "accept") == 0 && strcmp(h.v[4].value, "*/*") == 0);
    CHECK(sk_hdrs_get(&h, "x-long-header-name", 18) == &h.v[2]);
    /* more fields than the list holds: it grows once */
    struct sk_h1_header many[40];
    char big[2048];
    size_t n = 0;
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "H%02d: v%d\r\n", i, i);
    for (int i = 0, o = 0; i < 40; i++) {
        many[i].name = big + o;
        many[i].name_len = 3;
        many[i].value = big + o + 5;
        many[i].value_len = i < 10 ? 2 : 3;
        o += i < 10 ? 9 : 10;
    }
    struct sk_hdrs h2 = {0};
    CHECK(sk_hdrs_add_h1(&h2, &a, big, n, many, 40) != NULL && h2.n == 40 && h2.cap >= 40);
    CHECK(strcmp(h2.v[39].name, "h39") == 0 && strcmp(h2.v[39].value, "v39") == 0);
    CHECK(strcmp(h2.v[0].name, "h00") == 0 && strcmp(h2.v[0].value, "v0") == 0);
    sk_arena_free(&a);
}

int main(void)
{
    test_hdrs_add_h1();
    struct sk_cfgerrs errs;
    sk_cfgerrs_init(&errs, "test");
    struct sk_snapshot *s = NULL;
    if (sk_config_load_buf("test", cfg, sizeof(cfg) - 1, &s, &errs) < 0) {
        sk_cfgerrs_print(&errs, stderr);
        return 1;
    }
    sk_cfgerrs_free(&errs);
    rc = s->listeners[0].chains[0].hcm->routes;

    /* virtual hosts: exact > longest *.suffix > longest prefix.* > * */
    CHECK(strcmp(vh("api.example.com"), "exact") == 0);
    CHECK(strcmp(vh("API.Example.COM"), "exact") == 0);
    CHECK(strcmp(vh("api.example.com:8443"), "exact") == 0);
    CHECK(strcmp(vh("api.example.com:9999"), "exact") == 0); /* port ignored on fallback */
    CHECK(strcmp(vh("x.example.com"), "suffix") == 0);
    CHECK(strcmp(vh("a.b.example.com"), "longsuffix") == 0);
    CHECK(strcmp(vh("example.com"), "star") == 0); /* "*.example.com" needs a label */
    CHECK(strcmp(vh("www.other.org"), "prefix") == 0);
    CHECK(strcmp(vh("www.example.com"), "suffix") == 0); /* suffix beats prefix */
    CHECK(strcmp(vh("other"), "star") == 0);
    CHECK(strcmp(vh(""), "star") == 0);

    /* routes */
    CHECK(route("GET", "/exact", NULL) == 210);
    CHECK(route("GET", "/exact?q=1", NULL) == 210); /* path ignores the query */
    CHECK(route("GET", "/exactly", NULL) == 299);
    CHECK(route("GET", "/case/x", NULL) == 211);
    CHECK(route("GET", "/CASE", NULL) == 211);
    const char *canary[] = {"X-Env", "canary", NULL};
    const char *canary_dbg[] = {"x-env", "canary", "x-debug", "1", NULL};
    const char *prod[] = {"x-env", "prod", NULL};
    CHECK(route("GET", "/h", canary) == 212);
    CHECK(route("GET", "/h", canary_dbg) == 299); /* inverted present_match */
    CHECK(route("GET", "/h", prod) == 299);
    CHECK(route("GET", "/h", NULL) == 299);
    CHECK(route("POST", "/m", NULL) == 213);
    CHECK(route("GET", "/m", NULL) == 299);
    const char *bot[] = {"user-agent", "GoogleBot", NULL};
    const char *human[] = {"user-agent", "curl", NULL};
    CHECK(route("GET", "/s", bot) == 214);
    CHECK(route("GET", "/s", human) == 299);

    sk_snapshot_unref(s);
    if (failures) {
        fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("router: %d checks ok\n", checks);
    return 0;
}
