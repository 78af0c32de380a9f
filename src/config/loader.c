/* Config front door (include/skiff/config.h): bootstrap YAML -> protobuf-c
 * Bootstrap (yaml_pb.c) -> sk_snapshot_build() (translate.c). Quick mode
 * generates the equivalent bootstrap YAML so it goes through exactly the same
 * parse + translate + validate path as a file. Also the snapshot refcount and
 * lookup helpers declared in model.h. */
#include "skiff/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "skiff/err.h"
#include "skiff/translate.h"
#include "skiff/yaml_pb.h"

#include "envoy.config.bootstrap.v3.pb-c.h"

#define MAX_CONFIG_BYTES (64u * 1024 * 1024)

static sk_config_prepare_fn prepare_hook;

void sk_config_set_prepare_hook(sk_config_prepare_fn fn)
{
    prepare_hook = fn;
}

/* p is path q itself or one of its ancestors ("a.b" for "a.b.c" / "a.b[0]") */
static bool path_within(const char *p, const char *q)
{
    size_t n = strlen(p);
    return strncmp(p, q, n) == 0 && (q[n] == 0 || q[n] == '.' || q[n] == '[');
}

/* The YAML had errors, but what did parse may hold more (dangling cluster
 * names, bad values the translator checks): report them in the same run
 * rather than after the first ones are fixed. An error at or under a field
 * the YAML step already flagged is dropped: that field is missing from the
 * partial message, so anything said about it there is a consequence. */
static void more_errors(const Envoy__Config__Bootstrap__V3__Bootstrap *bs, struct sk_cfgerrs *errs)
{
    size_t n0 = errs->n;
    struct sk_snapshot *snap = NULL;
    if (sk_snapshot_build(bs, &snap, errs) == 0 && snap)
        sk_snapshot_unref(snap);
    size_t o = n0;
    for (size_t i = n0; i < errs->n; i++) {
        struct sk_cfgerr *e = &errs->v[i];
        bool dup = !e->path || !e->path[0];
        for (size_t k = 0; k < n0 && !dup; k++) {
            const struct sk_cfgerr *y = &errs->v[k];
            if (!y->path || !y->path[0])
                continue;
            /* an unknown field is reported at its message, which parsed otherwise */
            bool whole = !y->msg || strncmp(y->msg, "unknown field", 13) != 0;
            dup = (whole && path_within(y->path, e->path)) || path_within(e->path, y->path);
        }
        if (dup) {
            free(e->path);
            free(e->msg);
        } else {
            errs->v[o++] = *e;
        }
    }
    errs->n = o;
}

int sk_config_load_buf(const char *name, const char *buf, size_t len, struct sk_snapshot **out,
                       struct sk_cfgerrs *errs)
{
    *out = NULL;
    if (name) {
        char *f = strdup(name);
        if (f) {
            free(errs->file);
            errs->file = f;
        }
    }
    ProtobufCMessage *msg = NULL;
    struct sk_yaml_pb_opts yo = {.keep_partial = true};
    int rc = sk_yaml_pb_parse_opts(buf, len, &envoy__config__bootstrap__v3__bootstrap__descriptor,
                                   sk_pb_lookup_type, &yo, &msg, errs);
    if (rc != 0 || !msg) {
        if (msg) {
            more_errors((const Envoy__Config__Bootstrap__V3__Bootstrap *)msg, errs);
            protobuf_c_message_free_unpacked(msg, NULL);
        }
        if (errs->n == 0)
            sk_cfgerrs_add(errs, "", "cannot parse configuration");
        return SK_ERR_CONFIG;
    }
    rc = sk_snapshot_build((const Envoy__Config__Bootstrap__V3__Bootstrap *)msg, out, errs);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc == 0 && prepare_hook && prepare_hook(*out, errs) != 0) {
        sk_snapshot_unref(*out);
        *out = NULL;
        rc = SK_ERR_CONFIG;
    }
    return rc;
}

int sk_config_load_file(const char *path, struct sk_snapshot **out, struct sk_cfgerrs *errs)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        sk_cfgerrs_add_at(errs, 0, 0, "", "cannot open %s: %s", path, strerror(errno));
        return SK_ERR_CONFIG;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) ||
        (unsigned long long)st.st_size > MAX_CONFIG_BYTES) {
        sk_cfgerrs_add_at(errs, 0, 0, "", "%s: not a regular file or larger than %u bytes", path,
                          MAX_CONFIG_BYTES);
        fclose(f);
        return SK_ERR_CONFIG;
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len + 1);
    if (!buf) {
        fclose(f);
        sk_cfgerrs_add_at(errs, 0, 0, "", "out of memory reading %s", path);
        return SK_ERR_NOMEM;
    }
    size_t got = fread(buf, 1, len, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr || got != len) {
        free(buf);
        sk_cfgerrs_add_at(errs, 0, 0, "", "cannot read %s", path);
        return SK_ERR_CONFIG;
    }
    buf[len] = 0;
    int rc = sk_config_load_buf(path, buf, len, out, errs);
    free(buf);
    return rc;
}

/* "ip:port" or "[v6]:port" -> host, port. Only IP-literal characters are let
 * through, so the generated YAML cannot be broken by the argument. */
static int split_hostport(const char *in, char *host, size_t hostsz, unsigned *port)
{
    if (!in)
        return -1;
    const char *colon, *h = in;
    size_t hl;
    if (*in == '[') {
        const char *rb = strchr(in, ']');
        if (!rb || rb[1] != ':')
            return -1;
        h = in + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else {
        colon = strrchr(in, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - in);
        if (memchr(in, ':', hl))
            return -1; /* bare IPv6 needs brackets */
    }
    if (hl == 0 || hl >= hostsz)
        return -1;
    for (size_t i = 0; i < hl; i++)
        if (!strchr("0123456789abcdefABCDEF.:", h[i]))
            return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5)
        return -1;
    unsigned v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    *port = v;
    return 0;
}

static const char quick_fmt[] =
    "node: {id: skiff, cluster: skiff}\n"
    "admin:\n"
    "  address: {socket_address: {address: \"%s\", port_value: %u}}\n"
    "static_resources:\n"
    "  listeners:\n"
    "  - name: quick_http\n"
    "    address: {socket_address: {address: \"%s\", port_value: %u}}\n"
    "    filter_chains:\n"
    "    - filters:\n"
    "      - name: envoy.filters.network.http_connection_manager\n"
    "        typed_config:\n"
    "          \"@type\": type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n"
    "          stat_prefix: quick_http\n"
    "          codec_type: AUTO\n"
    "          route_config:\n"
    "            name: local_route\n"
    "            virtual_hosts:\n"
    "            - name: local_service\n"
    "              domains: [\"*\"]\n"
    "              routes:\n"
    "              - match: {prefix: \"/\"}\n"
    "                route: {cluster: local_service}\n"
    "          http_filters:\n"
    "          - name: envoy.filters.http.router\n"
    "            typed_config:\n"
    "              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n"
    "  clusters:\n"
    "  - name: local_service\n"
    "    type: STATIC\n"
    "    connect_timeout: 5s\n"
    "    load_assignment:\n"
    "      cluster_name: local_service\n"
    "      endpoints:\n"
    "      - lb_endpoints:\n"
    "        - endpoint:\n"
    "            address: {socket_address: {address: \"%s\", port_value: %u}}\n";

int sk_config_quick(const char *listen_addr, const char *upstream_addr, const char *admin_addr,
                    struct sk_snapshot **out, struct sk_cfgerrs *errs)
{
    *out = NULL;
    char lh[64], uh[64], ah[64];
    unsigned lp, up, ap;
    const struct {
        const char *what, *in;
        char *host;
        unsigned *port;
    } a[] = {
        {"listen", listen_addr, lh, &lp},
        {"upstream", upstream_addr, uh, &up},
        {"admin", admin_addr ? admin_addr : "127.0.0.1:15000", ah, &ap},
    };
    int bad = 0;
    for (size_t i = 0; i < 3; i++)
        if (split_hostport(a[i].in, a[i].host, 64, a[i].port) != 0) {
            sk_cfgerrs_add_at(errs, 0, 0, "",
                              "invalid %s address '%s' (expected ip:port or [ipv6]:port)",
                              a[i].what, a[i].in ? a[i].in : "");
            bad = 1;
        }
    if (bad)
        return SK_ERR_CONFIG;
    char buf[sizeof(quick_fmt) + 256];
    int n = snprintf(buf, sizeof(buf), quick_fmt, ah, ap, lh, lp, uh, up);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return SK_ERR_INVAL;
    return sk_config_load_buf("<quick>", buf, (size_t)n, out, errs);
}

/* ---- snapshot helpers (model.h) -------------------------------------------------- */

struct sk_snapshot *sk_snapshot_ref(struct sk_snapshot *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void sk_snapshot_unref(struct sk_snapshot *s)
{
    if (!s)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (struct sk_snapshot_dtor *d = s->dtors; d; d = d->next)
        d->fn(s, d->arg);
    /* the snapshot lives inside its own arena: copy the handle out first */
    struct sk_snapshot *base = s->base;
    struct sk_arena a = s->arena;
    sk_arena_free(&a);
    sk_snapshot_unref(base);
}

static int cmp_name_cluster(const void *key, const void *elem)
{
    return strcmp(key, (*(struct sk_cluster *const *)elem)->name);
}

struct sk_cluster *sk_snapshot_find_cluster(const struct sk_snapshot *s, const char *name)
{
    if (!s || !name)
        return NULL;
    if (s->clusters_by_name) {
        struct sk_cluster **c =
            bsearch(name, s->clusters_by_name, s->nclusters, sizeof(*c), cmp_name_cluster);
        return c ? *c : NULL;
    }
    for (size_t i = 0; i < s->nclusters; i++)
        if (strcmp(s->clusters[i].name, name) == 0)
            return &s->clusters[i];
    return NULL;
}

struct sk_listener *sk_snapshot_find_listener(const struct sk_snapshot *s, const char *name)
{
    if (!s || !name)
        return NULL;
    for (size_t i = 0; i < s->nlisteners; i++)
        if (strcmp(s->listeners[i].name, name) == 0)
            return &s->listeners[i];
    return NULL;
}
