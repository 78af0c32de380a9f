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
 * Warming: a listener whose RDS config has not arrived and an EDS cluster
 * whose ClusterLoadAssignment has not arrived are left out of the assembly;
 * the first snapshot is published only once nothing is missing and every
 * subscribed wildcard type (CDS, LDS) has been answered. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/translate.h"
#include "skiff/xds.h"

#include "envoy.config.bootstrap.v3.pb-c.h"
#include "envoy.config.cluster.v3.pb-c.h"
#include "envoy.config.endpoint.v3.pb-c.h"
#include "envoy.config.listener.v3.pb-c.h"
#include "envoy.config.route.v3.pb-c.h"
#include "envoy.extensions.filters.network.http_connection_manager.v3.pb-c.h"
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
};

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
    size_t n, cap;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool strv_has(const struct strv *s, const char *x)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], x) == 0)
            return true;
    return false;
}

/* Adds a copy unless present; false on allocation failure. */
static bool strv_add(struct strv *s, const char *x)
{
    if (strv_has(s, x))
        return true;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        char **p = realloc(s->v, nc * sizeof(*p));
        if (!p)
            return false;
        s->v = p;
        s->cap = nc;
    }
    char *d = strdup(x);
    if (!d)
        return false;
    s->v[s->n++] = d;
    return true;
}

static void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof(*s));
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

struct res {
    int refs;
    char *name;
    uint64_t hash; /* FNV-1a over bytes */
    uint8_t *bytes;
    size_t len;
    ProtobufCMessage *msg; /* unpacked bytes (default allocator) */
};

struct rset {
    struct res **v;
    size_t n;
};

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void res_unref(struct res *r)
{
    if (!r || --r->refs > 0)
        return;
    if (r->msg)
        protobuf_c_message_free_unpacked(r->msg, NULL);
    free(r->name);
    free(r->bytes);
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
    s->v = NULL;
    s->n = 0;
}

static long rset_find(const struct rset *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i]->name, name) == 0)
            return (long)i;
    return -1;
}

static bool rset_push(struct rset *s, struct res *r)
{
    struct res **p = realloc(s->v, (s->n + 1) * sizeof(*p));
    if (!p)
        return false;
    s->v = p;
    s->v[s->n++] = r;
    r->refs++;
    return true;
}

static bool rset_copy(struct rset *dst, const struct rset *src)
{
    memset(dst, 0, sizeof(*dst));
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
        long j = rset_find(b, a->v[i]->name);
        if (j < 0 || !res_same(a->v[i], b->v[j]))
            return false;
    }
    return true;
}

/* ---- the store ------------------------------------------------------------------------ */

struct sk_xds_store {
    PbBootstrap *bs;
    struct sk_xds_hooks hooks;
    struct rset cur[SK_XDS_NTYPES];
    char *version[SK_XDS_NTYPES];
    bool got[SK_XDS_NTYPES];
    struct strv names[SK_XDS_NTYPES]; /* RDS/EDS subscriptions, sorted */
    struct rset active;               /* the listeners of the last published snapshot */
    bool warm;
    uint64_t builds;
    /* NACK damping: a re-sent rejected response is rejected again without a build */
    uint64_t nack_hash[SK_XDS_NTYPES];
    char *nack_msg[SK_XDS_NTYPES];
};

/* ---- assembly ------------------------------------------------------------------------- */

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
};

struct asmb {
    PbBootstrap bs;
    PbStatic sr;
    PbListener **ls;
    PbCluster **cs;
    struct lmap *lm;
    struct cmap *cm;
    size_t nl, nc;
    ProtobufCMessage **owned; /* modified copies, freed with the assembly */
    size_t nowned, cowned;
    struct strv rds_names, eds_names;
    size_t missing;       /* listeners / clusters whose RDS / EDS has not arrived */
    size_t held;          /* listeners among them, included with an empty route config */
    bool validate;        /* include warming listeners (validation-only assembly) */
    struct rset used_lds; /* LDS resources in the assembly (the active set once published) */
    bool oom;
};

static void asm_free(struct asmb *a)
{
    for (size_t i = 0; i < a->nowned; i++)
        protobuf_c_message_free_unpacked(a->owned[i], NULL);
    free(a->owned);
    for (size_t i = 0; i < a->nl; i++)
        free(a->lm[i].rds);
    free(a->ls);
    free(a->cs);
    free(a->lm);
    free(a->cm);
    strv_free(&a->rds_names);
    strv_free(&a->eds_names);
    rset_free(&a->used_lds);
    memset(a, 0, sizeof(*a));
}

static bool asm_own(struct asmb *a, ProtobufCMessage *m)
{
    if (a->nowned == a->cowned) {
        size_t nc = a->cowned ? a->cowned * 2 : 16;
        ProtobufCMessage **p = realloc(a->owned, nc * sizeof(*p));
        if (!p)
            return false;
        a->owned = p;
        a->cowned = nc;
    }
    a->owned[a->nowned++] = m;
    return true;
}

/* A deep copy through the wire format (default allocator, freeable piecewise). */
static ProtobufCMessage *clone_bytes(const ProtobufCMessageDescriptor *d, const uint8_t *b,
                                     size_t len)
{
    return protobuf_c_message_unpack(d, NULL, len, b);
}

static ProtobufCMessage *clone_msg(const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(n ? n : 1);
    if (!b)
        return NULL;
    protobuf_c_message_pack(m, b);
    ProtobufCMessage *c = protobuf_c_message_unpack(m->descriptor, NULL, n, b);
    free(b);
    return c;
}

static const ProtobufCMessageDescriptor *hcm_desc(void)
{
    return &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor;
}

/* Calls fn for every HCM typed_config of the listener (filter chains and the
 * default chain) with its unpacked HCM when the HCM uses rds. */
typedef bool (*hcm_fn)(void *arg, PbAny *any, PbHcm *h);

static bool chain_each_rds(PbFilterChain *fc, hcm_fn fn, void *arg)
{
    if (!fc)
        return true;
    for (size_t i = 0; i < fc->n_filters; i++) {
        Envoy__Config__Listener__V3__Filter *f = fc->filters[i];
        if (f->config_type_case != ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG ||
            !f->typed_config || strcmp(any_type(f->typed_config), hcm_desc()->name) != 0)
            continue;
        PbHcm *h = (PbHcm *)protobuf_c_message_unpack(hcm_desc(), NULL, f->typed_config->value.len,
                                                      f->typed_config->value.data);
        if (!h)
            continue; /* translate reports it */
        bool ok = true;
        if (h->route_specifier_case ==
                ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS &&
            h->rds && !empty(h->rds->route_config_name))
            ok = fn(arg, f->typed_config, h);
        protobuf_c_message_free_unpacked(&h->base, NULL);
        if (!ok)
            return false;
    }
    return true;
}

static bool listener_each_rds(PbListener *l, hcm_fn fn, void *arg)
{
    for (size_t i = 0; i < l->n_filter_chains; i++)
        if (!chain_each_rds(l->filter_chains[i], fn, arg))
            return false;
    return chain_each_rds(l->default_filter_chain, fn, arg);
}

struct rds_scan {
    struct asmb *a;
    const struct rset *rds;
    size_t n, missing;
};

static bool scan_rds(void *arg, PbAny *any, PbHcm *h)
{
    struct rds_scan *s = arg;
    if (!strv_add(&s->a->rds_names, h->rds->route_config_name))
        s->a->oom = true;
    s->n++;
    if (rset_find(s->rds, h->rds->route_config_name) < 0)
        s->missing++;
    return true;
}

struct rds_inline {
    struct asmb *a;
    struct lmap *lm;
    const struct rset *rds;
};

/* Replaces the Any's bytes by the HCM with route_config = the RDS resource. */
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
    uint8_t *b = malloc(n ? n : 1);
    if (b)
        protobuf_c_message_pack(&h->base, b);
    /* hand the borrowed RouteConfiguration back before h is freed */
    h->route_specifier_case =
        ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS;
    h->rds = saved;
    if (!b)
        return false;
    free(any->value.data);
    any->value.data = b;
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

/* Adds one listener (static: lres NULL) to the assembly. */
static void asm_listener(struct asmb *a, PbListener *l, const struct res *lres, size_t idx,
                         const struct rset *rds)
{
    struct rds_scan sc = {a, rds, 0, 0};
    listener_each_rds(l, scan_rds, &sc);
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
    if (sc.n) {
        ProtobufCMessage *c =
            lres ? clone_bytes(l->base.descriptor, lres->bytes, lres->len) : clone_msg(&l->base);
        if (!c || !asm_own(a, c)) {
            if (c)
                protobuf_c_message_free_unpacked(c, NULL);
            a->oom = true;
            return;
        }
        use = (PbListener *)c;
        struct rds_inline in = {a, m, rds};
        if (!listener_each_rds(use, inline_rds, &in)) {
            a->oom = true;
            free(m->rds);
            return;
        }
    }
    if (lres && !rset_push(&a->used_lds, (struct res *)lres))
        a->oom = true;
    a->ls[a->nl++] = use;
}

struct rds_ready {
    const struct rset *rds;
    size_t missing;
    struct strv *names;
    bool oom;
};

static bool ready_rds(void *arg, PbAny *any, PbHcm *h)
{
    struct rds_ready *s = arg;
    if (rset_find(s->rds, h->rds->route_config_name) < 0)
        s->missing++;
    if (s->names && !strv_add(s->names, h->rds->route_config_name))
        s->oom = true;
    return true;
}

/* RDS configs the listener still waits for; their names are added to `names`. */
static size_t listener_missing(PbListener *l, const struct rset *rds, struct strv *names, bool *oom)
{
    struct rds_ready s = {rds, 0, names, false};
    listener_each_rds(l, ready_rds, &s);
    if (s.oom)
        *oom = true;
    return s.missing;
}

static void asm_cluster(struct asmb *a, PbCluster *c, const struct res *cres, size_t idx,
                        const struct rset *eds)
{
    struct cmap *m = &a->cm[a->nc];
    m->dynamic = cres != NULL;
    m->idx = idx;
    m->eds = -1;
    PbCluster *use = c;
    if (cluster_is_eds(c)) {
        const char *sn = cluster_eds_name(c);
        if (!strv_add(&a->eds_names, sn))
            a->oom = true;
        /* warming (no ClusterLoadAssignment yet): no endpoints, so requests
         * routed to it get a 503 until EDS delivers them */
        long j = rset_find(eds, sn);
        if (j < 0)
            a->missing++;
        ProtobufCMessage *cp =
            cres ? clone_bytes(c->base.descriptor, cres->bytes, cres->len) : clone_msg(&c->base);
        ProtobufCMessage *la =
            j >= 0 ? clone_bytes(eds->v[j]->msg->descriptor, eds->v[j]->bytes, eds->v[j]->len)
                   : NULL;
        if (!cp || (j >= 0 && !la) || !asm_own(a, cp)) {
            if (cp)
                protobuf_c_message_free_unpacked(cp, NULL);
            if (la)
                protobuf_c_message_free_unpacked(la, NULL);
            a->oom = true;
            return;
        }
        use = (PbCluster *)cp;
        if (use->load_assignment)
            protobuf_c_message_free_unpacked(&use->load_assignment->base, NULL);
        use->load_assignment = (PbCla *)la;
        if (use->eds_cluster_config)
            protobuf_c_message_free_unpacked(&use->eds_cluster_config->base, NULL);
        use->eds_cluster_config = NULL;
        use->type = ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC;
        m->eds = j;
    }
    a->cs[a->nc++] = use;
}

/* Builds the assembly from the store's bootstrap and the given sets (one per
 * type). Returns false on allocation failure. */
static bool assemble(const struct sk_xds_store *st, const struct rset *const sets[SK_XDS_NTYPES],
                     bool validate, struct asmb *a)
{
    memset(a, 0, sizeof(*a));
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
        asm_cluster(a, sr0->clusters[i], NULL, 0, sets[SK_XDS_EDS]);
    for (size_t i = 0; i < sets[SK_XDS_CDS]->n; i++) {
        struct res *r = sets[SK_XDS_CDS]->v[i];
        asm_cluster(a, (PbCluster *)r->msg, r, i, sets[SK_XDS_EDS]);
    }
    for (size_t i = 0; i < nsl; i++)
        asm_listener(a, sr0->listeners[i], NULL, 0, sets[SK_XDS_RDS]);
    for (size_t i = 0; i < sets[SK_XDS_LDS]->n; i++) {
        struct res *r = sets[SK_XDS_LDS]->v[i];
        /* a changed listener waiting for new RDS configs: the version in service
         * keeps serving meanwhile (its routes stay subscribed) */
        long k = rset_find(&st->active, r->name);
        struct res *prev = k >= 0 && !res_same(st->active.v[k], r) ? st->active.v[k] : NULL;
        if (prev && listener_missing((PbListener *)r->msg, sets[SK_XDS_RDS], NULL, &a->oom) &&
            listener_missing((PbListener *)prev->msg, sets[SK_XDS_RDS], &a->rds_names, &a->oom) ==
                0 &&
            !a->validate) {
            a->missing++; /* the new version is still incomplete */
            asm_listener(a, (PbListener *)prev->msg, prev, i, sets[SK_XDS_RDS]);
            continue;
        }
        asm_listener(a, (PbListener *)r->msg, r, i, sets[SK_XDS_RDS]);
    }
    a->sr.listeners = a->ls;
    a->sr.n_listeners = a->nl;
    a->sr.clusters = a->cs;
    a->sr.n_clusters = a->nc;
    if (a->rds_names.n)
        qsort(a->rds_names.v, a->rds_names.n, sizeof(char *), cmp_str);
    if (a->eds_names.n)
        qsort(a->eds_names.v, a->eds_names.n, sizeof(char *), cmp_str);
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
    asm_free(&b->a);
    rset_free(&b->used);
    sk_cfgerrs_free(&b->errs);
    if (b->snap)
        sk_snapshot_unref(b->snap);
    b->snap = NULL;
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
        return st->names[type].n > 0;
    }
    return false;
}

/* Takes the assembly's RDS/EDS names as the subscriptions; drops cached
 * resources nobody references any more. */
static void take_names(struct sk_xds_store *st, struct asmb *a, struct sk_xds_result *res)
{
    struct strv *nn[SK_XDS_NTYPES] = {[SK_XDS_RDS] = &a->rds_names, [SK_XDS_EDS] = &a->eds_names};
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        if (!nn[t])
            continue;
        if (!strv_eq(&st->names[t], nn[t]) && res)
            res->names_changed[t] = true;
        strv_free(&st->names[t]);
        st->names[t] = *nn[t];
        memset(nn[t], 0, sizeof(*nn[t]));
        struct rset *s = &st->cur[t];
        size_t k = 0;
        for (size_t i = 0; i < s->n; i++) {
            if (strv_has(&st->names[t], s->v[i]->name))
                s->v[k++] = s->v[i];
            else
                res_unref(s->v[i]);
        }
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
    }
    rset_free(&st->active);
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
    if (type != SK_XDS_RDS && type != SK_XDS_EDS) {
        *names = NULL;
        return 0;
    }
    *names = (const char *const *)st->names[type].v;
    return st->names[type].n;
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

/* Publishes b->snap if the config is (now) complete. Returns < 0 if the
 * publish hook refused it. */
static int maybe_publish(struct sk_xds_store *st, struct build *b, struct sk_xds_result *res)
{
    if (!st->warm && !is_complete(st, &b->a))
        return 0; /* still warming: validated only */
    if (st->hooks.publish) {
        if (st->hooks.publish(st->hooks.arg, b->snap) < 0)
            return SK_ERR_IO;
        b->snap = NULL; /* the hook took the reference */
        if (res)
            res->published = true;
    }
    rset_free(&st->active);
    st->active = b->used;
    memset(&b->used, 0, sizeof(b->used));
    st->warm = true;
    return 0;
}

static void nack(struct sk_xds_result *res, char *msg)
{
    res->ack = false;
    free(res->error);
    res->error = msg ? msg : strdup("out of memory");
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

    /* 1. decode every resource; a malformed response is rejected whole */
    struct rset in = {0};
    struct sbuf perr = {0};
    uint64_t rhash = 1469598103934665603ull ^ (uint64_t)type;
    for (size_t i = 0; i < r->n_resources; i++) {
        const PbAny *a = r->resources[i];
        Envoy__Service__Discovery__V3__Resource *wrap = NULL;
        if (a &&
            strcmp(any_type(a), envoy__service__discovery__v3__resource__descriptor.name) == 0) {
            wrap =
                envoy__service__discovery__v3__resource__unpack(NULL, a->value.len, a->value.data);
            if (!wrap) {
                sb_add(&perr, "%sresources[%zu]: cannot decode Resource", perr.len ? "; " : "", i);
                continue;
            }
            a = wrap->resource;
            if (!a) { /* TTL heartbeat: nothing to update */
                envoy__service__discovery__v3__resource__free_unpacked(wrap, NULL);
                continue;
            }
        }
        if (!a || strcmp(any_type(a), d->name) != 0) {
            sb_add(&perr, "%sresources[%zu]: type '%.200s' does not match type_url",
                   perr.len ? "; " : "", i, a && a->type_url ? a->type_url : "");
        } else {
            rhash = (rhash ^ fnv1a(a->value.data, a->value.len)) * 1099511628211ull;
            ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, a->value.len, a->value.data);
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
            } else if ((type == SK_XDS_RDS || type == SK_XDS_EDS) &&
                       !strv_has(&st->names[type], name)) {
                /* not subscribed (any more): ignore */
            } else {
                struct res *x = calloc(1, sizeof(*x));
                if (x) {
                    x->name = strdup(name);
                    x->bytes = malloc(a->value.len ? a->value.len : 1);
                }
                if (!x || !x->name || !x->bytes || !rset_push(&in, x)) {
                    if (x) {
                        free(x->name);
                        free(x->bytes);
                        free(x);
                    }
                    sb_add(&perr, "%sout of memory", perr.len ? "; " : "");
                } else {
                    if (a->value.len)
                        memcpy(x->bytes, a->value.data, a->value.len);
                    x->len = a->value.len;
                    x->hash = fnv1a(x->bytes, x->len);
                    x->msg = m;
                    m = NULL;
                    x->refs = 1; /* the set's */
                }
            }
            if (m)
                protobuf_c_message_free_unpacked(m, NULL);
        }
        if (wrap)
            envoy__service__discovery__v3__resource__free_unpacked(wrap, NULL);
    }
    if (perr.len || perr.oom) {
        rset_free(&in);
        nack(res, sb_take(&perr));
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
        rset_free(&cand);
        set_str(&st->version[type], r->version_info);
        res->unchanged = true;
        return;
    }
    /* the same rejected response again (servers that ignore NACKs resend it) */
    if (st->nack_msg[type] && st->nack_hash[type] == rhash) {
        rset_free(&cand);
        nack(res, strdup(st->nack_msg[type]));
        res->unchanged = true;
        return;
    }

    /* 4. build with the candidate */
    const struct rset *sets[SK_XDS_NTYPES];
    current_sets(st, sets);
    sets[type] = &cand;
    struct build b;
    try_build(st, sets, &b);
    res->rebuilt = true;
    char *partial = NULL;
    if (b.rc != 0) {
        bool *bad = calloc(cand.n + 1, sizeof(*bad));
        bool mapped = bad && map_errors(&b, type, &cand, &st->cur[type], bad);
        char *why = describe(&b, type, &cand);
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
            nack(res, why);
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
        st->nack_hash[type] = rhash;
        set_str(&st->nack_msg[type], m ? m : "rejected");
        nack(res, m);
        return;
    }
    rset_free(&old);
    take_names(st, &b.a, res);
    build_free(&b);
    free(st->nack_msg[type]);
    st->nack_msg[type] = NULL;
    if (partial) {
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
    return 0;
}
