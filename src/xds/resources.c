/* xDS resource store, Bootstrap assembly and the ACK/NACK decision
 * (include/skiff/xds.h).
 *
 * Why assemble a Bootstrap instead of translating resources one by one: the
 * config has ONE translate + validate step (config/translate.c). Dynamic
 * resources are spliced into a copy of the file's Bootstrap (listeners and
 * clusters appended after the static ones; RDS inlined as route_config; EDS
 * inlined as load_assignment with type STATIC) and the whole thing is built
 * like a file. Error paths then point into that assembly
 * ("static_resources.clusters[7].lb_policy"), and the assembly keeps a map
 * from those indices back to the resource that produced them, which is how a
 * bad update is blamed on individual resources: those are reverted to their
 * previous version (or dropped), the rest is rebuilt and applied, and the
 * NACK names the rejected ones (as Envoy and gRPC do).
 *
 * Resources are refcounted (struct res): the accepted set of a type and a
 * candidate set share them. Each keeps its serialized bytes (for the identity
 * hash and to make modifiable copies) and its unpacked message (borrowed by
 * the assembly when no change is needed).
 *
 * SDS: a TLS context (listener filter chain / cluster transport_socket) whose
 * certificate or validation context names an SdsSecretConfig gets the Secret's
 * TlsCertificate / CertificateValidationContext inlined, so translate and
 * sk_tls_prepare see ordinary inline material (a new Secret version makes a
 * new SSL_CTX for new connections; open ones keep theirs). A listener or
 * cluster whose Secret has not arrived is left out of the assembly.
 *
 * Warming: a listener whose RDS config has not arrived and an EDS cluster
 * whose ClusterLoadAssignment has not arrived are left out of the assembly;
 * the first snapshot is published only once nothing is missing and every
 * subscribed wildcard type (CDS, LDS) has been answered. initial_fetch_timeout
 * bounds that wait per resource: a name that never came is then treated as
 * does-not-exist (RDS: empty route config, EDS: no endpoints, SDS: its
 * listener/cluster stays out), a CDS/LDS type as answered empty.
 *
 * NACK damping: a response whose raw resources hash like the last rejected
 * one of its type is rejected again before any decoding (ads.c rate-limits
 * the NACKs that answer such resends). */
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "skiff/buf.h"
#include "skiff/hash.h"
#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/pbregion.h"
#include "skiff/translate.h"
#include "skiff/xds.h"

#include "envoy.config.bootstrap.v3.pb-c.h"
#include "envoy.config.cluster.v3.pb-c.h"
#include "envoy.config.endpoint.v3.pb-c.h"
#include "envoy.config.listener.v3.pb-c.h"
#include "envoy.config.route.v3.pb-c.h"
#include "envoy.extensions.filters.network.http_connection_manager.v3.pb-c.h"
#include "envoy.extensions.transport_sockets.tls.v3.pb-c.h"
#include "envoy.service.discovery.v3.pb-c.h"

typedef Envoy__Config__Bootstrap__V3__Bootstrap PbBootstrap;
typedef Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources PbStatic;
typedef Envoy__Config__Listener__V3__Listener PbListener;
typedef Envoy__Config__Listener__V3__FilterChain PbFilterChain;
typedef Envoy__Config__Cluster__V3__Cluster PbCluster;
typedef Envoy__Config__Endpoint__V3__ClusterLoadAssignment PbCla;
typedef Envoy__Config__Route__V3__RouteConfiguration PbRouteConfig;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager PbHcm;
typedef Envoy__Service__Discovery__V3__DiscoveryResponse PbResponse;
typedef Google__Protobuf__Any PbAny;
typedef Envoy__Extensions__TransportSockets__Tls__V3__Secret PbSecret;
typedef Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext PbCommonTls;
typedef Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext PbCvc;
typedef Envoy__Extensions__TransportSockets__Tls__V3__TlsCertificate PbTlsCert;
typedef Envoy__Config__Core__V3__TransportSocket PbTransportSocket;

#define TYPE_PREFIX "type.googleapis.com/"

static const struct {
    const char *url, *shortname, *label;
    const ProtobufCMessageDescriptor *desc;
} types[SK_XDS_NTYPES] = {
    [SK_XDS_CDS] = {TYPE_PREFIX "envoy.config.cluster.v3.Cluster", "CDS", "Cluster",
                    &envoy__config__cluster__v3__cluster__descriptor},
    [SK_XDS_EDS] = {TYPE_PREFIX "envoy.config.endpoint.v3.ClusterLoadAssignment", "EDS",
                    "ClusterLoadAssignment",
                    &envoy__config__endpoint__v3__cluster_load_assignment__descriptor},
    [SK_XDS_LDS] = {TYPE_PREFIX "envoy.config.listener.v3.Listener", "LDS", "Listener",
                    &envoy__config__listener__v3__listener__descriptor},
    [SK_XDS_RDS] = {TYPE_PREFIX "envoy.config.route.v3.RouteConfiguration", "RDS",
                    "RouteConfiguration",
                    &envoy__config__route__v3__route_configuration__descriptor},
    [SK_XDS_SDS] = {TYPE_PREFIX "envoy.extensions.transport_sockets.tls.v3.Secret", "SDS", "Secret",
                    &envoy__extensions__transport_sockets__tls__v3__secret__descriptor},
};

/* Named (not wildcard) subscriptions: names learnt from the parents. */
static bool is_named(int t)
{
    return t == SK_XDS_RDS || t == SK_XDS_EDS || t == SK_XDS_SDS;
}

const char *sk_xds_type_url(int t)
{
    return t >= 0 && t < SK_XDS_NTYPES ? types[t].url : "";
}

const char *sk_xds_type_short(int t)
{
    return t >= 0 && t < SK_XDS_NTYPES ? types[t].shortname : "?";
}

int sk_xds_type_from_url(const char *url)
{
    if (!url)
        return -1;
    for (int t = 0; t < SK_XDS_NTYPES; t++)
        if (strcmp(url, types[t].url) == 0)
            return t;
    return -1;
}

/* Type name of an Any: the part of the type URL after the last '/'. */
static const char *any_type(const PbAny *a)
{
    const char *u = a && a->type_url ? a->type_url : "";
    const char *s = strrchr(u, '/');
    return s ? s + 1 : u;
}

static bool empty(const char *s)
{
    return !s || !*s;
}

/* ---- growable string buffer (NACK messages) ---------------------------------- */

struct sbuf {
    char *s;
    size_t len, cap;
    bool oom;
};

static void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->s && (size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 256) + (size_t)n + 1;
        char *p = realloc(b->s, ncap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->s = p;
        b->cap = ncap;
    }
}

static char *sb_take(struct sbuf *b)
{
    if (b->oom || !b->s) {
        free(b->s);
        return strdup(b->oom ? "out of memory" : "");
    }
    return b->s;
}

/* ---- string vectors (subscription names) ------------------------------------------ */

struct strv {
    char **v;
    int64_t *ms; /* per name: initial_fetch_timeout in ms (0 = wait forever) */
    size_t n, cap;
};

#define DEFAULT_FETCH_TIMEOUT_MS 15000

/* Adds a copy (duplicates are removed by strv_sort, the first timeout given for
 * a name wins); false on allocation failure. */
static bool strv_add_ms(struct strv *s, const char *x, int64_t ms)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        char **p = realloc(s->v, nc * sizeof(*p));
        if (!p)
            return false;
        s->v = p;
        int64_t *q = realloc(s->ms, nc * sizeof(*q));
        if (!q)
            return false;
        s->ms = q;
        s->cap = nc;
    }
    char *d = strdup(x);
    if (!d)
        return false;
    s->ms[s->n] = ms;
    s->v[s->n++] = d;
    return true;
}

static void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    free(s->ms);
    memset(s, 0, sizeof(*s));
}

struct name_ms {
    char *s;
    int64_t ms;
    size_t seq; /* insertion order: the first of equal names is kept */
};

static int cmp_name_ms(const void *a, const void *b)
{
    const struct name_ms *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

/* Sorts names (keeping each one's timeout) and drops duplicates; false on
 * allocation failure. */
static bool strv_sort(struct strv *s)
{
    if (s->n < 2)
        return true;
    struct name_ms *t = malloc(s->n * sizeof(*t));
    if (!t)
        return false;
    for (size_t i = 0; i < s->n; i++)
        t[i] = (struct name_ms){s->v[i], s->ms[i], i};
    qsort(t, s->n, sizeof(*t), cmp_name_ms);
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (k && strcmp(s->v[k - 1], t[i].s) == 0) {
            free(t[i].s);
            continue;
        }
        s->v[k] = t[i].s;
        s->ms[k++] = t[i].ms;
    }
    s->n = k;
    free(t);
    return true;
}

/* Index of x in a sorted strv, or -1. */
static long strv_find_sorted(const struct strv *s, const char *x)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->v[mid], x);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* ConfigSource.initial_fetch_timeout in ms: unset = 15 s (Envoy's default),
 * 0 (or negative) = wait forever (Istio sets 0s). */
static int64_t fetch_timeout_ms(const Envoy__Config__Core__V3__ConfigSource *cs)
{
    if (!cs || !cs->initial_fetch_timeout)
        return DEFAULT_FETCH_TIMEOUT_MS;
    const Google__Protobuf__Duration *d = cs->initial_fetch_timeout;
    if (d->seconds < 0 || d->nanos < 0)
        return 0;
    if (d->seconds > 100000000)
        return (int64_t)100000000 * 1000;
    return d->seconds * 1000 + (d->nanos + 999999) / 1000000;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static bool strv_eq(const struct strv *a, const struct strv *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    return true;
}

/* ---- resources -------------------------------------------------------------------- */

/* A version_info string shared by every resource one response brought. */
struct vstr {
    int refs;
    char s[];
};

static struct vstr *vstr_new(const char *v)
{
    size_t n = strlen(v ? v : "");
    struct vstr *x = malloc(sizeof(*x) + n + 1);
    if (x) {
        x->refs = 1;
        memcpy(x->s, v ? v : "", n + 1);
    }
    return x;
}

static void vstr_unref(struct vstr *v)
{
    if (v && --v->refs == 0)
        free(v);
}

static void vstr_set(struct vstr **dst, struct vstr *v)
{
    if (v)
        v->refs++;
    vstr_unref(*dst);
    *dst = v;
}

/* One allocation: the record, then its name, then its bytes (10k clusters
 * means 20k of these held for the whole run). */
struct res {
    int refs;
    char *name;           /* inside this allocation */
    struct vstr *version; /* version_info of the response that brought these bytes */
    double updated;       /* wall time they were accepted */
    uint64_t hash;        /* FNV-1a over bytes */
    uint8_t *bytes;       /* inside this allocation */
    size_t len;
    ProtobufCMessage *msg; /* unpacked bytes (default allocator); NULL for EDS resources
                              and EDS clusters (unpacked from bytes when assembled) */
    uint64_t nh;           /* FNV-1a over name (rset index) */
};

/* A set of resources by name. Lookups go through an open-addressing index
 * (slots hold position + 1) built on first use and dropped whenever the array
 * changes shape (push, compaction): with 10k clusters every per-name lookup
 * being linear made an update quadratic. Replacing v[i] by a resource of the
 * same name keeps the index valid. */
struct rset {
    struct res **v;
    size_t n, cap;
    uint32_t *ix;
    size_t ixmask; /* slots - 1 */
    bool ixok;
};

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    return sk_fnv1a(p, n);
}

static void res_unref(struct res *r)
{
    if (!r || --r->refs > 0)
        return;
    if (r->msg)
        protobuf_c_message_free_unpacked(r->msg, NULL);
    vstr_unref(r->version);
    free(r);
}

static const char *res_msg_name(int type, const ProtobufCMessage *m)
{
    switch (type) {
    case SK_XDS_CDS:
        return ((const PbCluster *)m)->name;
    case SK_XDS_EDS:
        return ((const PbCla *)m)->cluster_name;
    case SK_XDS_LDS:
        return ((const PbListener *)m)->name;
    case SK_XDS_RDS:
        return ((const PbRouteConfig *)m)->name;
    case SK_XDS_SDS:
        return ((const PbSecret *)m)->name;
    }
    return NULL;
}

static bool res_same(const struct res *a, const struct res *b)
{
    return a->hash == b->hash && a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

static void rset_free(struct rset *s)
{
    for (size_t i = 0; i < s->n; i++)
        res_unref(s->v[i]);
    free(s->v);
    free(s->ix);
    memset(s, 0, sizeof(*s));
}

static uint64_t name_hash(const char *name)
{
    return fnv1a((const uint8_t *)name, strlen(name));
}

/* (Re)builds the index; false on allocation failure (lookups then scan). */
static bool rset_index(struct rset *s)
{
    size_t slots = 16;
    while (slots < s->n * 2)
        slots *= 2;
    if (slots - 1 != s->ixmask || !s->ix) {
        uint32_t *ix = malloc(slots * sizeof(*ix));
        if (!ix)
            return false;
        free(s->ix);
        s->ix = ix;
        s->ixmask = slots - 1;
    }
    memset(s->ix, 0, slots * sizeof(*s->ix));
    for (size_t i = 0; i < s->n; i++) {
        size_t k = (size_t)s->v[i]->nh & s->ixmask;
        while (s->ix[k])
            k = (k + 1) & s->ixmask;
        s->ix[k] = (uint32_t)(i + 1);
    }
    s->ixok = true;
    return true;
}

static long rset_find_h(const struct rset *cs, const char *name, uint64_t h)
{
    /* the index is a cache: building it does not change the set's contents */
    struct rset *s = (struct rset *)cs;
    if (s->n < 8 || (!s->ixok && !rset_index(s))) {
        for (size_t i = 0; i < s->n; i++)
            if (strcmp(s->v[i]->name, name) == 0)
                return (long)i;
        return -1;
    }
    for (size_t k = (size_t)h & s->ixmask; s->ix[k]; k = (k + 1) & s->ixmask) {
        const struct res *r = s->v[s->ix[k] - 1];
        if (r->nh == h && strcmp(r->name, name) == 0)
            return (long)(s->ix[k] - 1);
    }
    return -1;
}

static long rset_find(const struct rset *s, const char *name)
{
    return rset_find_h(s, name, s->n < 8 ? 0 : name_hash(name));
}

static bool rset_reserve(struct rset *s, size_t n)
{
    if (n <= s->cap)
        return true;
    size_t nc = s->cap ? s->cap * 2 : 8;
    while (nc < n)
        nc *= 2;
    struct res **p = realloc(s->v, nc * sizeof(*p));
    if (!p)
        return false;
    s->v = p;
    s->cap = nc;
    return true;
}

static bool rset_push(struct rset *s, struct res *r)
{
    if (!rset_reserve(s, s->n + 1))
        return false;
    s->v[s->n++] = r;
    r->refs++;
    /* keep a valid index valid while it is at most half full (a lookup after
     * each push -- duplicate checks, merging a response -- must not rebuild it:
     * that made a 10k-resource response quadratic); past that the next lookup
     * rebuilds it at twice the size */
    if (s->ixok && s->ix && s->n * 2 <= s->ixmask + 1) {
        size_t k = (size_t)r->nh & s->ixmask;
        while (s->ix[k])
            k = (k + 1) & s->ixmask;
        s->ix[k] = (uint32_t)s->n;
    } else {
        s->ixok = false;
    }
    return true;
}

static bool rset_copy(struct rset *dst, const struct rset *src)
{
    memset(dst, 0, sizeof(*dst));
    if (!rset_reserve(dst, src->n))
        return false;
    for (size_t i = 0; i < src->n; i++)
        if (!rset_push(dst, src->v[i])) {
            rset_free(dst);
            return false;
        }
    return true;
}

/* Same names with the same bytes (order ignored). */
static bool rset_eq(const struct rset *a, const struct rset *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        long j = rset_find_h(b, a->v[i]->name, a->v[i]->nh);
        if (j < 0 || !res_same(a->v[i], b->v[j]))
            return false;
    }
    return true;
}

/* ---- the store ------------------------------------------------------------------------ */

/* Last rejection of one resource (config_dump's error_state). */
struct rerr {
    char *name, *version, *details;
    double time;
    bool fresh; /* set by the update being handled */
};

/* A published cluster and the ClusterLoadAssignment it inlined. */
struct pub_eds {
    uint64_t h;   /* name hash of the ClusterLoadAssignment */
    uint32_t idx; /* cluster index in the published snapshot */
    char *alt;    /* the ClusterLoadAssignment's name when it is not the cluster's */
};

/* Per type: admin state and the does-not-exist timers. */
struct tstate {
    double updated; /* wall time of the last accepted change */
    char *nack_version, *nack_nonce, *nack_details;
    double nack_time;
    struct rerr *errs;
    size_t nerrs;
    uint64_t init_fetch_timeouts;
    /* RDS/EDS: parallel to names[t] (deadline: 0 = not armed, > 0 = armed (ev
     * time), < 0 = nothing to wait for) */
    double *deadline;
    bool *dne; /* treated as does-not-exist (timed out, never received) */
    /* CDS/LDS (wildcard): the first response */
    double wild_deadline;
    bool wild_timed_out;
};

struct sk_xds_store {
    PbBootstrap *bs;
    struct sk_xds_hooks hooks;
    struct rset cur[SK_XDS_NTYPES];
    char *version[SK_XDS_NTYPES];
    bool got[SK_XDS_NTYPES];
    struct strv names[SK_XDS_NTYPES]; /* RDS/EDS subscriptions, sorted */
    struct rset active;               /* the listeners of the last published snapshot */
    char *sds_cluster; /* secrets come over a SecretDiscoveryService stream to it */
    bool warm;
    uint64_t builds;
    /* NACK damping: a re-sent rejected response (same raw resource bytes) is
     * rejected again without decoding or building */
    uint64_t nack_hash[SK_XDS_NTYPES];
    char *nack_msg[SK_XDS_NTYPES];
    struct tstate ts[SK_XDS_NTYPES];
    /* EDS-only updates: the last published snapshot (a reference) and, when it
     * came from a complete full build, which of its clusters inlined which
     * ClusterLoadAssignment (sorted by name hash) */
    struct sk_snapshot *pub;
    struct pub_eds *pe;
    size_t npe;
    bool pe_ok;
    uint64_t incremental; /* EDS updates applied by deriving a snapshot */
};

/* ---- assembly ------------------------------------------------------------------------- */

/* A subscribed RDS/EDS name whose initial fetch timed out: built as an empty
 * resource (no routes -> 404 NR; no endpoints -> 503 UH) until it arrives. */
static bool is_dne(const struct sk_xds_store *st, int type, const char *name)
{
    if (!st->ts[type].dne)
        return false;
    long i = strv_find_sorted(&st->names[type], name);
    return i >= 0 && st->ts[type].dne[i];
}

struct lmap {
    bool dynamic;
    size_t idx;  /* index in the LDS set (dynamic) */
    size_t *rds; /* indices in the RDS set that were inlined */
    size_t nrds;
};

struct cmap {
    bool dynamic;
    size_t idx; /* index in the CDS set (dynamic) */
    long eds;   /* index in the EDS set that was inlined, or -1 */
    const struct res *eres; /* that resource (held by the set the assembly used) */
};

struct asmb {
    const struct sk_xds_store *st;
    PbBootstrap bs;
    PbStatic sr;
    PbListener **ls;
    PbCluster **cs;
    struct lmap *lm;
    struct cmap *cm;
    size_t nl, nc;
    /* the modified copies (clones of listeners/clusters, their
     * ClusterLoadAssignments, rewritten Any bytes) and scratch trees: released
     * wholesale with the assembly, off the malloc heap (never free() them) */
    struct sk_pbregion rg;
    struct strv rds_names, eds_names, sds_names;
    char *sds_cluster; /* first SdsSecretConfig with its own SDS stream (malloc'd) */
    size_t missing;       /* listeners / clusters whose RDS / EDS has not arrived */
    size_t held;          /* listeners among them, included with an empty route config */
    bool validate;        /* include warming listeners (validation-only assembly) */
    struct rset used_lds; /* LDS resources in the assembly (the active set once published) */
    bool oom;
};

static void asm_free(struct asmb *a)
{
    sk_pbregion_release(&a->rg);
    for (size_t i = 0; i < a->nl; i++)
        free(a->lm[i].rds);
    free(a->ls);
    free(a->cs);
    free(a->lm);
    free(a->cm);
    strv_free(&a->rds_names);
    strv_free(&a->eds_names);
    strv_free(&a->sds_names);
    free(a->sds_cluster);
    rset_free(&a->used_lds);
    memset(a, 0, sizeof(*a));
}

/* The assembly's protobuf-c allocator (its region). */
static ProtobufCAllocator *apa(struct asmb *a)
{
    return sk_pbregion_allocator(&a->rg);
}

/* A deep copy through the wire format, in the assembly's region (never freed
 * piecewise: released with the assembly). */
static ProtobufCMessage *clone_bytes(struct asmb *a, const ProtobufCMessageDescriptor *d,
                                     const uint8_t *b, size_t len)
{
    return protobuf_c_message_unpack(d, apa(a), len, b);
}

static ProtobufCMessage *clone_msg(struct asmb *a, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = sk_pbregion_alloc(&a->rg, n);
    if (!b)
        return NULL;
    protobuf_c_message_pack(m, b);
    return protobuf_c_message_unpack(m->descriptor, apa(a), n, b);
}

static const ProtobufCMessageDescriptor *hcm_desc(void)
{
    return &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor;
}

/* Calls fn for every HCM typed_config of the listener (filter chains and the
 * default chain) with its unpacked HCM when the HCM uses rds. */
typedef bool (*hcm_fn)(void *arg, PbAny *any, PbHcm *h);

static bool chain_each_rds(struct asmb *a, PbFilterChain *fc, hcm_fn fn, void *arg)
{
    if (!fc)
        return true;
    for (size_t i = 0; i < fc->n_filters; i++) {
        Envoy__Config__Listener__V3__Filter *f = fc->filters[i];
        if (f->config_type_case != ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG ||
            !f->typed_config || strcmp(any_type(f->typed_config), hcm_desc()->name) != 0)
            continue;
        /* scratch, in the assembly's region */
        PbHcm *h = (PbHcm *)protobuf_c_message_unpack(hcm_desc(), apa(a), f->typed_config->value.len,
                                                      f->typed_config->value.data);
        if (!h)
            continue; /* translate reports it */
        bool ok = true;
        if (h->route_specifier_case ==
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS &&
            h->rds && !empty(h->rds->route_config_name))
            ok = fn(arg, f->typed_config, h);
        if (!ok)
            return false;
    }
    return true;
}

static bool listener_each_rds(struct asmb *a, PbListener *l, hcm_fn fn, void *arg)
{
    for (size_t i = 0; i < l->n_filter_chains; i++)
        if (!chain_each_rds(a, l->filter_chains[i], fn, arg))
            return false;
    return chain_each_rds(a, l->default_filter_chain, fn, arg);
}

struct rds_scan {
    struct asmb *a;
    const struct rset *rds;
    size_t n, missing;
};

static bool scan_rds(void *arg, PbAny *any, PbHcm *h)
{
    struct rds_scan *s = arg;
    if (!strv_add_ms(&s->a->rds_names, h->rds->route_config_name,
                     fetch_timeout_ms(h->rds->config_source)))
        s->a->oom = true;
    s->n++;
    if (rset_find(s->rds, h->rds->route_config_name) < 0 &&
        !is_dne(s->a->st, SK_XDS_RDS, h->rds->route_config_name))
        s->missing++;
    return true;
}

struct rds_inline {
    struct asmb *a;
    struct lmap *lm;
    const struct rset *rds;
};

/* Replaces the Any's bytes (of a clone: in the region) by the HCM with
 * route_config = the RDS resource; the new bytes come from the region too. */
static bool inline_rds(void *arg, PbAny *any, PbHcm *h)
{
    struct rds_inline *s = arg;
    long j = rset_find(s->rds, h->rds->route_config_name);
    /* warming (validation-only assembly): an empty config of that name */
    PbRouteConfig placeholder = ENVOY__CONFIG__ROUTE__V3__ROUTE_CONFIGURATION__INIT;
    placeholder.name = h->rds->route_config_name;
    Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__Rds *saved = h->rds;
    h->route_specifier_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG;
    h->route_config = j >= 0 ? (PbRouteConfig *)s->rds->v[j]->msg : &placeholder;
    size_t n = protobuf_c_message_get_packed_size(&h->base);
    uint8_t *b = sk_pbregion_alloc(&s->a->rg, n);
    if (b)
        protobuf_c_message_pack(&h->base, b);
    /* hand the borrowed RouteConfiguration back */
    h->route_specifier_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS;
    h->rds = saved;
    if (!b)
        return false;
    any->value.data = b; /* the old bytes stay in the region */
    any->value.len = n;
    if (j < 0)
        return true;
    size_t *p = realloc(s->lm->rds, (s->lm->nrds + 1) * sizeof(*p));
    if (!p)
        return false;
    s->lm->rds = p;
    s->lm->rds[s->lm->nrds++] = (size_t)j;
    return true;
}

static bool cluster_is_eds(const PbCluster *c)
{
    return c->cluster_discovery_type_case ==
               ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_TYPE &&
           c->type == ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS;
}

static const char *cluster_eds_name(const PbCluster *c)
{
    if (c->eds_cluster_config && !empty(c->eds_cluster_config->service_name))
        return c->eds_cluster_config->service_name;
    return c->name ? c->name : "";
}

/* ---- SDS: Secrets inlined into the TLS contexts ----------------------------------------- */

static const ProtobufCMessageDescriptor *dtc_desc(void)
{
    return &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor;
}

static const ProtobufCMessageDescriptor *utc_desc(void)
{
    return &envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor;
}

/* The cluster of an SDS config source with its own SecretDiscoveryService stream
 * (api_config_source GRPC, envoy_grpc), or NULL (ADS). */
static const char *sds_grpc_cluster(const Envoy__Config__Core__V3__ConfigSource *cs)
{
    if (!cs ||
        cs->config_source_specifier_case !=
            ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_API_CONFIG_SOURCE ||
        !cs->api_config_source || cs->api_config_source->n_grpc_services != 1)
        return NULL;
    const Envoy__Config__Core__V3__GrpcService *g = cs->api_config_source->grpc_services[0];
    if (g->target_specifier_case !=
            ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC ||
        !g->envoy_grpc || empty(g->envoy_grpc->cluster_name))
        return NULL;
    return g->envoy_grpc->cluster_name;
}

/* What a TransportSocket's TLS context needs from SDS. */
struct sds_need {
    size_t n;           /* secrets referenced */
    size_t unavailable; /* not delivered (missing or does-not-exist) */
    size_t missing;     /* not delivered, still waited for */
};

static const PbSecret *sds_lookup(const struct asmb *a, const struct rset *sds, const char *name,
                                  bool want_cert, struct sds_need *need)
{
    need->n++;
    long j = rset_find(sds, name);
    const PbSecret *sec = j >= 0 ? (const PbSecret *)sds->v[j]->msg : NULL;
    /* a Secret of the wrong kind is left unresolved: translate reports it */
    if (sec && want_cert &&
        sec->type_case !=
            ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE)
        return NULL;
    if (sec && !want_cert &&
        sec->type_case !=
            ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT)
        return NULL;
    if (!sec) {
        need->unavailable++;
        if (!is_dne(a->st, SK_XDS_SDS, name))
            need->missing++;
    }
    return sec;
}

/* Scans (and with `rewrite`, inlines) the SDS references of a TLS transport
 * socket: tls_certificate_sds_secret_configs[0] -> tls_certificates[0];
 * validation_context_sds_secret_config -> validation_context; combined ->
 * validation_context = default_validation_context with the secret's trusted_ca
 * (and its SAN matchers when the default has none). Names are added to
 * a->sds_names. Rewriting only happens when every secret is there. */
static void tls_sds(struct asmb *a, PbTransportSocket *ts, const struct rset *sds, bool rewrite,
                    struct sds_need *need)
{
    if (!ts ||
        ts->config_type_case !=
            ENVOY__CONFIG__CORE__V3__TRANSPORT_SOCKET__CONFIG_TYPE_TYPED_CONFIG ||
        !ts->typed_config)
        return;
    PbAny *any = ts->typed_config;
    bool down = strcmp(any_type(any), dtc_desc()->name) == 0;
    if (!down && strcmp(any_type(any), utc_desc()->name) != 0)
        return;
    /* scratch, in the assembly's region (not freed piecewise) */
    ProtobufCMessage *m = protobuf_c_message_unpack(down ? dtc_desc() : utc_desc(), apa(a),
                                                    any->value.len, any->value.data);
    if (!m)
        return; /* translate reports it */
    PbCommonTls *c = down
                         ? ((Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *)m)
                               ->common_tls_context
                         : ((Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *)m)
                               ->common_tls_context;
    if (!c)
        return;
    const PbSecret *cert = NULL, *val = NULL;
    const Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig *vs = NULL;
    bool combined = false;
    if (c->n_tls_certificate_sds_secret_configs >= 1 && c->n_tls_certificates == 0 &&
        !empty(c->tls_certificate_sds_secret_configs[0]->name)) {
        const Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig *cs =
            c->tls_certificate_sds_secret_configs[0];
        if (!strv_add_ms(&a->sds_names, cs->name, fetch_timeout_ms(cs->sds_config)))
            a->oom = true;
        if (!a->sds_cluster && sds_grpc_cluster(cs->sds_config))
            a->sds_cluster = strdup(sds_grpc_cluster(cs->sds_config));
        cert = sds_lookup(a, sds, cs->name, true, need);
    }
    if (c->validation_context_type_case ==
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_SDS_SECRET_CONFIG) {
        vs = c->validation_context_sds_secret_config;
    } else if (
        c->validation_context_type_case ==
            ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_COMBINED_VALIDATION_CONTEXT &&
        c->combined_validation_context) {
        vs = c->combined_validation_context->validation_context_sds_secret_config;
        combined = true;
    }
    if (vs && !empty(vs->name)) {
        if (!strv_add_ms(&a->sds_names, vs->name, fetch_timeout_ms(vs->sds_config)))
            a->oom = true;
        if (!a->sds_cluster && sds_grpc_cluster(vs->sds_config))
            a->sds_cluster = strdup(sds_grpc_cluster(vs->sds_config));
        val = sds_lookup(a, sds, vs->name, false, need);
    } else {
        vs = NULL;
    }
    if (!rewrite || need->unavailable || (!cert && !val))
        return;
    /* borrow the secrets' submessages for packing, then hand them back */
    size_t n_cs = c->n_tls_certificate_sds_secret_configs, n_tc = c->n_tls_certificates;
    Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig **cs =
        c->tls_certificate_sds_secret_configs;
    PbTlsCert **tc = c->tls_certificates;
    PbTlsCert *one[1] = {cert ? cert->tls_certificate : NULL};
    int vcase = c->validation_context_type_case;
    void *vptr = c->validation_context; /* the oneof's pointer (any member) */
    PbCvc merged;
    if (cert) {
        c->n_tls_certificate_sds_secret_configs = 0;
        c->tls_certificate_sds_secret_configs = NULL;
        c->n_tls_certificates = 1;
        c->tls_certificates = one;
    }
    if (val) {
        const PbCvc *sv = val->validation_context;
        const PbCvc *dv =
            combined ? c->combined_validation_context->default_validation_context : NULL;
        if (dv) {
            merged = *dv;
            if (!merged.trusted_ca)
                merged.trusted_ca = sv->trusted_ca;
            if (!merged.n_match_typed_subject_alt_names && !merged.n_match_subject_alt_names) {
                merged.n_match_typed_subject_alt_names = sv->n_match_typed_subject_alt_names;
                merged.match_typed_subject_alt_names = sv->match_typed_subject_alt_names;
                merged.n_match_subject_alt_names = sv->n_match_subject_alt_names;
                merged.match_subject_alt_names = sv->match_subject_alt_names;
            }
        } else {
            merged = *sv;
        }
        c->validation_context_type_case =
            ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT;
        c->validation_context = &merged;
    }
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = sk_pbregion_alloc(&a->rg, n);
    if (b)
        protobuf_c_message_pack(m, b);
    c->n_tls_certificate_sds_secret_configs = n_cs;
    c->tls_certificate_sds_secret_configs = cs;
    c->n_tls_certificates = n_tc;
    c->tls_certificates = tc;
    c->validation_context_type_case = vcase;
    c->validation_context = vptr;
    if (!b) {
        a->oom = true;
        return;
    }
    /* `any` is in a clone (rewrite): its old bytes stay in the region */
    any->value.data = b;
    any->value.len = n;
}

static void listener_sds(struct asmb *a, PbListener *l, const struct rset *sds, bool rewrite,
                         struct sds_need *need)
{
    for (size_t i = 0; i < l->n_filter_chains; i++)
        if (l->filter_chains[i])
            tls_sds(a, l->filter_chains[i]->transport_socket, sds, rewrite, need);
    if (l->default_filter_chain)
        tls_sds(a, l->default_filter_chain->transport_socket, sds, rewrite, need);
}

/* Adds one listener (static: lres NULL) to the assembly. */
static void asm_listener(struct asmb *a, PbListener *l, const struct res *lres, size_t idx,
                         const struct rset *rds, const struct rset *sds)
{
    struct rds_scan sc = {a, rds, 0, 0};
    listener_each_rds(a, l, scan_rds, &sc);
    struct sds_need need = {0};
    listener_sds(a, l, sds, false, &need);
    if (need.unavailable) {
        /* no TLS material yet: left out (cannot even be validated); waited
         * for unless its secret was given up on (does-not-exist) */
        if (need.missing)
            a->missing++;
        return;
    }
    if (sc.missing) {
        a->missing++; /* warming: wait for its RouteConfiguration(s) */
        if (!a->validate)
            return;
        a->held++; /* validated with empty route configs, never published */
    }
    struct lmap *m = &a->lm[a->nl];
    memset(m, 0, sizeof(*m));
    m->dynamic = lres != NULL;
    m->idx = idx;
    PbListener *use = l;
    if (sc.n || need.n) {
        ProtobufCMessage *c = lres ? clone_bytes(a, l->base.descriptor, lres->bytes, lres->len)
                                   : clone_msg(a, &l->base);
        if (!c) {
            a->oom = true;
            return;
        }
        use = (PbListener *)c;
        struct rds_inline in = {a, m, rds};
        if (!listener_each_rds(a, use, inline_rds, &in)) {
            a->oom = true;
            free(m->rds);
            return;
        }
        struct sds_need n2 = {0};
        if (need.n)
            listener_sds(a, use, sds, true, &n2);
    }
    if (lres && !rset_push(&a->used_lds, (struct res *)lres))
        a->oom = true;
    a->ls[a->nl++] = use;
}

struct rds_ready {
    const struct sk_xds_store *st;
    const struct rset *rds;
    size_t missing;
    struct strv *names;
    bool oom;
};

static bool ready_rds(void *arg, PbAny *any, PbHcm *h)
{
    struct rds_ready *s = arg;
    if (rset_find(s->rds, h->rds->route_config_name) < 0 &&
        !is_dne(s->st, SK_XDS_RDS, h->rds->route_config_name))
        s->missing++;
    if (s->names &&
        !strv_add_ms(s->names, h->rds->route_config_name, fetch_timeout_ms(h->rds->config_source)))
        s->oom = true;
    return true;
}

/* RDS configs the listener still waits for; their names are added to `names`. */
static size_t listener_missing(struct asmb *a, PbListener *l, const struct rset *rds,
                               const struct rset *sds, struct strv *names, bool *oom)
{
    struct rds_ready s = {a->st, rds, 0, names, false};
    listener_each_rds(a, l, ready_rds, &s);
    if (s.oom)
        *oom = true;
    /* its secrets (their names are collected either way) */
    struct sds_need need = {0};
    listener_sds(a, l, sds, false, &need);
    return s.missing + need.missing;
}

/* `owned`: c is already a modifiable copy owned by the assembly. */
static void asm_cluster(struct asmb *a, PbCluster *c, const struct res *cres, size_t idx,
                        const struct rset *eds, const struct rset *sds, bool owned)
{
    struct cmap *m = &a->cm[a->nc];
    m->dynamic = cres != NULL;
    m->idx = idx;
    m->eds = -1;
    bool is_eds = cluster_is_eds(c);
    long j = -1;
    if (is_eds) {
        const char *sn = cluster_eds_name(c);
        if (!strv_add_ms(
                &a->eds_names, sn,
                fetch_timeout_ms(c->eds_cluster_config ? c->eds_cluster_config->eds_config : NULL)))
            a->oom = true;
        /* warming (no ClusterLoadAssignment yet): no endpoints, so requests
         * routed to it get a 503 until EDS delivers them (or, once its initial
         * fetch timed out, it is used as it is: no endpoints, 503 UH) */
        j = rset_find(eds, sn);
        if (j < 0 && !is_dne(a->st, SK_XDS_EDS, sn))
            a->missing++;
    }
    struct sds_need need = {0};
    tls_sds(a, c->transport_socket, sds, false, &need);
    if (need.unavailable) {
        /* no TLS material yet: left out until its Secret arrives (routes to it
         * answer 503 NC meanwhile) */
        if (need.missing)
            a->missing++;
        return;
    }
    PbCluster *use = c;
    if ((is_eds || need.n) && !owned) {
        ProtobufCMessage *cp = cres ? clone_bytes(a, c->base.descriptor, cres->bytes, cres->len)
                                    : clone_msg(a, &c->base);
        if (!cp) {
            a->oom = true;
            return;
        }
        use = (PbCluster *)cp;
        if (need.n)
            tls_sds(a, use->transport_socket, sds, true, &(struct sds_need){0});
    }
    if (is_eds) {
        ProtobufCMessage *la =
            j >= 0 ? clone_bytes(a, types[SK_XDS_EDS].desc, eds->v[j]->bytes, eds->v[j]->len)
                   : NULL;
        if (j >= 0 && !la) {
            a->oom = true;
            return;
        }
        /* `use` is a clone in the region: the replaced submessages stay there */
        use->load_assignment = (PbCla *)la;
        use->eds_cluster_config = NULL;
        use->type = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC;
        m->eds = j;
        m->eres = j >= 0 ? eds->v[j] : NULL;
    }
    a->cs[a->nc++] = use;
}

/* Builds the assembly from the store's bootstrap and the given sets (one per
 * type). Returns false on allocation failure. */
static bool assemble(const struct sk_xds_store *st, const struct rset *const sets[SK_XDS_NTYPES],
                     bool validate, struct asmb *a)
{
    memset(a, 0, sizeof(*a));
    sk_pbregion_init(&a->rg);
    a->st = st;
    a->validate = validate;
    const PbBootstrap *bs = st->bs;
    a->bs = *bs; /* shallow: node, admin, dynamic_resources borrowed */
    const PbStatic *sr0 = bs->static_resources;
    envoy__config__bootstrap__v3__bootstrap__static_resources__init(&a->sr);
    if (sr0)
        a->sr = *sr0;
    a->bs.static_resources = &a->sr;
    size_t nsl = sr0 ? sr0->n_listeners : 0, nsc = sr0 ? sr0->n_clusters : 0;
    size_t nl = nsl + sets[SK_XDS_LDS]->n, nc = nsc + sets[SK_XDS_CDS]->n;
    a->ls = calloc(nl + 1, sizeof(*a->ls));
    a->lm = calloc(nl + 1, sizeof(*a->lm));
    a->cs = calloc(nc + 1, sizeof(*a->cs));
    a->cm = calloc(nc + 1, sizeof(*a->cm));
    if (!a->ls || !a->lm || !a->cs || !a->cm) {
        a->oom = true;
        return false;
    }
    for (size_t i = 0; i < nsc; i++)
        asm_cluster(a, sr0->clusters[i], NULL, 0, sets[SK_XDS_EDS], sets[SK_XDS_SDS], false);
    for (size_t i = 0; i < sets[SK_XDS_CDS]->n; i++) {
        struct res *r = sets[SK_XDS_CDS]->v[i];
        PbCluster *c = (PbCluster *)r->msg;
        if (!c) { /* kept as bytes only (EDS clusters are always copied anyway) */
            c = (PbCluster *)clone_bytes(a, types[SK_XDS_CDS].desc, r->bytes, r->len);
            if (!c) {
                a->oom = true;
                continue;
            }
        }
        asm_cluster(a, c, r, i, sets[SK_XDS_EDS], sets[SK_XDS_SDS], c != (PbCluster *)r->msg);
    }
    for (size_t i = 0; i < nsl; i++)
        asm_listener(a, sr0->listeners[i], NULL, 0, sets[SK_XDS_RDS], sets[SK_XDS_SDS]);
    for (size_t i = 0; i < sets[SK_XDS_LDS]->n; i++) {
        struct res *r = sets[SK_XDS_LDS]->v[i];
        /* a changed listener waiting for new RDS configs: the version in service
         * keeps serving meanwhile (its routes stay subscribed) */
        long k = rset_find(&st->active, r->name);
        struct res *prev = k >= 0 && !res_same(st->active.v[k], r) ? st->active.v[k] : NULL;
        if (prev &&
            listener_missing(a, (PbListener *)r->msg, sets[SK_XDS_RDS], sets[SK_XDS_SDS], NULL,
                             &a->oom) &&
            listener_missing(a, (PbListener *)prev->msg, sets[SK_XDS_RDS], sets[SK_XDS_SDS],
                             &a->rds_names, &a->oom) == 0 &&
            !a->validate) {
            a->missing++; /* the new version is still incomplete */
            asm_listener(a, (PbListener *)prev->msg, prev, i, sets[SK_XDS_RDS], sets[SK_XDS_SDS]);
            continue;
        }
        asm_listener(a, (PbListener *)r->msg, r, i, sets[SK_XDS_RDS], sets[SK_XDS_SDS]);
    }
    a->sr.listeners = a->ls;
    a->sr.n_listeners = a->nl;
    a->sr.clusters = a->cs;
    a->sr.n_clusters = a->nc;
    if (!strv_sort(&a->rds_names) || !strv_sort(&a->eds_names) || !strv_sort(&a->sds_names))
        a->oom = true;
    return !a->oom;
}

/* ---- building --------------------------------------------------------------------------- */

struct build {
    struct asmb a;
    struct sk_cfgerrs errs;
    struct sk_snapshot *snap;
    struct rset used; /* LDS resources in snap */
    int rc;
};

static void build_free(struct build *b)
{
    bool big = b->a.nc + b->a.nl > 256;
    asm_free(&b->a);
    rset_free(&b->used);
    sk_cfgerrs_free(&b->errs);
    if (b->snap)
        sk_snapshot_unref(b->snap);
    b->snap = NULL;
    /* a large assembly leaves megabytes of freed clones in the heap: hand them
     * back to the kernel (main thread, once per update) */
    if (big)
        malloc_trim(0);
}

static int try_build(struct sk_xds_store *st, const struct rset *const sets[SK_XDS_NTYPES],
                     struct build *b)
{
    memset(b, 0, sizeof(*b));
    sk_cfgerrs_init(&b->errs, "<xds>");
    if (!assemble(st, sets, true, &b->a)) {
        sk_cfgerrs_add(&b->errs, "", "out of memory assembling the xDS config");
        return b->rc = SK_ERR_NOMEM;
    }
    b->rc = sk_snapshot_build(&b->a.bs, &b->snap, &b->errs);
    if (b->rc == 0 && b->a.held) {
        /* warming listeners were validated; the snapshot to publish goes without
         * them (a subset of what just passed) */
        sk_snapshot_unref(b->snap);
        b->snap = NULL;
        struct asmb pub;
        if (!assemble(st, sets, false, &pub)) {
            asm_free(&pub);
            sk_cfgerrs_add(&b->errs, "", "out of memory assembling the xDS config");
            return b->rc = SK_ERR_NOMEM;
        }
        struct sk_cfgerrs e2;
        sk_cfgerrs_init(&e2, "<xds>");
        b->rc = sk_snapshot_build(&pub.bs, &b->snap, &e2);
        /* paths of this assembly do not index the validation one: unmapped */
        for (size_t i = 0; i < e2.n; i++)
            sk_cfgerrs_add(&b->errs, "", "%s: %s", e2.v[i].path, e2.v[i].msg);
        sk_cfgerrs_free(&e2);
        b->used = pub.used_lds;
        memset(&pub.used_lds, 0, sizeof(pub.used_lds));
        asm_free(&pub);
    } else {
        b->used = b->a.used_lds;
        memset(&b->a.used_lds, 0, sizeof(b->a.used_lds));
    }
    if (b->rc == 0 && st->hooks.prepare && st->hooks.prepare(b->snap, &b->errs) != 0) {
        sk_snapshot_unref(b->snap);
        b->snap = NULL;
        b->rc = SK_ERR_CONFIG;
        if (b->errs.n == 0)
            sk_cfgerrs_add(&b->errs, "", "runtime preparation failed");
    }
    if (b->rc == 0)
        st->builds++;
    return b->rc;
}

/* "static_resources.listeners[3].x" -> kind 'l', 3, rest ".x". */
static bool parse_path(const char *p, char *kind, size_t *idx, const char **rest)
{
    static const char L[] = "static_resources.listeners[", C[] = "static_resources.clusters[";
    const char *s;
    if (strncmp(p, L, sizeof(L) - 1) == 0) {
        *kind = 'l';
        s = p + sizeof(L) - 1;
    } else if (strncmp(p, C, sizeof(C) - 1) == 0) {
        *kind = 'c';
        s = p + sizeof(C) - 1;
    } else {
        return false;
    }
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end != ']')
        return false;
    *idx = v;
    *rest = end + 1;
    return true;
}

/* The candidate-set index an error is blamed on for an update of `type`, or -1.
 * For RDS an error can touch several route configs of one listener: *extra
 * gets the others (lm->rds). */
static long blame(const struct asmb *a, int type, const struct sk_cfgerr *e, const char **rest,
                  const struct lmap **lmo)
{
    char kind;
    size_t idx;
    *lmo = NULL;
    if (!e->path || !parse_path(e->path, &kind, &idx, rest))
        return -1;
    if (kind == 'l' && idx < a->nl) {
        const struct lmap *m = &a->lm[idx];
        if (type == SK_XDS_LDS)
            return m->dynamic ? (long)m->idx : -1;
        if (type == SK_XDS_RDS && m->nrds && strstr(*rest, "route_config")) {
            const char *rc = strstr(*rest, "route_config");
            *rest = rc + strlen("route_config");
            *lmo = m;
            return (long)m->rds[0];
        }
        return -1;
    }
    if (kind == 'c' && idx < a->nc) {
        const struct cmap *m = &a->cm[idx];
        if (type == SK_XDS_CDS)
            return m->dynamic ? (long)m->idx : -1;
        if (type == SK_XDS_EDS && m->eds >= 0 && strstr(*rest, "load_assignment")) {
            *rest = strstr(*rest, "load_assignment") + strlen("load_assignment");
            return m->eds;
        }
    }
    return -1;
}

/* Marks candidate entries to blame; true if every error could be tied to a
 * changed resource of this type. */
static bool map_errors(const struct build *b, int type, const struct rset *cand,
                       const struct rset *old, bool *bad)
{
    if (b->errs.n == 0)
        return false;
    for (size_t i = 0; i < b->errs.n; i++) {
        const char *rest;
        const struct lmap *lm;
        long j = blame(&b->a, type, &b->errs.v[i], &rest, &lm);
        if (j < 0 || (size_t)j >= cand->n)
            return false;
        size_t nb = lm ? lm->nrds : 1;
        bool any = false;
        for (size_t k = 0; k < nb; k++) {
            size_t x = lm ? lm->rds[k] : (size_t)j;
            if (x >= cand->n)
                return false;
            long o = rset_find(old, cand->v[x]->name);
            if (o >= 0 && res_same(old->v[o], cand->v[x]))
                continue; /* unchanged: not the culprit */
            bad[x] = true;
            any = true;
        }
        if (!any)
            return false;
    }
    return true;
}

/* Error list as NACK text, each error named after the resource it belongs to
 * when it can be tied to one. */
static char *describe(const struct build *b, int type, const struct rset *cand)
{
    struct sbuf sb = {0};
    for (size_t i = 0; i < b->errs.n; i++) {
        const struct sk_cfgerr *e = &b->errs.v[i];
        const char *rest;
        const struct lmap *lm;
        long j = blame(&b->a, type, e, &rest, &lm);
        if (i)
            sb_add(&sb, "; ");
        if (j >= 0 && (size_t)j < cand->n) {
            if (lm && lm->nrds > 1) {
                sb_add(&sb, "%s", types[type].label);
                for (size_t k = 0; k < lm->nrds; k++)
                    sb_add(&sb, "%s'%s'", k ? " or " : " ", cand->v[lm->rds[k]]->name);
            } else {
                sb_add(&sb, "%s '%s'", types[type].label, cand->v[j]->name);
            }
            if (*rest == '.')
                rest++;
            if (*rest)
                sb_add(&sb, ": %s", rest);
            sb_add(&sb, ": %s", e->msg ? e->msg : "");
        } else {
            if (!empty(e->path))
                sb_add(&sb, "%s: ", e->path);
            sb_add(&sb, "%s", e->msg ? e->msg : "");
        }
    }
    return sb_take(&sb);
}

/* The errors blamed on candidate resource `idx` (its error_state details). */
static char *describe_one(const struct build *b, int type, const struct rset *cand, size_t idx)
{
    struct sbuf sb = {0};
    for (size_t i = 0; i < b->errs.n; i++) {
        const struct sk_cfgerr *e = &b->errs.v[i];
        const char *rest;
        const struct lmap *lm;
        long j = blame(&b->a, type, e, &rest, &lm);
        bool mine = j >= 0 && (size_t)j == idx;
        for (size_t k = 0; lm && k < lm->nrds && !mine; k++)
            mine = lm->rds[k] == idx;
        if (!mine)
            continue;
        if (sb.len)
            sb_add(&sb, "; ");
        if (*rest == '.')
            rest++;
        if (*rest)
            sb_add(&sb, "%s: ", rest);
        sb_add(&sb, "%s", e->msg ? e->msg : "");
    }
    return sb_take(&sb);
}

/* ---- store API -------------------------------------------------------------------------- */

static void current_sets(const struct sk_xds_store *st, const struct rset *sets[SK_XDS_NTYPES])
{
    for (int t = 0; t < SK_XDS_NTYPES; t++)
        sets[t] = &st->cur[t];
}

static bool source_is_ads(const Envoy__Config__Core__V3__ConfigSource *cs)
{
    return cs && (cs->config_source_specifier_case ==
                      ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS ||
                  cs->config_source_specifier_case ==
                      ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_SELF);
}

bool sk_xds_store_wants(const struct sk_xds_store *st, int type)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *d = st->bs->dynamic_resources;
    switch (type) {
    case SK_XDS_CDS:
        return d && d->ads_config && source_is_ads(d->cds_config);
    case SK_XDS_LDS:
        return d && d->ads_config && source_is_ads(d->lds_config);
    case SK_XDS_EDS:
    case SK_XDS_RDS:
    case SK_XDS_SDS:
        return st->names[type].n > 0;
    }
    return false;
}

/* Takes the assembly's RDS/EDS names as the subscriptions; drops cached
 * resources nobody references any more. */
static void take_names(struct sk_xds_store *st, struct asmb *a, struct sk_xds_result *res)
{
    /* the first SDS cluster seen stays (the ADS client opens one SDS stream) */
    if (a->sds_cluster && !st->sds_cluster)
        st->sds_cluster = strdup(a->sds_cluster);
    struct strv *nn[SK_XDS_NTYPES] = {
        [SK_XDS_RDS] = &a->rds_names, [SK_XDS_EDS] = &a->eds_names, [SK_XDS_SDS] = &a->sds_names};
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        if (!nn[t])
            continue;
        if (!strv_eq(&st->names[t], nn[t]) && res)
            res->names_changed[t] = true;
        /* carry each kept name's timer state over to the new name list */
        struct tstate *ts = &st->ts[t];
        size_t n = nn[t]->n;
        double *dl = calloc(n + 1, sizeof(*dl));
        bool *dne = calloc(n + 1, sizeof(*dne));
        if (dl && dne) {
            for (size_t i = 0; i < n; i++) {
                long o = ts->deadline ? strv_find_sorted(&st->names[t], nn[t]->v[i]) : -1;
                if (o >= 0) {
                    dl[i] = ts->deadline[o];
                    dne[i] = ts->dne[o];
                }
            }
            free(ts->deadline);
            free(ts->dne);
            ts->deadline = dl;
            ts->dne = dne;
        } else { /* out of memory: timers restart (nothing is lost but time) */
            free(dl);
            free(dne);
            free(ts->deadline);
            free(ts->dne);
            ts->deadline = NULL;
            ts->dne = NULL;
        }
        strv_free(&st->names[t]);
        st->names[t] = *nn[t];
        memset(nn[t], 0, sizeof(*nn[t]));
        struct rset *s = &st->cur[t];
        size_t k = 0;
        for (size_t i = 0; i < s->n; i++) {
            if (strv_find_sorted(&st->names[t], s->v[i]->name) >= 0)
                s->v[k++] = s->v[i];
            else
                res_unref(s->v[i]);
        }
        if (k != s->n)
            s->ixok = false;
        s->n = k;
    }
}

static bool is_complete(const struct sk_xds_store *st, const struct asmb *a)
{
    if (a->missing)
        return false;
    for (int t = 0; t < SK_XDS_NTYPES; t++)
        if ((t == SK_XDS_CDS || t == SK_XDS_LDS) && sk_xds_store_wants(st, t) && !st->got[t])
            return false;
    return true;
}

static void tstate_free(struct tstate *ts);

struct sk_xds_store *sk_xds_store_new(PbBootstrap *bs, const struct sk_xds_hooks *hooks)
{
    struct sk_xds_store *st = calloc(1, sizeof(*st));
    if (!st) {
        protobuf_c_message_free_unpacked(&bs->base, NULL);
        return NULL;
    }
    st->bs = bs;
    if (hooks)
        st->hooks = *hooks;
    for (int t = 0; t < SK_XDS_NTYPES; t++)
        st->version[t] = strdup("");
    /* initial subscriptions from the bootstrap alone (static EDS clusters,
     * static listeners with rds) */
    const struct rset *sets[SK_XDS_NTYPES];
    current_sets(st, sets);
    struct asmb a;
    assemble(st, sets, true, &a);
    take_names(st, &a, NULL);
    asm_free(&a);
    return st;
}

void sk_xds_store_free(struct sk_xds_store *st)
{
    if (!st)
        return;
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        rset_free(&st->cur[t]);
        free(st->version[t]);
        free(st->nack_msg[t]);
        strv_free(&st->names[t]);
        tstate_free(&st->ts[t]);
    }
    rset_free(&st->active);
    free(st->sds_cluster);
    for (size_t i = 0; i < st->npe; i++)
        free(st->pe[i].alt);
    free(st->pe);
    sk_snapshot_unref(st->pub);
    if (st->bs)
        protobuf_c_message_free_unpacked(&st->bs->base, NULL);
    free(st);
}

const PbBootstrap *sk_xds_store_bootstrap(const struct sk_xds_store *st)
{
    return st->bs;
}

const char *sk_xds_store_version(const struct sk_xds_store *st, int type)
{
    return type >= 0 && type < SK_XDS_NTYPES && st->version[type] ? st->version[type] : "";
}

size_t sk_xds_store_names(const struct sk_xds_store *st, int type, const char *const **names)
{
    if (!is_named(type)) {
        *names = NULL;
        return 0;
    }
    *names = (const char *const *)st->names[type].v;
    return st->names[type].n;
}

const char *sk_xds_store_sds_cluster(const struct sk_xds_store *st)
{
    return st->sds_cluster;
}

bool sk_xds_store_warm(const struct sk_xds_store *st)
{
    return st->warm;
}

size_t sk_xds_store_count(const struct sk_xds_store *st, int type)
{
    return type >= 0 && type < SK_XDS_NTYPES ? st->cur[type].n : 0;
}

uint64_t sk_xds_store_builds(const struct sk_xds_store *st)
{
    return st->builds;
}

uint64_t sk_xds_store_incremental(const struct sk_xds_store *st)
{
    return st->incremental;
}

void sk_xds_result_free(struct sk_xds_result *r)
{
    free(r->error);
    r->error = NULL;
}

static void set_str(char **dst, const char *v)
{
    char *d = strdup(v ? v : "");
    if (d) {
        free(*dst);
        *dst = d;
    }
}

static void pe_clear(struct sk_xds_store *st)
{
    for (size_t i = 0; i < st->npe; i++)
        free(st->pe[i].alt);
    free(st->pe);
    st->pe = NULL;
    st->npe = 0;
    st->pe_ok = false;
}

static int pe_cmp(const void *a, const void *b)
{
    const struct pub_eds *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* After a full build was published: which cluster inlined which
 * ClusterLoadAssignment. Only a complete build (nothing warming, nothing held
 * back) lets later EDS-only updates derive from it. */
static void pe_record(struct sk_xds_store *st, const struct build *b)
{
    pe_clear(st);
    const struct asmb *a = &b->a;
    if (!st->pub || a->missing || a->held || a->nc != st->pub->nclusters)
        return;
    size_t n = 0;
    for (size_t k = 0; k < a->nc; k++)
        n += a->cm[k].eres != NULL;
    struct pub_eds *pe = calloc(n ? n : 1, sizeof(*pe));
    if (!pe)
        return;
    size_t m = 0;
    for (size_t k = 0; k < a->nc; k++) {
        const struct res *x = a->cm[k].eres;
        if (!x)
            continue;
        pe[m].h = x->nh;
        pe[m].idx = (uint32_t)k;
        if (strcmp(x->name, st->pub->clusters[k].name) != 0 && !(pe[m].alt = strdup(x->name))) {
            st->pe = pe;
            st->npe = m;
            pe_clear(st);
            return;
        }
        m++;
    }
    qsort(pe, m, sizeof(*pe), pe_cmp);
    st->pe = pe;
    st->npe = m;
    st->pe_ok = true;
}

/* Entries for ClusterLoadAssignment x are those from pe_first(x->nh) on with
 * that hash for which pe_is() holds (hash collisions are told apart by name). */
static size_t pe_first(const struct sk_xds_store *st, uint64_t h)
{
    size_t lo = 0, hi = st->npe;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->pe[mid].h < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool pe_is(const struct sk_xds_store *st, const struct pub_eds *p, const struct res *x)
{
    return p->h == x->nh &&
           strcmp(p->alt ? p->alt : st->pub->clusters[p->idx].name, x->name) == 0;
}

/* How many published clusters inlined ClusterLoadAssignment x. */
static size_t pe_count(const struct sk_xds_store *st, const struct res *x)
{
    size_t n = 0;
    for (size_t i = pe_first(st, x->nh); i < st->npe && st->pe[i].h == x->nh; i++)
        n += pe_is(st, &st->pe[i], x);
    return n;
}

/* Publishes b->snap if the config is (now) complete. Returns < 0 if the
 * publish hook refused it. */
static int maybe_publish(struct sk_xds_store *st, struct build *b, struct sk_xds_result *res)
{
    if (!st->warm && !is_complete(st, &b->a)) {
        pe_clear(st); /* the store now holds resources the published config lacks */
        return 0;     /* still warming: validated only */
    }
    if (st->hooks.publish) {
        struct sk_snapshot *keep = sk_snapshot_ref(b->snap);
        if (st->hooks.publish(st->hooks.arg, b->snap) < 0) {
            sk_snapshot_unref(keep);
            return SK_ERR_IO;
        }
        b->snap = NULL; /* the hook took the reference */
        sk_snapshot_unref(st->pub);
        st->pub = keep;
        pe_record(st, b);
        if (res)
            res->published = true;
    }
    rset_free(&st->active);
    st->active = b->used;
    memset(&b->used, 0, sizeof(b->used));
    st->warm = true;
    return 0;
}

static void rerr_free(struct rerr *e)
{
    free(e->name);
    free(e->version);
    free(e->details);
}

static void tstate_free(struct tstate *ts)
{
    free(ts->nack_version);
    free(ts->nack_nonce);
    free(ts->nack_details);
    for (size_t i = 0; i < ts->nerrs; i++)
        rerr_free(&ts->errs[i]);
    free(ts->errs);
    free(ts->deadline);
    free(ts->dne);
    memset(ts, 0, sizeof(*ts));
}

/* The last rejection of a type, for /config_dump. */
static void record_nack(struct sk_xds_store *st, int type, const PbResponse *r, const char *why)
{
    struct tstate *ts = &st->ts[type];
    set_str(&ts->nack_version, r->version_info);
    set_str(&ts->nack_nonce, r->nonce);
    set_str(&ts->nack_details, why ? why : "rejected");
    ts->nack_time = wall_now();
}

/* Records (replaces) the error state of one resource; takes `details`. */
static void set_rerr(struct sk_xds_store *st, int type, const char *name, const char *version,
                     char *details)
{
    struct tstate *ts = &st->ts[type];
    struct rerr *e = NULL;
    for (size_t i = 0; i < ts->nerrs && !e; i++)
        if (strcmp(ts->errs[i].name, name) == 0)
            e = &ts->errs[i];
    if (!e) {
        struct rerr *p = realloc(ts->errs, (ts->nerrs + 1) * sizeof(*p));
        if (!p) {
            free(details);
            return;
        }
        ts->errs = p;
        e = &ts->errs[ts->nerrs];
        memset(e, 0, sizeof(*e));
        e->name = strdup(name);
        if (!e->name) {
            free(details);
            return;
        }
        ts->nerrs++;
    }
    set_str(&e->version, version);
    free(e->details);
    e->details = details;
    e->time = wall_now();
    e->fresh = true;
}

/* Drops error states that no longer apply: the resource was accepted since
 * (updated at `now`), or is gone (CDS/LDS: not in the latest response `resp`;
 * RDS/EDS: not subscribed any more). */
static void prune_rerrs(struct sk_xds_store *st, int type, const struct rset *resp, double now)
{
    struct tstate *ts = &st->ts[type];
    size_t k = 0;
    for (size_t i = 0; i < ts->nerrs; i++) {
        struct rerr *e = &ts->errs[i];
        bool keep = e->fresh;
        if (!keep) {
            long j = rset_find(&st->cur[type], e->name);
            bool accepted = j >= 0 && st->cur[type].v[j]->updated == now;
            bool gone = (type == SK_XDS_CDS || type == SK_XDS_LDS)
                            ? rset_find(resp, e->name) < 0
                            : strv_find_sorted(&st->names[type], e->name) < 0;
            keep = !accepted && !gone;
        }
        e->fresh = false;
        if (keep)
            ts->errs[k++] = *e;
        else
            rerr_free(e);
    }
    ts->nerrs = k;
}

/* Every type's cached rejection may depend on the others (a listener naming a
 * cluster, ...): once anything was accepted, a resent response is judged anew. */
static void forget_nacks(struct sk_xds_store *st)
{
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        free(st->nack_msg[t]);
        st->nack_msg[t] = NULL;
    }
}

/* Hash of the raw resources of a response (type URLs and bytes, in order): a
 * response identical to one rejected before is recognised before decoding. */
static uint64_t raw_hash(int type, const PbResponse *r)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)type;
    for (size_t i = 0; i < r->n_resources; i++) {
        const PbAny *a = r->resources[i];
        uint64_t x = a ? fnv1a(a->value.data, a->value.len) : 0;
        uint64_t u =
            a && a->type_url ? fnv1a((const uint8_t *)a->type_url, strlen(a->type_url)) : 0;
        h = (h ^ x) * 1099511628211ull;
        h = (h ^ u ^ (a ? a->value.len : 0)) * 1099511628211ull;
    }
    return (h ^ r->n_resources) * 1099511628211ull;
}

/* The name of a resource (field 1, a string, in all five types: Cluster.name,
 * ClusterLoadAssignment.cluster_name, Listener.name, RouteConfiguration.name,
 * Secret.name) read from its wire bytes without decoding them: the last
 * occurrence, as a decoder would take it. False when absent or malformed (the
 * caller then decodes as usual and reports). */
static bool wire_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    uint64_t x = 0;
    for (int sh = 0; sh < 64; sh += 7) {
        if (*i >= n)
            return false;
        uint8_t b = p[(*i)++];
        x |= (uint64_t)(b & 0x7f) << sh;
        if (!(b & 0x80)) {
            *v = x;
            return true;
        }
    }
    return false;
}

static bool wire_name(const uint8_t *p, size_t n, const uint8_t **name, size_t *nlen)
{
    size_t i = 0;
    bool found = false;
    while (i < n) {
        uint64_t key, v;
        if (!wire_varint(p, n, &i, &key))
            return false;
        switch (key & 7) {
        case 0:
            if (!wire_varint(p, n, &i, &v))
                return false;
            break;
        case 1:
            if (n - i < 8)
                return false;
            i += 8;
            break;
        case 5:
            if (n - i < 4)
                return false;
            i += 4;
            break;
        case 2:
            if (!wire_varint(p, n, &i, &v) || v > n - i)
                return false;
            if ((key >> 3) == 1) {
                *name = p + i;
                *nlen = (size_t)v;
                found = true;
            }
            i += (size_t)v;
            break;
        default:
            return false;
        }
    }
    return found;
}

/* A resource of this response whose bytes equal the one we hold under the same
 * name: that one (no decoding); NULL otherwise. */
static struct res *same_as_current(const struct rset *cur, const PbAny *a)
{
    const uint8_t *nm;
    size_t nl;
    char name[256];
    if (cur->n == 0 || !wire_name(a->value.data, a->value.len, &nm, &nl) || nl == 0 ||
        nl >= sizeof(name) || memchr(nm, 0, nl))
        return NULL;
    memcpy(name, nm, nl);
    name[nl] = 0;
    long j = rset_find(cur, name);
    if (j < 0)
        return NULL;
    struct res *x = cur->v[j];
    if (x->len != a->value.len || (x->len && memcmp(x->bytes, a->value.data, x->len) != 0))
        return NULL;
    return x;
}

static void nack(struct sk_xds_result *res, char *msg)
{
    res->ack = false;
    free(res->error);
    res->error = msg ? msg : strdup("out of memory");
}

/* An EDS response that only replaces ClusterLoadAssignments of published
 * clusters is applied without a full build: a snapshot derived from the
 * published one takes the new endpoints of those clusters only (O(changed
 * endpoints), plus copying the clusters array). Anything else -- new names,
 * errors, a published config that was not complete, too many clusters already
 * overridden since the last full build -- returns false and the full path runs
 * (with its per-resource error mapping). On true, cand was consumed and the
 * update committed. */
static bool eds_incremental(struct sk_xds_store *st, const PbResponse *r, struct rset *cand,
                            struct sk_xds_result *res)
{
    const struct rset *cur = &st->cur[SK_XDS_EDS];
    if (!st->pub || !st->pe_ok || !st->warm || !st->got[SK_XDS_EDS] || !st->hooks.publish ||
        cand->n != cur->n)
        return false;
    size_t nch = 0, nmap = 0;
    for (size_t i = 0; i < cand->n; i++) {
        if (cand->v[i] == cur->v[i])
            continue;
        if (strcmp(cand->v[i]->name, cur->v[i]->name) != 0)
            return false;
        if (res_same(cand->v[i], cur->v[i]))
            continue;
        size_t m = pe_count(st, cand->v[i]);
        if (m == 0)
            return false; /* not used by a published cluster: let the full path decide */
        nch++;
        nmap += m;
    }
    size_t budget = st->pub->nclusters / 8;
    if (budget < 64)
        budget = 64;
    if (nch == 0 || st->pub->nown_eps + nmap > budget)
        return false; /* the full build compacts the overrides */
    struct sk_snapshot *d = sk_snapshot_derive(st->pub, nmap);
    if (!d)
        return false;
    bool ok = true;
    /* the decoded ClusterLoadAssignments: scratch, off the heap the derived
     * snapshot grows on (one chunk reused: reset per resource) */
    struct sk_pbregion rg;
    sk_pbregion_init(&rg);
    for (size_t i = 0; ok && i < cand->n; i++) {
        if (cand->v[i] == cur->v[i] || res_same(cand->v[i], cur->v[i]))
            continue;
        const struct res *x = cand->v[i];
        sk_pbregion_reset(&rg);
        ProtobufCMessage *la = protobuf_c_message_unpack(
            types[SK_XDS_EDS].desc, sk_pbregion_allocator(&rg), x->len, x->bytes);
        if (!la) {
            ok = false;
            break;
        }
        struct sk_cfgerrs errs;
        sk_cfgerrs_init(&errs, "<xds>");
        for (size_t k = pe_first(st, x->nh); ok && k < st->npe && st->pe[k].h == x->nh; k++)
            if (pe_is(st, &st->pe[k], x))
                ok = sk_snapshot_derive_endpoints(d, st->pe[k].idx, (const void *)la, &errs) == 0;
        sk_cfgerrs_free(&errs); /* errors: the full path reports them per resource */
    }
    sk_pbregion_release(&rg);
    if (!ok) {
        sk_snapshot_unref(d);
        return false;
    }
    struct sk_snapshot *keep = sk_snapshot_ref(d);
    if (st->hooks.publish(st->hooks.arg, d) < 0) {
        sk_snapshot_unref(keep);
        sk_snapshot_unref(d);
        return false;
    }
    sk_snapshot_unref(st->pub);
    st->pub = keep; /* same cluster indices: the map stays valid */
    /* commit (as a full update does) */
    struct rset old = st->cur[SK_XDS_EDS];
    st->cur[SK_XDS_EDS] = *cand;
    memset(cand, 0, sizeof(*cand));
    double now = wall_now();
    struct vstr *ver = vstr_new(r->version_info);
    for (size_t i = 0; i < st->cur[SK_XDS_EDS].n; i++) {
        struct res *x = st->cur[SK_XDS_EDS].v[i];
        const struct res *o = old.v[i];
        if (res_same(o, x)) {
            if (o != x) {
                vstr_set(&x->version, o->version);
                x->updated = o->updated;
            }
        } else {
            vstr_set(&x->version, ver);
            x->updated = now;
        }
    }
    vstr_unref(ver);
    st->ts[SK_XDS_EDS].updated = now;
    rset_free(&old);
    forget_nacks(st);
    prune_rerrs(st, SK_XDS_EDS, &st->cur[SK_XDS_EDS], now);
    set_str(&st->version[SK_XDS_EDS], r->version_info);
    st->incremental++;
    res->rebuilt = true;
    res->published = true;
    res->incremental = true;
    return true;
}

void sk_xds_store_handle(struct sk_xds_store *st, const PbResponse *r, struct sk_xds_result *res)
{
    memset(res, 0, sizeof(*res));
    res->ack = true;
    int type = sk_xds_type_from_url(r->type_url);
    if (type < 0) {
        struct sbuf sb = {0};
        sb_add(&sb, "unsupported type_url '%.200s'", r->type_url ? r->type_url : "");
        nack(res, sb_take(&sb));
        return;
    }
    const ProtobufCMessageDescriptor *d = types[type].desc;

    /* 0. the same rejected resources again (servers that ignore NACKs resend
     * them at once): rejected again without decoding or building */
    uint64_t rhash = raw_hash(type, r);
    if (st->nack_msg[type] && st->nack_hash[type] == rhash) {
        nack(res, strdup(st->nack_msg[type]));
        record_nack(st, type, r, st->nack_msg[type]);
        res->unchanged = true;
        res->damped = true;
        return;
    }

    /* 1. decode every resource; a malformed response is rejected whole. What
     * is only looked at (Resource wrappers, ClusterLoadAssignments, EDS
     * clusters: kept as bytes) is decoded into a scratch region reset per
     * resource, off the heap the long-lived records are allocated on. */
    struct rset in = {0};
    struct sbuf perr = {0};
    struct sk_pbregion rg;
    sk_pbregion_init(&rg);
    ProtobufCAllocator *scratch = sk_pbregion_allocator(&rg);
    for (size_t i = 0; i < r->n_resources; i++) {
        sk_pbregion_reset(&rg);
        const PbAny *a = r->resources[i];
        Envoy__Service__Discovery__V3__Resource *wrap = NULL;
        if (a &&
            strcmp(any_type(a), envoy__service__discovery__v3__resource__descriptor.name) == 0) {
            wrap = envoy__service__discovery__v3__resource__unpack(scratch, a->value.len,
                                                                   a->value.data);
            if (!wrap) {
                sb_add(&perr, "%sresources[%zu]: cannot decode Resource", perr.len ? "; " : "", i);
                continue;
            }
            a = wrap->resource;
            if (!a) /* TTL heartbeat: nothing to update */
                continue;
        }
        struct res *same = NULL;
        if (!a || strcmp(any_type(a), d->name) != 0) {
            sb_add(&perr, "%sresources[%zu]: type '%.200s' does not match type_url",
                   perr.len ? "; " : "", i, a && a->type_url ? a->type_url : "");
        } else if ((same = same_as_current(&st->cur[type], a)) != NULL) {
            /* unchanged bytes: the resource we hold, not decoded again */
            if (rset_find(&in, same->name) >= 0)
                sb_add(&perr, "%s%s '%.200s': duplicate name in one response",
                       perr.len ? "; " : "", types[type].label, same->name);
            else if (is_named(type) && strv_find_sorted(&st->names[type], same->name) < 0)
                ; /* not subscribed (any more): ignore */
            else if (!rset_push(&in, same))
                sb_add(&perr, "%sout of memory", perr.len ? "; " : "");
        } else {
            /* kept decoded: LDS/RDS/SDS and non-EDS clusters (decoded again
             * on malloc below when a cluster turns out to be one) */
            bool keep = type != SK_XDS_EDS && type != SK_XDS_CDS;
            ProtobufCMessage *m = protobuf_c_message_unpack(d, keep ? NULL : scratch,
                                                            a->value.len, a->value.data);
            const char *name = m ? res_msg_name(type, m) : NULL;
            if (!m) {
                sb_add(&perr, "%sresources[%zu]: cannot decode %s", perr.len ? "; " : "", i,
                       d->name);
            } else if (empty(name)) {
                sb_add(&perr, "%sresources[%zu]: %s without a name", perr.len ? "; " : "", i,
                       types[type].label);
            } else if (rset_find(&in, name) >= 0) {
                sb_add(&perr, "%s%s '%.200s': duplicate name in one response", perr.len ? "; " : "",
                       types[type].label, name);
            } else if (is_named(type) && strv_find_sorted(&st->names[type], name) < 0) {
                /* not subscribed (any more): ignore */
            } else {
                size_t nl = strlen(name);
                struct res *x = calloc(1, sizeof(*x) + nl + 1 + a->value.len);
                if (x) {
                    x->name = (char *)(x + 1);
                    memcpy(x->name, name, nl + 1);
                    x->bytes = (uint8_t *)x->name + nl + 1;
                    x->nh = name_hash(x->name); /* before the push: it indexes it */
                }
                if (!x || !rset_push(&in, x)) {
                    free(x);
                    sb_add(&perr, "%sout of memory", perr.len ? "; " : "");
                } else {
                    if (a->value.len)
                        memcpy(x->bytes, a->value.data, a->value.len);
                    x->len = a->value.len;
                    x->hash = fnv1a(x->bytes, x->len);
                    /* ClusterLoadAssignments and EDS clusters are only ever used
                     * as fresh copies (the assembly rewrites them): keep their
                     * bytes only, not the unpacked tree (~2 KB per cluster) */
                    if (keep) {
                        x->msg = m;
                        m = NULL;
                    } else if (type == SK_XDS_CDS && !cluster_is_eds((const PbCluster *)m)) {
                        x->msg = protobuf_c_message_unpack(d, NULL, x->len, x->bytes);
                        if (!x->msg)
                            sb_add(&perr, "%sout of memory", perr.len ? "; " : "");
                    }
                    x->refs = 1; /* the set's */
                }
            }
            if (m && keep)
                protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    sk_pbregion_release(&rg);
    if (perr.len || perr.oom) {
        rset_free(&in);
        nack(res, sb_take(&perr));
        if (!perr.oom) {
            st->nack_hash[type] = rhash;
            set_str(&st->nack_msg[type], res->error);
        }
        record_nack(st, type, r, res->error);
        return;
    }
    free(perr.s);

    /* 2. the candidate set: full state for CDS/LDS, merged for RDS/EDS */
    struct rset cand = {0};
    if (type == SK_XDS_CDS || type == SK_XDS_LDS) {
        cand = in;
        memset(&in, 0, sizeof(in));
    } else {
        bool ok = rset_copy(&cand, &st->cur[type]);
        for (size_t i = 0; ok && i < in.n; i++) {
            long j = rset_find(&cand, in.v[i]->name);
            if (j >= 0) {
                res_unref(cand.v[j]);
                cand.v[j] = in.v[i];
                in.v[i]->refs++;
            } else {
                ok = rset_push(&cand, in.v[i]);
            }
        }
        rset_free(&in);
        if (!ok) {
            rset_free(&cand);
            nack(res, strdup("out of memory"));
            return;
        }
    }

    /* 3. identical to what we have: nothing to build */
    if (st->got[type] && rset_eq(&cand, &st->cur[type])) {
        prune_rerrs(st, type, &cand, -1); /* e.g. a rejected resource was withdrawn */
        rset_free(&cand);
        set_str(&st->version[type], r->version_info);
        res->unchanged = true;
        return;
    }
    /* 4. build with the candidate (EDS-only changes: derived from the published
     * snapshot) */
    if (type == SK_XDS_EDS && eds_incremental(st, r, &cand, res))
        return;
    const struct rset *sets[SK_XDS_NTYPES];
    current_sets(st, sets);
    sets[type] = &cand;
    struct rset resp; /* the resources of this response (for pruning error states) */
    if (!rset_copy(&resp, &cand))
        memset(&resp, 0, sizeof(resp));
    struct build b;
    try_build(st, sets, &b);
    res->rebuilt = true;
    char *partial = NULL;
    if (b.rc != 0) {
        bool *bad = calloc(cand.n + 1, sizeof(*bad));
        bool mapped = bad && map_errors(&b, type, &cand, &st->cur[type], bad);
        char *why = describe(&b, type, &cand);
        for (size_t i = 0; mapped && i < cand.n; i++)
            if (bad[i])
                set_rerr(st, type, cand.v[i]->name, r->version_info,
                         describe_one(&b, type, &cand, i));
        if (mapped) {
            /* per resource: revert the blamed ones to their previous version (or
             * drop them) and apply the rest */
            struct rset c2 = {0};
            bool ok = true;
            for (size_t i = 0; ok && i < cand.n; i++) {
                if (!bad[i]) {
                    ok = rset_push(&c2, cand.v[i]);
                } else {
                    res->rejected++;
                    long o = rset_find(&st->cur[type], cand.v[i]->name);
                    if (o >= 0)
                        ok = rset_push(&c2, st->cur[type].v[o]);
                }
            }
            struct build b2;
            sets[type] = &c2;
            if (ok && st->got[type] && rset_eq(&c2, &st->cur[type])) {
                ok = false; /* nothing valid left to apply: a plain NACK */
                res->rejected = 0;
            }
            if (ok && try_build(st, sets, &b2) == 0) {
                build_free(&b);
                b = b2;
                rset_free(&cand);
                cand = c2;
                partial = why;
                why = NULL;
            } else {
                if (ok)
                    build_free(&b2);
                rset_free(&c2);
                res->rejected = 0;
            }
        }
        free(bad);
        if (!partial) {
            sk_warn("xds: %s update (version '%s') rejected: %s", types[type].shortname,
                    r->version_info ? r->version_info : "", why ? why : "");
            st->nack_hash[type] = rhash;
            set_str(&st->nack_msg[type], why ? why : "rejected");
            record_nack(st, type, r, why);
            nack(res, why);
            prune_rerrs(st, type, &resp, -1);
            rset_free(&resp);
            build_free(&b);
            rset_free(&cand);
            return;
        }
    }

    /* 5. commit; publish if complete */
    struct rset old = st->cur[type];
    bool old_got = st->got[type];
    st->cur[type] = cand;
    st->got[type] = true;
    if (maybe_publish(st, &b, res) < 0) {
        st->cur[type] = old;
        st->got[type] = old_got;
        rset_free(&cand);
        build_free(&b);
        free(partial);
        char *m = strdup("the resulting config could not be applied (a listener could not be "
                         "bound, or shutting down; see the skiff log)");
        /* not cached for damping: the same resources may apply once the port is free */
        record_nack(st, type, r, m);
        nack(res, m);
        rset_free(&resp);
        return;
    }
    /* per resource: the version and time its current bytes were accepted */
    double now = wall_now();
    bool changed = !old_got || cand.n != old.n;
    struct vstr *ver = vstr_new(r->version_info);
    for (size_t i = 0; i < cand.n; i++) {
        struct res *x = cand.v[i];
        long o = rset_find_h(&old, x->name, x->nh);
        if (o >= 0 && res_same(old.v[o], x)) {
            if (old.v[o] != x) {
                vstr_set(&x->version, old.v[o]->version);
                x->updated = old.v[o]->updated;
            }
        } else {
            vstr_set(&x->version, ver);
            x->updated = now;
            changed = true;
        }
    }
    vstr_unref(ver);
    st->ts[type].updated = now;
    rset_free(&old);
    take_names(st, &b.a, res);
    build_free(&b);
    if (changed)
        forget_nacks(st);
    free(st->nack_msg[type]);
    st->nack_msg[type] = NULL;
    prune_rerrs(st, type, &resp, now);
    rset_free(&resp);
    if (partial) {
        record_nack(st, type, r, partial);
        sk_warn("xds: %s update (version '%s'): %zu resource(s) rejected, the rest applied: %s",
                types[type].shortname, r->version_info ? r->version_info : "", res->rejected,
                partial);
        st->nack_hash[type] = rhash;
        set_str(&st->nack_msg[type], partial);
        nack(res, partial);
    } else {
        set_str(&st->version[type], r->version_info);
    }
}

int sk_xds_store_set_bootstrap(struct sk_xds_store *st, PbBootstrap *bs, struct sk_cfgerrs *errs)
{
    PbBootstrap *old = st->bs;
    st->bs = bs;
    const struct rset *sets[SK_XDS_NTYPES];
    current_sets(st, sets);
    struct build b;
    if (try_build(st, sets, &b) != 0) {
        for (size_t i = 0; errs && i < b.errs.n; i++)
            sk_cfgerrs_add(errs, b.errs.v[i].path, "%s", b.errs.v[i].msg);
        build_free(&b);
        st->bs = old;
        protobuf_c_message_free_unpacked(&bs->base, NULL);
        return SK_ERR_CONFIG;
    }
    if (maybe_publish(st, &b, NULL) < 0) {
        if (errs)
            sk_cfgerrs_add(errs, "", "the listeners could not be bound");
        build_free(&b);
        st->bs = old;
        protobuf_c_message_free_unpacked(&bs->base, NULL);
        return SK_ERR_IO;
    }
    take_names(st, &b.a, NULL);
    build_free(&b);
    protobuf_c_message_free_unpacked(&old->base, NULL);
    forget_nacks(st);
    return 0;
}

/* ---- initial fetch timeouts / does-not-exist ------------------------------------------- */

static int64_t wild_timeout_ms(const struct sk_xds_store *st, int type)
{
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *d = st->bs->dynamic_resources;
    if (!d)
        return DEFAULT_FETCH_TIMEOUT_MS;
    return fetch_timeout_ms(type == SK_XDS_CDS ? d->cds_config : d->lds_config);
}

void sk_xds_store_arm(struct sk_xds_store *st, double now)
{
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        struct tstate *ts = &st->ts[t];
        if (t == SK_XDS_CDS || t == SK_XDS_LDS) {
            if (ts->wild_deadline != 0 || st->got[t] || !sk_xds_store_wants(st, t))
                continue;
            int64_t ms = wild_timeout_ms(st, t);
            ts->wild_deadline = ms > 0 ? now + (double)ms / 1000.0 : -1;
            continue;
        }
        if (!ts->deadline)
            continue;
        for (size_t i = 0; i < st->names[t].n; i++) {
            if (ts->deadline[i] != 0 || ts->dne[i])
                continue;
            int64_t ms = st->names[t].ms[i];
            if (rset_find(&st->cur[t], st->names[t].v[i]) >= 0 || ms <= 0)
                ts->deadline[i] = -1; /* nothing to wait for */
            else
                ts->deadline[i] = now + (double)ms / 1000.0;
        }
    }
}

void sk_xds_store_disarm(struct sk_xds_store *st)
{
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        struct tstate *ts = &st->ts[t];
        if (ts->wild_deadline > 0)
            ts->wild_deadline = 0;
        for (size_t i = 0; ts->deadline && i < st->names[t].n; i++)
            if (ts->deadline[i] > 0)
                ts->deadline[i] = 0;
    }
}

double sk_xds_store_next_deadline(const struct sk_xds_store *st)
{
    double best = 0;
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        const struct tstate *ts = &st->ts[t];
        if (ts->wild_deadline > 0 && (best == 0 || ts->wild_deadline < best))
            best = ts->wild_deadline;
        for (size_t i = 0; ts->deadline && i < st->names[t].n; i++)
            if (ts->deadline[i] > 0 && (best == 0 || ts->deadline[i] < best))
                best = ts->deadline[i];
    }
    return best;
}

size_t sk_xds_store_expire(struct sk_xds_store *st, double now, struct sk_xds_result *res)
{
    memset(res, 0, sizeof(*res));
    res->ack = true;
    size_t expired = 0;
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        struct tstate *ts = &st->ts[t];
        if (ts->wild_deadline > 0 && now >= ts->wild_deadline) {
            ts->wild_deadline = -1;
            if (!st->got[t]) {
                st->got[t] = true; /* proceed as if the answer were empty */
                ts->wild_timed_out = true;
                ts->init_fetch_timeouts++;
                expired++;
                sk_warn("xds: no %s response within initial_fetch_timeout (%.1fs): proceeding "
                        "without %s resources",
                        types[t].shortname, (double)wild_timeout_ms(st, t) / 1000.0,
                        types[t].label);
            }
        }
        for (size_t i = 0; ts->deadline && i < st->names[t].n; i++) {
            if (ts->deadline[i] <= 0 || now < ts->deadline[i])
                continue;
            ts->deadline[i] = -1;
            if (rset_find(&st->cur[t], st->names[t].v[i]) >= 0)
                continue;
            ts->dne[i] = true;
            ts->init_fetch_timeouts++;
            expired++;
            sk_warn("xds: %s '%s' not received within initial_fetch_timeout (%.1fs): treated as "
                    "does-not-exist (%s)",
                    types[t].label, st->names[t].v[i], (double)st->names[t].ms[i] / 1000.0,
                    t == SK_XDS_RDS   ? "no routes: 404 NR"
                    : t == SK_XDS_EDS ? "no endpoints: 503 UH"
                                      : "its listeners/clusters stay inactive");
        }
    }
    if (!expired)
        return 0;
    forget_nacks(st);
    const struct rset *sets[SK_XDS_NTYPES];
    current_sets(st, sets);
    struct build b;
    if (try_build(st, sets, &b) != 0) {
        /* cannot happen with accepted resources; keep serving what we have */
        sk_error("xds: rebuild after an initial fetch timeout failed: %s",
                 b.errs.n ? b.errs.v[0].msg : "?");
        build_free(&b);
        return expired;
    }
    res->rebuilt = true;
    if (maybe_publish(st, &b, res) < 0)
        sk_error("xds: the config after an initial fetch timeout could not be applied");
    else
        take_names(st, &b.a, res);
    build_free(&b);
    return expired;
}

uint64_t sk_xds_store_init_fetch_timeouts(const struct sk_xds_store *st, int type)
{
    return type >= 0 && type < SK_XDS_NTYPES ? st->ts[type].init_fetch_timeouts : 0;
}

bool sk_xds_store_does_not_exist(const struct sk_xds_store *st, int type, const char *name)
{
    if (type < 0 || type >= SK_XDS_NTYPES)
        return false;
    return is_dne(st, type, name) && rset_find(&st->cur[type], name) < 0;
}

/* ---- /config_dump ---------------------------------------------------------------------- */

static void j_str(struct sk_buf *b, const char *s)
{
    sk_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            sk_buf_appendf(b, "\\%c", *p);
        else if (*p < 0x20)
            sk_buf_appendf(b, "\\u%04x", *p);
        else
            sk_buf_append(b, p, 1);
    }
    sk_buf_append(b, "\"", 1);
}

/* RFC 3339 UTC with milliseconds (Envoy's Timestamp JSON), or null. */
static void j_time(struct sk_buf *b, double t)
{
    if (t <= 0) {
        sk_buf_appendf(b, "null");
        return;
    }
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    sk_buf_appendf(b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"", tm.tm_year + 1900, tm.tm_mon + 1,
                   tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)((t - (double)s) * 1000));
}

static const struct rerr *find_rerr(const struct tstate *ts, const char *name)
{
    for (size_t i = 0; i < ts->nerrs; i++)
        if (strcmp(ts->errs[i].name, name) == 0)
            return &ts->errs[i];
    return NULL;
}

static void j_rerr(struct sk_buf *b, const struct rerr *e)
{
    sk_buf_appendf(b, "{\"failed_configuration_version\": ");
    j_str(b, e->version);
    sk_buf_appendf(b, ", \"last_update_attempt\": ");
    j_time(b, e->time);
    sk_buf_appendf(b, ", \"details\": ");
    j_str(b, e->details);
    sk_buf_appendf(b, "}");
}

void sk_xds_store_dump(const struct sk_xds_store *st, struct sk_buf *b)
{
    sk_buf_appendf(b, "[");
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        const struct tstate *ts = &st->ts[t];
        bool wild = t == SK_XDS_CDS || t == SK_XDS_LDS;
        sk_buf_appendf(b, "%s\n  {\"type\": \"%s\", \"type_url\": ", t ? "," : "",
                       types[t].shortname);
        j_str(b, types[t].url);
        sk_buf_appendf(b, ", \"subscribed\": %s, \"version_info\": ",
                       sk_xds_store_wants(st, t) ? "true" : "false");
        j_str(b, st->version[t]);
        sk_buf_appendf(b, ", \"last_updated\": ");
        j_time(b, ts->updated);
        sk_buf_appendf(b, ", \"init_fetch_timeouts\": %llu",
                       (unsigned long long)ts->init_fetch_timeouts);
        if (wild)
            sk_buf_appendf(b, ", \"initial_fetch_timed_out\": %s",
                           ts->wild_timed_out ? "true" : "false");
        sk_buf_appendf(b, ", \"last_nack\": ");
        if (ts->nack_details) {
            sk_buf_appendf(b, "{\"version_info\": ");
            j_str(b, ts->nack_version);
            sk_buf_appendf(b, ", \"nonce\": ");
            j_str(b, ts->nack_nonce);
            sk_buf_appendf(b, ", \"time\": ");
            j_time(b, ts->nack_time);
            sk_buf_appendf(b, ", \"details\": ");
            j_str(b, ts->nack_details);
            sk_buf_appendf(b, "}");
        } else {
            sk_buf_appendf(b, "null");
        }
        sk_buf_appendf(b, ",\n   \"resources\": [");
        for (size_t i = 0; i < st->cur[t].n; i++) {
            const struct res *x = st->cur[t].v[i];
            sk_buf_appendf(b, "%s\n    {\"name\": ", i ? "," : "");
            j_str(b, x->name);
            sk_buf_appendf(b, ", \"version_info\": ");
            j_str(b, x->version ? x->version->s : NULL);
            sk_buf_appendf(b, ", \"last_updated\": ");
            j_time(b, x->updated);
            const struct rerr *e = find_rerr(ts, x->name);
            if (e) {
                sk_buf_appendf(b, ", \"error_state\": ");
                j_rerr(b, e);
            }
            sk_buf_appendf(b, "}");
        }
        sk_buf_appendf(b, "],\n   \"rejected\": [");
        bool first = true;
        for (size_t i = 0; i < ts->nerrs; i++) {
            if (rset_find(&st->cur[t], ts->errs[i].name) >= 0)
                continue;
            sk_buf_appendf(b, "%s{\"name\": ", first ? "" : ", ");
            j_str(b, ts->errs[i].name);
            sk_buf_appendf(b, ", \"error_state\": ");
            j_rerr(b, &ts->errs[i]);
            sk_buf_appendf(b, "}");
            first = false;
        }
        sk_buf_appendf(b, "]");
        if (!wild) {
            /* names subscribed but not (yet) received */
            sk_buf_appendf(b, ", \"waiting\": [");
            first = true;
            for (size_t i = 0; i < st->names[t].n; i++) {
                const char *n = st->names[t].v[i];
                if (rset_find(&st->cur[t], n) >= 0 || (ts->dne && ts->dne[i]))
                    continue;
                sk_buf_appendf(b, "%s", first ? "" : ", ");
                j_str(b, n);
                first = false;
            }
            sk_buf_appendf(b, "], \"does_not_exist\": [");
            first = true;
            for (size_t i = 0; i < st->names[t].n; i++) {
                const char *n = st->names[t].v[i];
                if (rset_find(&st->cur[t], n) >= 0 || !ts->dne || !ts->dne[i])
                    continue;
                sk_buf_appendf(b, "%s", first ? "" : ", ");
                j_str(b, n);
                first = false;
            }
            sk_buf_appendf(b, "]");
        }
        sk_buf_appendf(b, "}");
    }
    sk_buf_appendf(b, "]");
}
