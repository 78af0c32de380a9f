/* The ONE translate + validate step: Bootstrap protobuf-c message -> immutable
 * sk_snapshot (see include/skiff/translate.h and include/skiff/model.h).
 *
 * Rules of the road:
 *  - Every problem is reported (sk_cfgerrs_add) with the proto-JSON path of the
 *    offending field, and translation carries on so one run shows them all.
 *    Only a run with zero errors yields a snapshot.
 *  - typed_config is dispatched on the Any type URL (part after the last '/'),
 *    never on the `name` field.
 *  - A field we parse but do not implement, and whose being ignored would change
 *    behaviour, is an error ("... is not supported by skiff") rather than
 *    silently dropped; purely descriptive ones (metadata, access_log, stat
 *    names, decorators) are accepted and ignored.
 *  - Everything the snapshot points to lives in one arena; unpacked Any
 *    messages are freed as soon as they are translated.
 */
#include "skiff/translate.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "skiff/err.h"
#include "skiff/fault.h"
#include "skiff/log.h"
#include "skiff/rbac.h"
#include "skiff/toxics.h"

#include "envoy.config.accesslog.v3.pb-c.h"
#include "envoy.extensions.access_loggers.file.v3.pb-c.h"
#include "envoy.extensions.access_loggers.stream.v3.pb-c.h"
#include "envoy.config.bootstrap.v3.pb-c.h"
#include "envoy.config.cluster.v3.pb-c.h"
#include "envoy.config.core.v3.pb-c.h"
#include "envoy.config.endpoint.v3.pb-c.h"
#include "envoy.config.listener.v3.pb-c.h"
#include "envoy.config.route.v3.pb-c.h"
#include "envoy.config.rbac.v3.pb-c.h"
#include "envoy.extensions.filters.http.fault.v3.pb-c.h"
#include "envoy.extensions.filters.http.rbac.v3.pb-c.h"
#include "envoy.extensions.filters.http.router.v3.pb-c.h"
#include "envoy.extensions.filters.listener.http_inspector.v3.pb-c.h"
#include "envoy.extensions.filters.listener.original_dst.v3.pb-c.h"
#include "envoy.extensions.filters.listener.tls_inspector.v3.pb-c.h"
#include "envoy.extensions.filters.network.http_connection_manager.v3.pb-c.h"
#include "envoy.extensions.filters.network.tcp_proxy.v3.pb-c.h"
#include "envoy.extensions.load_balancing_policies.least_request.v3.pb-c.h"
#include "envoy.extensions.load_balancing_policies.maglev.v3.pb-c.h"
#include "envoy.extensions.load_balancing_policies.random.v3.pb-c.h"
#include "envoy.extensions.load_balancing_policies.ring_hash.v3.pb-c.h"
#include "envoy.extensions.load_balancing_policies.round_robin.v3.pb-c.h"
#include "envoy.extensions.retry.host.previous_hosts.v3.pb-c.h"
#include "envoy.extensions.transport_sockets.raw_buffer.v3.pb-c.h"
#include "envoy.extensions.transport_sockets.tls.v3.pb-c.h"
#include "envoy.extensions.upstreams.http.v3.pb-c.h"
#include "google.protobuf.pb-c.h"
#include "skiff.lb.v1.pb-c.h"
#include "skiff.toxics.v1.pb-c.h"
#include "udpa.type.v1.pb-c.h"
#include "xds.type.v3.pb-c.h"

/* Short local names for the generated types. */
typedef Google__Protobuf__Any PbAny;
typedef Google__Protobuf__Duration PbDuration;
typedef Google__Protobuf__UInt32Value PbU32;
typedef Google__Protobuf__UInt64Value PbU64;
typedef Google__Protobuf__BoolValue PbBool;
typedef Envoy__Config__Bootstrap__V3__Bootstrap PbBootstrap;
typedef Envoy__Config__Core__V3__Address PbAddress;
typedef Envoy__Config__Core__V3__SocketAddress PbSocketAddress;
typedef Envoy__Config__Core__V3__ConfigSource PbConfigSource;
typedef Envoy__Config__Core__V3__HeaderValueOption PbHeaderValueOption;
typedef Envoy__Config__Core__V3__HttpProtocolOptions PbHttpProtocolOptions;
typedef Envoy__Config__Core__V3__Http1ProtocolOptions PbHttp1Options;
typedef Envoy__Config__Core__V3__Http2ProtocolOptions PbHttp2Options;
typedef Envoy__Config__Core__V3__TransportSocket PbTransportSocket;
typedef Envoy__Config__Core__V3__Metadata PbMetadata;
typedef Envoy__Config__Listener__V3__Listener PbListener;
typedef Envoy__Config__Listener__V3__FilterChain PbFilterChain;
typedef Envoy__Config__Listener__V3__FilterChainMatch PbFilterChainMatch;
typedef Envoy__Config__Listener__V3__Filter PbFilter;
typedef Envoy__Config__Listener__V3__ListenerFilter PbListenerFilter;
typedef Envoy__Config__Route__V3__RouteConfiguration PbRouteConfig;
typedef Envoy__Config__Route__V3__VirtualHost PbVhost;
typedef Envoy__Config__Route__V3__Route PbRoute;
typedef Envoy__Config__Route__V3__RouteMatch PbRouteMatch;
typedef Envoy__Config__Route__V3__RouteAction PbRouteAction;
typedef Envoy__Config__Route__V3__HeaderMatcher PbHeaderMatcher;
typedef Envoy__Config__Route__V3__RetryPolicy PbRetryPolicy;
typedef Envoy__Config__Route__V3__WeightedCluster PbWeightedCluster;
typedef Envoy__Config__Route__V3__WeightedCluster__ClusterWeight PbClusterWeight;
typedef Envoy__Config__Route__V3__DirectResponseAction PbDirectResponse;
typedef Envoy__Config__Route__V3__RouteAction__HashPolicy PbHashPolicy;
typedef Envoy__Config__Cluster__V3__Cluster PbCluster;
typedef Envoy__Config__Cluster__V3__OutlierDetection PbOutlier;
typedef Envoy__Config__Cluster__V3__LoadBalancingPolicy PbLbPolicy;
typedef Envoy__Config__Core__V3__HealthCheck PbHealthCheck;
typedef Envoy__Config__Core__V3__HealthCheck__HttpHealthCheck PbHttpHc;
typedef Envoy__Config__Core__V3__HealthCheck__TcpHealthCheck PbTcpHc;
typedef Envoy__Config__Core__V3__HealthCheck__Payload PbPayload;
typedef Envoy__Config__Endpoint__V3__ClusterLoadAssignment PbCla;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager PbHcm;
typedef Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpFilter PbHttpFilter;
typedef Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy PbTcpProxy;
typedef Envoy__Extensions__Filters__Http__Router__V3__Router PbRouter;
typedef Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions PbUpHttpOptions;

#define MS_PER_HOUR (3600ull * 1000)
#define DEFAULT_BUFFER_LIMIT (1024u * 1024u)

/* ---- translation context --------------------------------------------------- */

struct tr {
    struct sk_arena *a;
    struct sk_snapshot *snap;
    struct sk_cfgerrs *errs;
    size_t nerr; /* errors added by this run (errs may already hold others) */
    bool oom;
    /* proto-JSON path of the field being translated */
    char path[1024];
    size_t plen;
};

/* Path segments: push returns the previous length, pop restores it. A path that
 * would overflow is truncated (still a useful prefix for the message). */
static size_t push(struct tr *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t push(struct tr *t, const char *fmt, ...)
{
    size_t old = t->plen;
    if (t->plen < sizeof(t->path) - 1) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->path + t->plen, sizeof(t->path) - t->plen, fmt, ap);
        va_end(ap);
        if (n > 0)
            t->plen += (size_t)n;
        if (t->plen > sizeof(t->path) - 1)
            t->plen = sizeof(t->path) - 1;
    }
    return old;
}

static size_t pushf(struct tr *t, const char *field)
{
    return t->plen ? push(t, ".%s", field) : push(t, "%s", field);
}

static size_t pushi(struct tr *t, size_t i)
{
    return push(t, "[%zu]", i);
}

static void pop(struct tr *t, size_t old)
{
    t->plen = old;
    t->path[old] = 0;
}

/* Error at the current path, or at current path + "." + field. */
static void err(struct tr *t, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err(struct tr *t, const char *field, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t old = field ? pushf(t, field) : t->plen;
    sk_cfgerrs_add(t->errs, t->path, "%s", msg);
    t->nerr++;
    pop(t, old);
}

static void unsupported(struct tr *t, const char *field)
{
    err(t, field, "%s is not supported by skiff", field);
}

static void *al(struct tr *t, size_t n)
{
    void *p = sk_arena_alloc(t->a, n ? n : 1);
    if (!p)
        t->oom = true;
    return p;
}

/* Arrays: NULL for zero elements. */
static void *alarr(struct tr *t, size_t n, size_t size)
{
    if (n == 0)
        return NULL;
    if (n > SIZE_MAX / size) {
        t->oom = true;
        return NULL;
    }
    return al(t, n * size);
}

static char *dup(struct tr *t, const char *s)
{
    if (!s)
        s = "";
    char *p = sk_arena_strdup(t->a, s);
    if (!p)
        t->oom = true;
    return p;
}

static char *dupn(struct tr *t, const char *s, size_t n)
{
    char *p = sk_arena_strndup(t->a, s ? s : "", s ? n : 0);
    if (!p)
        t->oom = true;
    return p;
}

static char *duplower(struct tr *t, const char *s)
{
    char *p = dup(t, s);
    if (p)
        for (char *q = p; *q; q++)
            *q = (char)tolower((unsigned char)*q);
    return p;
}

static bool empty(const char *s)
{
    return !s || !*s;
}

/* ---- small value helpers --------------------------------------------------------- */

/* Duration -> milliseconds (sub-millisecond rounds up). Unset -> dflt,
 * zero -> zero_val (SK_DUR_NONE where Envoy's 0s means "disabled"). */
static uint64_t dur(struct tr *t, const char *field, const PbDuration *d, uint64_t dflt,
                    uint64_t zero_val)
{
    if (!d)
        return dflt;
    if (d->seconds < 0 || d->nanos < 0 || d->nanos > 999999999 || d->seconds > 315576000000LL) {
        err(t, field, "invalid duration (must be non-negative)");
        return dflt;
    }
    uint64_t ms = (uint64_t)d->seconds * 1000u + ((uint64_t)d->nanos + 999999u) / 1000000u;
    return ms == 0 ? zero_val : ms;
}

static uint32_t u32w(const PbU32 *v, uint32_t dflt)
{
    return v ? v->value : dflt;
}

static bool boolw(const PbBool *v, bool dflt)
{
    return v ? v->value : dflt;
}

static uint64_t u64w(const PbU64 *v, uint64_t dflt)
{
    return v ? v->value : dflt;
}

/* A UInt32Value percentage (Envoy: lte 100). Unset -> dflt. */
static uint32_t pct32(struct tr *t, const char *field, const PbU32 *v, uint32_t dflt)
{
    if (!v)
        return dflt;
    if (v->value > 100) {
        err(t, field, "%s must be 0-100 (got %u)", field, v->value);
        return dflt;
    }
    return v->value;
}

/* A Duration that must be greater than 0 when set (Envoy: `gt {}`). Unset -> dflt. */
static uint64_t dur_pos(struct tr *t, const char *field, const PbDuration *d, uint64_t dflt)
{
    if (!d)
        return dflt;
    if (d->seconds == 0 && d->nanos == 0) {
        err(t, field, "%s must be greater than 0", field);
        return dflt;
    }
    return dur(t, field, d, dflt, dflt);
}

/* Type name of an Any: the part of the type URL after the last '/'. */
static const char *any_type(const PbAny *a)
{
    const char *u = a && a->type_url ? a->type_url : "";
    const char *s = strrchr(u, '/');
    return s ? s + 1 : u;
}

static bool is_type(const PbAny *a, const ProtobufCMessageDescriptor *d)
{
    return strcmp(any_type(a), d->name) == 0;
}

static bool is_typed_struct(const PbAny *a)
{
    return is_type(a, &udpa__type__v1__typed_struct__descriptor) ||
           is_type(a, &xds__type__v3__typed_struct__descriptor);
}

/* Unpacks an Any (the caller has checked its type); error at the current path
 * (the Any's own field) if the bytes do not decode. Free the result with
 * protobuf_c_message_free_unpacked(). */
static void *unpack(struct tr *t, const PbAny *a, const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, a->value.len, a->value.data);
    if (!m)
        err(t, NULL, "cannot decode %s", d->name);
    return m;
}

static void unpacked_free(void *m)
{
    if (m)
        protobuf_c_message_free_unpacked(m, NULL);
}

/* Checks an Any field that must hold a typed config; reports a missing type
 * and TypedStruct (not supported yet). Returns true if dispatchable. */
static bool any_ok(struct tr *t, const PbAny *a)
{
    if (!a || empty(a->type_url)) {
        err(t, NULL, "typed_config with an @type is required");
        return false;
    }
    if (is_typed_struct(a)) {
        err(t, NULL, "TypedStruct not supported yet (type '%s')", any_type(a));
        return false;
    }
    return true;
}

static bool valid_header_name(const char *s)
{
    if (empty(s))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || strchr("!#$%&'*+-.^_`|~", *p))
            continue;
        return false;
    }
    return true;
}

/* ---- addresses ------------------------------------------------------------------ */

static void fmt_addr(char *buf, size_t n, const struct sk_sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&sa->ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, n, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&sa->ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(buf, n, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

/* IP literal -> sockaddr; false if not an IP literal. */
static bool parse_ip(const char *host, uint16_t port, struct sk_sockaddr *out)
{
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        out->len = sizeof(*s4);
        return true;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        out->len = sizeof(*s6);
        return true;
    }
    memset(out, 0, sizeof(*out));
    return false;
}

enum { ADDR_NEED_IP = 1, ADDR_PORT0_OK = 2, ADDR_PIPE_OK = 4 };

/* Address field at the current path (e.g. "...address"). Fills host/port, and
 * out (when the host is an IP literal). Returns false on error (reported). */
static bool address(struct tr *t, const PbAddress *a, int flags, char **host, uint16_t *port,
                    struct sk_sockaddr *out)
{
    if (!a) {
        err(t, NULL, "address is required");
        return false;
    }
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        /* Unix socket: only where the caller can connect to one (the xDS cluster,
         * checked once the ADS cluster is known) */
        if (!(flags & ADDR_PIPE_OK) || !a->pipe) {
            err(t, "pipe", "pipe (unix socket) addresses are not supported yet");
            return false;
        }
        struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
        size_t pl = a->pipe->path ? strlen(a->pipe->path) : 0;
        if (pl == 0 || pl >= sizeof(un->sun_path)) {
            err(t, "pipe.path", "pipe.path must be 1-%zu bytes", sizeof(un->sun_path) - 1);
            return false;
        }
        memset(out, 0, sizeof(*out));
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, a->pipe->path, pl);
        out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + pl + 1);
        if (host)
            *host = dup(t, a->pipe->path);
        if (port)
            *port = 0;
        return true;
    }
    if (a->address_case != ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS ||
        !a->socket_address) {
        err(t, NULL, "socket_address is required");
        return false;
    }
    const PbSocketAddress *sa = a->socket_address;
    size_t o = pushf(t, "socket_address");
    bool ok = true;
    if (sa->protocol != ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PROTOCOL__TCP) {
        err(t, "protocol", "only TCP is supported");
        ok = false;
    }
    if (!empty(sa->resolver_name)) {
        unsupported(t, "resolver_name");
        ok = false;
    }
    uint32_t pv = 0;
    if (sa->port_specifier_case ==
        ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_NAMED_PORT) {
        unsupported(t, "named_port");
        ok = false;
    } else if (sa->port_specifier_case ==
               ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_PORT_VALUE) {
        pv = sa->port_value;
        if (pv > 65535) {
            err(t, "port_value", "port %u out of range (0-65535)", pv);
            ok = false;
        }
    }
    if (ok && pv == 0 && !(flags & ADDR_PORT0_OK)) {
        err(t, "port_value", "port_value is required (1-65535)");
        ok = false;
    }
    if (empty(sa->address)) {
        err(t, "address", "address is required");
        ok = false;
    } else if (!parse_ip(sa->address, (uint16_t)pv, out)) {
        if (flags & ADDR_NEED_IP) {
            err(t, "address", "'%s' is not an IP address", sa->address);
            ok = false;
        }
    }
    if (ok) {
        if (host)
            *host = dup(t, sa->address);
        if (port)
            *port = (uint16_t)pv;
    }
    pop(t, o);
    return ok;
}

static char *addr_str(struct tr *t, const struct sk_sockaddr *sa)
{
    char buf[INET6_ADDRSTRLEN + 16];
    fmt_addr(buf, sizeof(buf), sa);
    return dup(t, buf);
}

/* ---- header mutations ----------------------------------------------------------- */

static void hdr_add(struct tr *t, const char *field, size_t n, PbHeaderValueOption **v,
                    struct sk_hdr_ops *ops)
{
    if (n == 0)
        return;
    size_t o = pushf(t, field);
    ops->add = alarr(t, n, sizeof(*ops->add));
    for (size_t i = 0; ops->add && i < n; i++) {
        size_t oi = pushi(t, i);
        const PbHeaderValueOption *h = v[i];
        struct sk_hdr_op *op = &ops->add[ops->nadd];
        if (!h->header) {
            err(t, "header", "header is required");
        } else if (h->header->key && h->header->key[0] == ':') {
            err(t, "header.key", "pseudo-header '%s' cannot be modified", h->header->key);
        } else if (!valid_header_name(h->header->key)) {
            err(t, "header.key", "invalid header name '%s'", h->header->key ? h->header->key : "");
        } else if (h->append && h->append_action != 0) {
            err(t, "append", "append and append_action cannot both be set");
        } else {
            op->key = duplower(t, h->header->key);
            op->key_len = strlen(h->header->key);
            if (empty(h->header->value) && h->header->raw_value.len) {
                op->value =
                    dupn(t, (const char *)h->header->raw_value.data, h->header->raw_value.len);
                op->value_len = h->header->raw_value.len;
            } else {
                op->value = dup(t, h->header->value);
                op->value_len = h->header->value ? strlen(h->header->value) : 0;
            }
            if (h->append)
                op->action = h->append->value ? SK_HDR_APPEND_IF_EXISTS_OR_ADD
                                              : SK_HDR_OVERWRITE_IF_EXISTS_OR_ADD;
            else
                op->action = (int)h->append_action;
            op->keep_empty_value = h->keep_empty_value;
            ops->nadd++;
        }
        pop(t, oi);
    }
    pop(t, o);
}

static void hdr_remove(struct tr *t, const char *field, size_t n, char **v, struct sk_hdr_ops *ops)
{
    if (n == 0)
        return;
    size_t o = pushf(t, field);
    ops->remove = alarr(t, n, sizeof(*ops->remove));
    for (size_t i = 0; ops->remove && i < n; i++) {
        size_t oi = pushi(t, i);
        if (v[i] && v[i][0] == ':')
            err(t, NULL, "pseudo-header '%s' cannot be removed", v[i]);
        else if (!valid_header_name(v[i]))
            err(t, NULL, "invalid header name '%s'", v[i] ? v[i] : "");
        else
            ops->remove[ops->nremove++] = duplower(t, v[i]);
        pop(t, oi);
    }
    pop(t, o);
}

/* Translates the four *_headers_to_{add,remove} fields of a message that has them. */
#define HDR_OPS(t, m, req, resp)                                                                   \
    do {                                                                                           \
        hdr_add((t), "request_headers_to_add", (m)->n_request_headers_to_add,                      \
                (m)->request_headers_to_add, (req));                                               \
        hdr_remove((t), "request_headers_to_remove", (m)->n_request_headers_to_remove,             \
                   (m)->request_headers_to_remove, (req));                                         \
        hdr_add((t), "response_headers_to_add", (m)->n_response_headers_to_add,                    \
                (m)->response_headers_to_add, (resp));                                             \
        hdr_remove((t), "response_headers_to_remove", (m)->n_response_headers_to_remove,           \
                   (m)->response_headers_to_remove, (resp));                                       \
    } while (0)

/* ---- cluster references --------------------------------------------------------- */

static int cmp_cluster_ptr(const void *a, const void *b)
{
    const struct sk_cluster *x = *(struct sk_cluster *const *)a;
    const struct sk_cluster *y = *(struct sk_cluster *const *)b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

static int cmp_cluster_key(const void *key, const void *elem)
{
    return strcmp(key, (*(struct sk_cluster *const *)elem)->name);
}

static struct sk_cluster *find_cluster(const struct sk_snapshot *s, const char *name)
{
    if (!s->clusters_by_name || !name)
        return NULL;
    struct sk_cluster **c =
        bsearch(name, s->clusters_by_name, s->nclusters, sizeof(*c), cmp_cluster_key);
    return c ? *c : NULL;
}

/* Resolves a cluster reference at current path + field. With dynamic CDS an
 * unknown name is allowed (NULL: the data plane answers 503 "cluster not
 * found" until CDS delivers it). */
static struct sk_cluster *cluster_ref(struct tr *t, const char *field, const char *name)
{
    if (empty(name)) {
        err(t, field, "cluster name is required");
        return NULL;
    }
    struct sk_cluster *c = find_cluster(t->snap, name);
    if (!c && !t->snap->xds.cds)
        err(t, field, "unknown cluster '%s'", name);
    return c;
}

/* ---- routes -------------------------------------------------------------------- */

struct route_ctx {            /* per RouteConfiguration */
    uint32_t max_direct_body; /* max_direct_response_body_size_bytes */
    /* per VirtualHost, inherited by its routes */
    const struct sk_retry_policy *vh_retry;
    bool include_attempt_count; /* include_request_attempt_count */
    uint64_t buffer_limit;      /* request_body_buffer_limit / per_request_buffer_limit_bytes */
    /* typed_per_filter_config of the vhost and the route config */
    struct sk_filter_override *vh_fo, *rc_fo;
    size_t nvh_fo, nrc_fo;
};

/* request_body_buffer_limit (newer, UInt64Value) wins over the deprecated
 * per_request_buffer_limit_bytes (UInt32Value); both unset -> dflt. */
static uint64_t buffer_limit(const PbU64 *body_limit, const PbU32 *per_request, uint64_t dflt)
{
    if (body_limit)
        return body_limit->value;
    if (per_request)
        return per_request->value;
    return dflt;
}

/* StringMatcher -> kind + value (exact / prefix / suffix / contains) at the
 * current path. Returns the value, or NULL after reporting what is wrong
 * (`what` names the matcher in the regex message). */
static const char *string_matcher_kind(struct tr *t, const Envoy__Type__Matcher__V3__StringMatcher *s,
                                       const char *what,
                                       int *kind, const char **vfield)
{
    switch (s->match_pattern_case) {
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
        *kind = SK_STR_EXACT, *vfield = "exact";
        return s->exact;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
        *kind = SK_STR_PREFIX, *vfield = "prefix";
        return s->prefix;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
        *kind = SK_STR_SUFFIX, *vfield = "suffix";
        return s->suffix;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
        *kind = SK_STR_CONTAINS, *vfield = "contains";
        return s->contains;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SAFE_REGEX:
        err(t, "safe_regex", "regex %smatching is not supported yet", what);
        return NULL;
    default:
        err(t, NULL, "one of exact, prefix, suffix, contains is required");
        return NULL;
    }
}

static void header_matcher(struct tr *t, const PbHeaderMatcher *h, struct sk_header_match *m)
{
    if (!valid_header_name(h->name) &&
        !(h->name && h->name[0] == ':' && valid_header_name(h->name + 1))) {
        err(t, "name", "invalid header name '%s'", h->name ? h->name : "");
        return;
    }
    m->name = duplower(t, h->name);
    m->name_len = strlen(h->name);
    m->invert = h->invert_match;
    if (h->treat_missing_header_as_empty)
        unsupported(t, "treat_missing_header_as_empty");
    const char *v = NULL, *vfield = NULL;
    switch (h->header_match_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER__NOT_SET:
        /* no specifier: Envoy checks presence */
        m->kind = SK_STR_PRESENT;
        m->present = true;
        return;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PRESENT_MATCH:
        m->kind = SK_STR_PRESENT;
        m->present = h->present_match;
        return;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_EXACT_MATCH:
        m->kind = SK_STR_EXACT, v = h->exact_match, vfield = "exact_match";
        break;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_PREFIX_MATCH:
        m->kind = SK_STR_PREFIX, v = h->prefix_match, vfield = "prefix_match";
        break;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_SUFFIX_MATCH:
        m->kind = SK_STR_SUFFIX, v = h->suffix_match, vfield = "suffix_match";
        break;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_CONTAINS_MATCH:
        m->kind = SK_STR_CONTAINS, v = h->contains_match, vfield = "contains_match";
        break;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_SAFE_REGEX_MATCH:
        err(t, "safe_regex_match", "regex matching is not supported yet");
        return;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_RANGE_MATCH:
        unsupported(t, "range_match");
        return;
    case ENVOY__CONFIG__ROUTE__V3__HEADER_MATCHER__HEADER_MATCH_SPECIFIER_STRING_MATCH: {
        const Envoy__Type__Matcher__V3__StringMatcher *s = h->string_match;
        size_t o = pushf(t, "string_match");
        m->ignore_case = s->ignore_case;
        int kind = 0;
        v = string_matcher_kind(t, s, "", &kind, &vfield);
        if (v)
            m->kind = kind;
        if (v && m->kind != SK_STR_EXACT && empty(v))
            err(t, vfield, "%s must not be empty", vfield);
        else if (v) {
            m->value = dup(t, v);
            m->value_len = strlen(v);
        }
        pop(t, o);
        return;
    }
    default:
        err(t, NULL, "unsupported header matcher");
        return;
    }
    if (m->kind != SK_STR_EXACT && empty(v)) {
        err(t, vfield, "%s must not be empty", vfield);
        return;
    }
    m->value = dup(t, v);
    m->value_len = v ? strlen(v) : 0;
}

/* ---- HTTP filters: fault and RBAC configs, typed_per_filter_config ------------------ */

typedef Envoy__Extensions__Filters__Http__Fault__V3__HTTPFault PbHttpFault;
typedef Envoy__Extensions__Filters__Http__Rbac__V3__RBAC PbRbacFilter;
typedef Envoy__Extensions__Filters__Http__Rbac__V3__RBACPerRoute PbRbacPerRoute;
typedef Envoy__Config__Rbac__V3__RBAC PbRbacRules;
typedef Envoy__Config__Rbac__V3__Permission PbRbacPermission;
typedef Envoy__Config__Rbac__V3__Principal PbRbacPrincipal;
typedef Envoy__Config__Route__V3__FilterConfig PbFilterConfig;
/* every typed_per_filter_config map entry has this layout (key, Any value) */
typedef Envoy__Config__Route__V3__RouteConfiguration__TypedPerFilterConfigEntry PbPfcEntry;

/* FractionalPercent; an absent one is 0/100 (the fault never fires). */
static struct sk_fraction fraction(struct tr *t, const char *field,
                                   const Envoy__Type__V3__FractionalPercent *f)
{
    static const uint32_t denom[] = {100, 10000, 1000000};
    struct sk_fraction r = {0, 100};
    if (!f)
        return r;
    if ((unsigned)f->denominator > 2) {
        err(t, field, "unknown denominator %d", (int)f->denominator);
        return r;
    }
    r.denominator = denom[f->denominator];
    r.numerator = f->numerator > r.denominator ? r.denominator : f->numerator;
    return r;
}

static struct sk_fault_cfg *fault_config(struct tr *t, const PbHttpFault *f)
{
    struct sk_fault_cfg *c = al(t, sizeof(*c));
    if (!c)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->magic = SK_FAULT_CFG_MAGIC;
    if (f->delay) {
        size_t o = pushf(t, "delay");
        switch (f->delay->fault_delay_secifier_case) {
        case ENVOY__EXTENSIONS__FILTERS__COMMON__FAULT__V3__FAULT_DELAY__FAULT_DELAY_SECIFIER_FIXED_DELAY:
            c->delay_kind = SK_FAULT_DELAY_FIXED;
            c->delay_ms = dur(t, "fixed_delay", f->delay->fixed_delay, 0, 0);
            break;
        case ENVOY__EXTENSIONS__FILTERS__COMMON__FAULT__V3__FAULT_DELAY__FAULT_DELAY_SECIFIER_HEADER_DELAY:
            c->delay_kind = SK_FAULT_DELAY_HEADER;
            break;
        default:
            err(t, NULL, "one of fixed_delay, header_delay is required");
            break;
        }
        c->delay_pct = fraction(t, "percentage", f->delay->percentage);
        pop(t, o);
    }
    if (f->abort) {
        size_t o = pushf(t, "abort");
        switch (f->abort->error_type_case) {
        case ENVOY__EXTENSIONS__FILTERS__HTTP__FAULT__V3__FAULT_ABORT__ERROR_TYPE_HTTP_STATUS:
            c->abort_kind = SK_FAULT_ABORT_HTTP;
            c->abort_http_status = f->abort->http_status;
            if (c->abort_http_status < 200 || c->abort_http_status > 599)
                err(t, "http_status", "http_status must be 200-599 (got %u)",
                    f->abort->http_status);
            break;
        case ENVOY__EXTENSIONS__FILTERS__HTTP__FAULT__V3__FAULT_ABORT__ERROR_TYPE_GRPC_STATUS:
            c->abort_kind = SK_FAULT_ABORT_GRPC;
            c->abort_grpc_status = f->abort->grpc_status;
            if (c->abort_grpc_status > 254)
                err(t, "grpc_status", "grpc_status must be 0-254 (got %u)",
                    f->abort->grpc_status);
            break;
        case ENVOY__EXTENSIONS__FILTERS__HTTP__FAULT__V3__FAULT_ABORT__ERROR_TYPE_HEADER_ABORT:
            c->abort_kind = SK_FAULT_ABORT_HEADER;
            break;
        default:
            err(t, NULL, "one of http_status, grpc_status, header_abort is required");
            break;
        }
        c->abort_pct = fraction(t, "percentage", f->abort->percentage);
        pop(t, o);
    }
    if (!empty(f->upstream_cluster))
        c->upstream_cluster = dup(t, f->upstream_cluster);
    if (f->n_headers) {
        size_t o = pushf(t, "headers");
        c->headers = alarr(t, f->n_headers, sizeof(*c->headers));
        for (size_t i = 0; c->headers && i < f->n_headers; i++) {
            size_t oi = pushi(t, i);
            memset(&c->headers[i], 0, sizeof(c->headers[i]));
            header_matcher(t, f->headers[i], &c->headers[i]);
            pop(t, oi);
        }
        c->nheaders = c->headers ? f->n_headers : 0;
        pop(t, o);
    }
    if (f->n_downstream_nodes) {
        c->downstream_nodes = alarr(t, f->n_downstream_nodes, sizeof(char *));
        for (size_t i = 0; c->downstream_nodes && i < f->n_downstream_nodes; i++)
            c->downstream_nodes[i] = dup(t, f->downstream_nodes[i]);
        c->ndownstream_nodes = c->downstream_nodes ? f->n_downstream_nodes : 0;
    }
    if (f->max_active_faults) {
        c->has_max_active = true;
        c->max_active_faults = f->max_active_faults->value;
    }
    if (f->response_rate_limit) {
        const Envoy__Extensions__Filters__Common__Fault__V3__FaultRateLimit *rl =
            f->response_rate_limit;
        size_t o = pushf(t, "response_rate_limit");
        switch (rl->limit_type_case) {
        case ENVOY__EXTENSIONS__FILTERS__COMMON__FAULT__V3__FAULT_RATE_LIMIT__LIMIT_TYPE_FIXED_LIMIT:
            c->rl_kind = SK_FAULT_RL_FIXED;
            c->rl_kbps = rl->fixed_limit->limit_kbps;
            if (c->rl_kbps == 0)
                err(t, "fixed_limit.limit_kbps", "limit_kbps must be at least 1");
            break;
        case ENVOY__EXTENSIONS__FILTERS__COMMON__FAULT__V3__FAULT_RATE_LIMIT__LIMIT_TYPE_HEADER_LIMIT:
            c->rl_kind = SK_FAULT_RL_HEADER;
            break;
        default:
            err(t, NULL, "one of fixed_limit, header_limit is required");
            break;
        }
        c->rl_pct = fraction(t, "percentage", rl->percentage);
        pop(t, o);
    }
    return c;
}

/* StringMatcher without regex. */
static void str_matcher(struct tr *t, const Envoy__Type__Matcher__V3__StringMatcher *s,
                        struct sk_str_match *m)
{
    const char *v = NULL, *vf = NULL;
    m->ignore_case = s->ignore_case;
    switch (s->match_pattern_case) {
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_EXACT:
        m->kind = SK_STR_EXACT, v = s->exact, vf = "exact";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_PREFIX:
        m->kind = SK_STR_PREFIX, v = s->prefix, vf = "prefix";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SUFFIX:
        m->kind = SK_STR_SUFFIX, v = s->suffix, vf = "suffix";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_CONTAINS:
        m->kind = SK_STR_CONTAINS, v = s->contains, vf = "contains";
        break;
    case ENVOY__TYPE__MATCHER__V3__STRING_MATCHER__MATCH_PATTERN_SAFE_REGEX:
        err(t, "safe_regex", "regex matching is not supported yet");
        return;
    default:
        err(t, NULL, "one of exact, prefix, suffix, contains is required");
        return;
    }
    if (m->kind != SK_STR_EXACT && empty(v)) {
        err(t, vf, "%s must not be empty", vf);
        return;
    }
    m->value = dup(t, v);
    m->len = v ? strlen(v) : 0;
}

static void cidr_range(struct tr *t, const Envoy__Config__Core__V3__CidrRange *c,
                       struct sk_cidr *out)
{
    memset(out, 0, sizeof(*out));
    const char *a = c->address_prefix ? c->address_prefix : "";
    uint32_t max;
    if (inet_pton(AF_INET, a, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, a, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        err(t, "address_prefix", "'%s' is not an IP address", a);
        return;
    }
    out->prefix_len = c->prefix_len ? c->prefix_len->value : max;
    if (out->prefix_len > max)
        err(t, "prefix_len", "prefix_len %u is too long for '%s'", out->prefix_len, a);
}

static void path_matcher(struct tr *t, const Envoy__Type__Matcher__V3__PathMatcher *p,
                         struct sk_rbac_rule *r)
{
    r->kind = SK_RBAC_R_URL_PATH;
    if (p->rule_case != ENVOY__TYPE__MATCHER__V3__PATH_MATCHER__RULE_PATH || !p->path) {
        err(t, NULL, "path is required");
        return;
    }
    size_t o = pushf(t, "path");
    str_matcher(t, p->path, &r->str);
    pop(t, o);
}

#define RBAC_MAX_DEPTH 32

static void rbac_permission(struct tr *t, const PbRbacPermission *p, struct sk_rbac_rule *r,
                            int depth);

static void rbac_permission_set(struct tr *t, const char *field, size_t n,
                                PbRbacPermission **v, struct sk_rbac_rule *r, int depth)
{
    size_t o = pushf(t, field);
    if (n == 0)
        err(t, "rules", "at least one rule is required");
    r->sub = alarr(t, n, sizeof(*r->sub));
    for (size_t i = 0; r->sub && i < n; i++) {
        size_t oi = push(t, ".rules[%zu]", i);
        rbac_permission(t, v[i], &r->sub[i], depth + 1);
        pop(t, oi);
    }
    r->nsub = r->sub ? n : 0;
    pop(t, o);
}

static void rbac_permission(struct tr *t, const PbRbacPermission *p, struct sk_rbac_rule *r,
                            int depth)
{
    memset(r, 0, sizeof(*r));
    if (depth > RBAC_MAX_DEPTH) {
        err(t, NULL, "rules nested deeper than %d", RBAC_MAX_DEPTH);
        return;
    }
    switch (p->rule_case) {
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_AND_RULES:
        r->kind = SK_RBAC_R_AND;
        rbac_permission_set(t, "and_rules", p->and_rules->n_rules, p->and_rules->rules, r, depth);
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_OR_RULES:
        r->kind = SK_RBAC_R_OR;
        rbac_permission_set(t, "or_rules", p->or_rules->n_rules, p->or_rules->rules, r, depth);
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_ANY:
        r->kind = SK_RBAC_R_ANY;
        if (!p->any)
            err(t, "any", "any must be true");
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_HEADER: {
        r->kind = SK_RBAC_R_HEADER;
        size_t o = pushf(t, "header");
        header_matcher(t, p->header, &r->header);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_URL_PATH: {
        size_t o = pushf(t, "url_path");
        path_matcher(t, p->url_path, r);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_DESTINATION_PORT:
        r->kind = SK_RBAC_R_DEST_PORT;
        r->port_lo = p->destination_port;
        if (p->destination_port > 65535)
            err(t, "destination_port", "destination_port must be 0-65535");
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_DESTINATION_PORT_RANGE:
        r->kind = SK_RBAC_R_DEST_PORT_RANGE;
        if (p->destination_port_range->start < 0 || p->destination_port_range->end > 65536 ||
            p->destination_port_range->start > p->destination_port_range->end)
            err(t, "destination_port_range", "invalid port range");
        r->port_lo = (uint32_t)p->destination_port_range->start;
        r->port_hi = (uint32_t)p->destination_port_range->end;
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_NOT_RULE:
        r->kind = SK_RBAC_R_NOT;
        r->sub = al(t, sizeof(*r->sub));
        if (r->sub) {
            size_t o = pushf(t, "not_rule");
            rbac_permission(t, p->not_rule, r->sub, depth + 1);
            r->nsub = 1;
            pop(t, o);
        }
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_DESTINATION_IP:
        err(t, "destination_ip", "destination_ip is not supported yet");
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_REQUESTED_SERVER_NAME:
        err(t, "requested_server_name", "requested_server_name is not supported yet");
        break;
    case ENVOY__CONFIG__RBAC__V3__PERMISSION__RULE_MATCHER:
        unsupported(t, "matcher");
        break;
    default:
        err(t, NULL, "a permission rule is required");
        break;
    }
}

static void rbac_principal(struct tr *t, const PbRbacPrincipal *p, struct sk_rbac_rule *r,
                           int depth);

static void rbac_principal_set(struct tr *t, const char *field, size_t n, PbRbacPrincipal **v,
                               struct sk_rbac_rule *r, int depth)
{
    size_t o = pushf(t, field);
    if (n == 0)
        err(t, "ids", "at least one id is required");
    r->sub = alarr(t, n, sizeof(*r->sub));
    for (size_t i = 0; r->sub && i < n; i++) {
        size_t oi = push(t, ".ids[%zu]", i);
        rbac_principal(t, v[i], &r->sub[i], depth + 1);
        pop(t, oi);
    }
    r->nsub = r->sub ? n : 0;
    pop(t, o);
}

static void rbac_principal(struct tr *t, const PbRbacPrincipal *p, struct sk_rbac_rule *r,
                           int depth)
{
    memset(r, 0, sizeof(*r));
    if (depth > RBAC_MAX_DEPTH) {
        err(t, NULL, "ids nested deeper than %d", RBAC_MAX_DEPTH);
        return;
    }
    const Envoy__Config__Core__V3__CidrRange *cidr = NULL;
    const char *cf = NULL;
    switch (p->identifier_case) {
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_AND_IDS:
        r->kind = SK_RBAC_R_AND;
        rbac_principal_set(t, "and_ids", p->and_ids->n_ids, p->and_ids->ids, r, depth);
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_OR_IDS:
        r->kind = SK_RBAC_R_OR;
        rbac_principal_set(t, "or_ids", p->or_ids->n_ids, p->or_ids->ids, r, depth);
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_ANY:
        r->kind = SK_RBAC_R_ANY;
        if (!p->any)
            err(t, "any", "any must be true");
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_AUTHENTICATED:
        r->kind = SK_RBAC_R_AUTHENTICATED;
        if (p->authenticated->principal_name) {
            size_t o = pushf(t, "authenticated.principal_name");
            str_matcher(t, p->authenticated->principal_name, &r->str);
            r->has_str = true;
            pop(t, o);
        }
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_SOURCE_IP:
        cidr = p->source_ip, cf = "source_ip";
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_DIRECT_REMOTE_IP:
        cidr = p->direct_remote_ip, cf = "direct_remote_ip";
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_REMOTE_IP:
        cidr = p->remote_ip, cf = "remote_ip";
        break;
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_HEADER: {
        r->kind = SK_RBAC_R_HEADER;
        size_t o = pushf(t, "header");
        header_matcher(t, p->header, &r->header);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_URL_PATH: {
        size_t o = pushf(t, "url_path");
        path_matcher(t, p->url_path, r);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__RBAC__V3__PRINCIPAL__IDENTIFIER_NOT_ID:
        r->kind = SK_RBAC_R_NOT;
        r->sub = al(t, sizeof(*r->sub));
        if (r->sub) {
            size_t o = pushf(t, "not_id");
            rbac_principal(t, p->not_id, r->sub, depth + 1);
            r->nsub = 1;
            pop(t, o);
        }
        break;
    default:
        err(t, NULL, "a principal identifier is required");
        break;
    }
    if (cidr) {
        r->kind = SK_RBAC_R_REMOTE_IP;
        size_t o = pushf(t, cf);
        cidr_range(t, cidr, &r->cidr);
        pop(t, o);
    }
}

static int cmp_policy(const void *a, const void *b)
{
    const struct sk_rbac_policy *x = a, *y = b;
    return strcmp(x->name ? x->name : "", y->name ? y->name : "");
}

static void rbac_rules(struct tr *t, const char *field, const PbRbacRules *p,
                       struct sk_rbac_rules *r)
{
    size_t o = pushf(t, field);
    memset(r, 0, sizeof(*r));
    switch (p->action) {
    case ENVOY__CONFIG__RBAC__V3__RBAC__ACTION__ALLOW:
        r->action = SK_RBAC_ALLOW;
        break;
    case ENVOY__CONFIG__RBAC__V3__RBAC__ACTION__DENY:
        r->action = SK_RBAC_DENY;
        break;
    case ENVOY__CONFIG__RBAC__V3__RBAC__ACTION__LOG:
        r->action = SK_RBAC_LOG;
        break;
    default:
        err(t, "action", "unknown action %d", (int)p->action);
        break;
    }
    if (p->n_audit_log)
        unsupported(t, "audit_log");
    r->policies = alarr(t, p->n_policies, sizeof(*r->policies));
    for (size_t i = 0; r->policies && i < p->n_policies; i++) {
        const char *name = p->policies[i]->key ? p->policies[i]->key : "";
        const Envoy__Config__Rbac__V3__Policy *pv = p->policies[i]->value;
        struct sk_rbac_policy *pol = &r->policies[i];
        memset(pol, 0, sizeof(*pol));
        size_t op = push(t, ".policies[\"%s\"]", name);
        pol->name = dup(t, name);
        if (!pv || pv->n_permissions == 0)
            err(t, "permissions", "at least one permission is required");
        if (!pv || pv->n_principals == 0)
            err(t, "principals", "at least one principal is required");
        if (pv) {
            pol->permissions = alarr(t, pv->n_permissions, sizeof(*pol->permissions));
            for (size_t k = 0; pol->permissions && k < pv->n_permissions; k++) {
                size_t ok = push(t, ".permissions[%zu]", k);
                rbac_permission(t, pv->permissions[k], &pol->permissions[k], 0);
                pop(t, ok);
            }
            pol->npermissions = pol->permissions ? pv->n_permissions : 0;
            pol->principals = alarr(t, pv->n_principals, sizeof(*pol->principals));
            for (size_t k = 0; pol->principals && k < pv->n_principals; k++) {
                size_t ok = push(t, ".principals[%zu]", k);
                rbac_principal(t, pv->principals[k], &pol->principals[k], 0);
                pop(t, ok);
            }
            pol->nprincipals = pol->principals ? pv->n_principals : 0;
        }
        pop(t, op);
    }
    r->npolicies = r->policies ? p->n_policies : 0;
    if (r->npolicies > 1)
        qsort(r->policies, r->npolicies, sizeof(*r->policies), cmp_policy);
    pop(t, o);
}

static struct sk_rbac_cfg *rbac_config(struct tr *t, const PbRbacFilter *f)
{
    struct sk_rbac_cfg *c = al(t, sizeof(*c));
    if (!c)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->magic = SK_RBAC_CFG_MAGIC;
    if (f->rules) {
        c->has_rules = true;
        rbac_rules(t, "rules", f->rules, &c->rules);
    }
    if (f->shadow_rules) {
        c->has_shadow = true;
        rbac_rules(t, "shadow_rules", f->shadow_rules, &c->shadow);
    }
    return c;
}

/* One typed_per_filter_config entry -> override. Envoy's per-route config
 * for a filter is the filter's own message (RBACPerRoute for RBAC), or
 * envoy.config.route.v3.FilterConfig {config, is_optional, disabled}.
 * Returns false when the entry is skipped (unknown optional config). */
static bool filter_override(struct tr *t, const char *name, const PbAny *a,
                            struct sk_filter_override *o)
{
    memset(o, 0, sizeof(*o));
    o->name = dup(t, name);
    if (empty(name))
        err(t, NULL, "the filter name (map key) must not be empty");
    if (!any_ok(t, a))
        return false;
    PbFilterConfig *fc = NULL;
    bool optional = false;
    size_t opath = t->plen;
    if (is_type(a, &envoy__config__route__v3__filter_config__descriptor)) {
        fc = unpack(t, a, &envoy__config__route__v3__filter_config__descriptor);
        if (!fc)
            return false;
        o->disabled = fc->disabled;
        optional = fc->is_optional;
        a = fc->config;
        opath = pushf(t, "config");
        if (!a) { /* {disabled: true/false} alone: on/off with the HCM's config */
            pop(t, opath);
            unpacked_free(fc);
            return true;
        }
        if (!any_ok(t, a)) {
            pop(t, opath);
            unpacked_free(fc);
            return false;
        }
    }
    bool keep = true;
    if (is_type(a, &envoy__extensions__filters__http__fault__v3__httpfault__descriptor)) {
        PbHttpFault *f =
            unpack(t, a, &envoy__extensions__filters__http__fault__v3__httpfault__descriptor);
        if (f)
            o->config = fault_config(t, f);
        unpacked_free(f);
    } else if (is_type(a,
                       &envoy__extensions__filters__http__rbac__v3__rbacper_route__descriptor)) {
        PbRbacPerRoute *r =
            unpack(t, a, &envoy__extensions__filters__http__rbac__v3__rbacper_route__descriptor);
        if (r && r->rbac) {
            size_t orb = pushf(t, "rbac");
            o->config = rbac_config(t, r->rbac);
            pop(t, orb);
        } else if (r) {
            o->disabled = true; /* RBACPerRoute without rbac: no RBAC on this route */
        }
        unpacked_free(r);
    } else if (optional) {
        keep = false; /* an optional config of an unknown type is ignored */
    } else {
        err(t, NULL, "unsupported per-route config '%s' for filter '%s'", any_type(a), name);
        keep = false;
    }
    if (fc) {
        pop(t, opath);
        unpacked_free(fc);
    }
    return keep;
}

/* typed_per_filter_config (route config, vhost or route) -> overrides. */
static void filter_overrides(struct tr *t, size_t n, PbPfcEntry *const *v,
                             struct sk_filter_override **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    if (!n)
        return;
    size_t o = pushf(t, "typed_per_filter_config");
    struct sk_filter_override *arr = alarr(t, n, sizeof(*arr));
    for (size_t i = 0; arr && i < n; i++) {
        size_t oi = push(t, ".%s", v[i]->key ? v[i]->key : "");
        if (filter_override(t, v[i]->key, v[i]->value, &arr[*nout]))
            (*nout)++;
        pop(t, oi);
    }
    *out = arr;
    pop(t, o);
}

#define FILTER_OVERRIDES(t, m, out, nout)                                                          \
    filter_overrides((t), (m)->n_typed_per_filter_config,                                          \
                     (PbPfcEntry *const *)(const void *)(m)->typed_per_filter_config, (out),      \
                     (nout))

/* route's overrides, then the vhost's and the route config's for the names
 * the route does not have (the most specific wins) */
static void merge_overrides(struct tr *t, struct sk_route *r, const struct sk_filter_override *vo,
                            size_t nvo, const struct sk_filter_override *co, size_t nco)
{
    size_t total = r->nfilter_overrides + nvo + nco;
    if (total == r->nfilter_overrides)
        return;
    struct sk_filter_override *m = alarr(t, total, sizeof(*m));
    if (!m)
        return;
    size_t k = 0;
    for (size_t i = 0; i < r->nfilter_overrides; i++)
        m[k++] = r->filter_overrides[i];
    for (int lvl = 0; lvl < 2; lvl++) {
        const struct sk_filter_override *src = lvl == 0 ? vo : co;
        size_t ns = lvl == 0 ? nvo : nco;
        for (size_t i = 0; i < ns; i++) {
            bool dupname = false;
            for (size_t j = 0; j < k && !dupname; j++)
                dupname = m[j].name && src[i].name && strcmp(m[j].name, src[i].name) == 0;
            if (!dupname)
                m[k++] = src[i];
        }
    }
    r->filter_overrides = m;
    r->nfilter_overrides = k;
}

static void route_match(struct tr *t, const PbRouteMatch *pm, struct sk_route_match *m)
{
    switch (pm->path_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PREFIX:
        m->path_kind = SK_PATH_PREFIX;
        m->path = dup(t, pm->prefix);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH:
        m->path_kind = SK_PATH_EXACT;
        m->path = dup(t, pm->path);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_SAFE_REGEX:
        err(t, "safe_regex", "regex path matching is not supported yet");
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_CONNECT_MATCHER:
        unsupported(t, "connect_matcher");
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_MATCH__PATH_SPECIFIER_PATH_SEPARATED_PREFIX:
        unsupported(t, "path_separated_prefix");
        break;
    default:
        err(t, NULL, "one of prefix, path is required");
        break;
    }
    if (m->path)
        m->path_len = strlen(m->path);
    m->case_sensitive = boolw(pm->case_sensitive, true);
    if (pm->runtime_fraction) {
        const Envoy__Type__V3__FractionalPercent *f = pm->runtime_fraction->default_value;
        static const uint32_t denom[] = {100, 10000, 1000000};
        if (!f || (unsigned)f->denominator > 2 || f->numerator < denom[f->denominator])
            err(t, "runtime_fraction", "runtime_fraction below 100%% is not supported by skiff");
    }
    if (pm->n_query_parameters)
        err(t, "query_parameters", "query_parameters matching is not supported yet");
    if (pm->grpc)
        unsupported(t, "grpc");
    if (pm->tls_context)
        unsupported(t, "tls_context");
    if (pm->n_headers) {
        size_t o = pushf(t, "headers");
        m->headers = alarr(t, pm->n_headers, sizeof(*m->headers));
        for (size_t i = 0; m->headers && i < pm->n_headers; i++) {
            size_t oi = pushi(t, i);
            header_matcher(t, pm->headers[i], &m->headers[i]);
            pop(t, oi);
        }
        m->nheaders = m->headers ? pm->n_headers : 0;
        pop(t, o);
    }
}

/* retry_on comma list -> SK_RETRY_ON_* bits */
static uint32_t retry_on(struct tr *t, const char *s)
{
    static const struct {
        const char *name;
        uint32_t bit;
    } names[] = {
        {"5xx", SK_RETRY_ON_5XX},
        {"gateway-error", SK_RETRY_ON_GATEWAY_ERROR},
        {"reset", SK_RETRY_ON_RESET},
        {"reset-before-request", SK_RETRY_ON_RESET_BEFORE_REQUEST},
        {"connect-failure", SK_RETRY_ON_CONNECT_FAILURE},
        {"envoy-ratelimited", SK_RETRY_ON_ENVOY_RATELIMITED},
        {"retriable-4xx", SK_RETRY_ON_RETRIABLE_4XX},
        {"refused-stream", SK_RETRY_ON_REFUSED_STREAM},
        {"retriable-status-codes", SK_RETRY_ON_RETRIABLE_STATUS_CODES},
        {"http3-post-connect-failure", SK_RETRY_ON_HTTP3_POST_CONNECT_FAILURE},
        {"cancelled", SK_RETRY_ON_GRPC_CANCELLED},
        {"deadline-exceeded", SK_RETRY_ON_GRPC_DEADLINE_EXCEEDED},
        {"internal", SK_RETRY_ON_GRPC_INTERNAL},
        {"resource-exhausted", SK_RETRY_ON_GRPC_RESOURCE_EXHAUSTED},
        {"unavailable", SK_RETRY_ON_GRPC_UNAVAILABLE},
    };
    uint32_t bits = 0;
    const char *p = s ? s : "";
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        size_t n = (size_t)(e - p);
        while (n && p[n - 1] == ' ')
            n--;
        if (n) {
            bool found = false;
            for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                if (strlen(names[i].name) == n && strncmp(names[i].name, p, n) == 0) {
                    bits |= names[i].bit;
                    found = true;
                }
            }
            if (!found && n == strlen("retriable-headers") &&
                strncmp(p, "retriable-headers", n) == 0)
                err(t, "retry_on", "retry_on 'retriable-headers' is not supported by skiff");
            else if (!found)
                err(t, "retry_on", "unknown retry_on value '%.*s'", (int)n, p);
        }
        p = e;
    }
    return bits;
}

static struct sk_retry_policy *retry_policy(struct tr *t, const PbRetryPolicy *p)
{
    struct sk_retry_policy *r = al(t, sizeof(*r));
    if (!r)
        return NULL;
    r->retry_on = retry_on(t, p->retry_on);
    r->num_retries = u32w(p->num_retries, 1);
    r->per_try_timeout_ms = dur(t, "per_try_timeout", p->per_try_timeout, SK_DUR_NONE, SK_DUR_NONE);
    if (p->per_try_idle_timeout)
        unsupported(t, "per_try_idle_timeout");
    if (p->retry_priority)
        unsupported(t, "retry_priority");
    for (size_t i = 0; i < p->n_retry_host_predicate; i++) {
        size_t o = push(t, ".retry_host_predicate[%zu]", i);
        const Envoy__Config__Route__V3__RetryPolicy__RetryHostPredicate *h =
            p->retry_host_predicate[i];
        size_t ot = pushf(t, "typed_config");
        if (h->config_type_case !=
                ENVOY__CONFIG__ROUTE__V3__RETRY_POLICY__RETRY_HOST_PREDICATE__CONFIG_TYPE_TYPED_CONFIG ||
            !any_ok(t, h->typed_config)) {
            if (h->config_type_case !=
                ENVOY__CONFIG__ROUTE__V3__RETRY_POLICY__RETRY_HOST_PREDICATE__CONFIG_TYPE_TYPED_CONFIG)
                err(t, NULL, "typed_config is required");
        } else if (
            is_type(
                h->typed_config,
                &envoy__extensions__retry__host__previous_hosts__v3__previous_hosts_predicate__descriptor)) {
            r->retry_other_host = true;
        } else {
            err(t, NULL, "unsupported retry host predicate '%s'", any_type(h->typed_config));
        }
        pop(t, ot);
        pop(t, o);
    }
    if (p->host_selection_retry_max_attempts < 0 || p->host_selection_retry_max_attempts > 1000)
        err(t, "host_selection_retry_max_attempts", "must be 0-1000");
    else
        r->host_selection_retry_max_attempts = p->host_selection_retry_max_attempts
                                                   ? (uint32_t)p->host_selection_retry_max_attempts
                                                   : 1;
    if (p->n_retriable_status_codes) {
        r->retriable_status_codes = alarr(t, p->n_retriable_status_codes, sizeof(uint32_t));
        for (size_t i = 0; r->retriable_status_codes && i < p->n_retriable_status_codes; i++) {
            uint32_t c = p->retriable_status_codes[i];
            if (c < 100 || c > 599) {
                size_t o = push(t, ".retriable_status_codes[%zu]", i);
                err(t, NULL, "status code %u out of range (100-599)", c);
                pop(t, o);
            }
            r->retriable_status_codes[r->nretriable_status_codes++] = c;
        }
    }
    r->base_interval_ms = 25;
    if (p->retry_back_off) {
        size_t o = pushf(t, "retry_back_off");
        if (!p->retry_back_off->base_interval)
            err(t, "base_interval", "base_interval is required");
        r->base_interval_ms = dur(t, "base_interval", p->retry_back_off->base_interval, 25, 0);
        if (r->base_interval_ms == 0)
            err(t, "base_interval", "base_interval must be greater than 0");
        r->max_interval_ms =
            dur(t, "max_interval", p->retry_back_off->max_interval, r->base_interval_ms * 10, 0);
        if (p->retry_back_off->max_interval && r->max_interval_ms < r->base_interval_ms)
            err(t, "max_interval", "max_interval must be at least base_interval");
        pop(t, o);
    } else {
        r->max_interval_ms = r->base_interval_ms * 10;
    }
    if (p->n_retriable_headers)
        unsupported(t, "retriable_headers");
    if (p->n_retriable_request_headers)
        unsupported(t, "retriable_request_headers");
    return r;
}

static void weighted_clusters(struct tr *t, const PbWeightedCluster *w, struct sk_route *r)
{
    if (w->n_clusters == 0) {
        err(t, "clusters", "at least one cluster is required");
        return;
    }
    if (w->random_value_specifier_case ==
        ENVOY__CONFIG__ROUTE__V3__WEIGHTED_CLUSTER__RANDOM_VALUE_SPECIFIER_HEADER_NAME)
        unsupported(t, "header_name");
    r->weighted = alarr(t, w->n_clusters, sizeof(*r->weighted));
    if (!r->weighted)
        return;
    r->nweighted = w->n_clusters;
    uint64_t sum = 0;
    for (size_t i = 0; i < w->n_clusters; i++) {
        const PbClusterWeight *c = w->clusters[i];
        struct sk_cluster_weight *cw = &r->weighted[i];
        size_t o = push(t, ".clusters[%zu]", i);
        if (!empty(c->cluster_header))
            unsupported(t, "cluster_header");
        else {
            cw->name = dup(t, c->name);
            cw->cluster = cluster_ref(t, "name", c->name);
        }
        if (!c->weight)
            err(t, "weight", "weight is required");
        cw->weight = u32w(c->weight, 0);
        sum += cw->weight;
        if (c->metadata_match)
            unsupported(t, "metadata_match");
        if (c->n_typed_per_filter_config)
            unsupported(t, "typed_per_filter_config");
        if (c->host_rewrite_specifier_case !=
            ENVOY__CONFIG__ROUTE__V3__WEIGHTED_CLUSTER__CLUSTER_WEIGHT__HOST_REWRITE_SPECIFIER__NOT_SET)
            unsupported(t, "host_rewrite_literal");
        HDR_OPS(t, c, &cw->hdrs_req, &cw->hdrs_resp);
        pop(t, o);
    }
    if (sum == 0 || sum > UINT32_MAX)
        err(t, "clusters", "total weight must be between 1 and 4294967295");
    else if (w->total_weight && w->total_weight->value != sum)
        err(t, "total_weight", "total_weight %u does not match the sum of the weights (%llu)",
            w->total_weight->value, (unsigned long long)sum);
    r->total_weight = (uint32_t)sum;
}

/* RouteAction.hash_policy -> r->hash_policy (used by RING_HASH / MAGLEV clusters). */
static void hash_policies(struct tr *t, size_t n, PbHashPolicy **v, struct sk_route *r)
{
    if (n == 0)
        return;
    r->hash_policy = alarr(t, n, sizeof(*r->hash_policy));
    for (size_t i = 0; r->hash_policy && i < n; i++) {
        const PbHashPolicy *p = v[i];
        struct sk_hash_policy *hp = &r->hash_policy[r->nhash_policy];
        size_t o = push(t, ".hash_policy[%zu]", i);
        bool ok = false;
        switch (p->policy_specifier_case) {
        case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_HEADER: {
            const char *h = p->header->header_name;
            size_t oh = pushf(t, "header");
            if (!valid_header_name(h) && !(h && h[0] == ':' && valid_header_name(h + 1))) {
                err(t, "header_name", "invalid header name '%s'", h ? h : "");
            } else if (p->header->regex_rewrite) {
                unsupported(t, "regex_rewrite");
            } else {
                hp->kind = SK_HASH_HEADER;
                hp->name = duplower(t, h);
                ok = true;
            }
            pop(t, oh);
            break;
        }
        case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_COOKIE: {
            size_t oc = pushf(t, "cookie");
            if (empty(p->cookie->name)) {
                err(t, "name", "name is required");
            } else {
                /* ttl (cookie generation) and path: accepted and ignored */
                (void)dur(t, "ttl", p->cookie->ttl, 0, 0);
                hp->kind = SK_HASH_COOKIE;
                hp->name = dup(t, p->cookie->name);
                ok = true;
            }
            pop(t, oc);
            break;
        }
        case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_CONNECTION_PROPERTIES:
            /* source_ip: false never yields a hash (Envoy): leave the entry out */
            if (p->connection_properties->source_ip) {
                hp->kind = SK_HASH_SOURCE_IP;
                ok = true;
            }
            break;
        case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_QUERY_PARAMETER:
            if (empty(p->query_parameter->name)) {
                err(t, "query_parameter.name", "name is required");
            } else {
                hp->kind = SK_HASH_QUERY_PARAM;
                hp->name = dup(t, p->query_parameter->name);
                ok = true;
            }
            break;
        case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HASH_POLICY__POLICY_SPECIFIER_FILTER_STATE:
            err(t, "filter_state", "filter_state hash policy is not supported by skiff");
            break;
        default:
            err(t, NULL,
                "one of header, cookie, connection_properties, query_parameter is required");
            break;
        }
        if (ok) {
            hp->terminal = p->terminal;
            r->nhash_policy++;
        }
        pop(t, o);
    }
}

static void route_action(struct tr *t, const PbRouteAction *a, struct sk_route *r,
                         const struct sk_retry_policy *vh_retry)
{
    switch (a->cluster_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER:
        r->action = SK_ROUTE_CLUSTER;
        r->cluster_name = dup(t, a->cluster);
        r->cluster = cluster_ref(t, "cluster", a->cluster);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS: {
        r->action = SK_ROUTE_WEIGHTED;
        size_t o = pushf(t, "weighted_clusters");
        weighted_clusters(t, a->weighted_clusters, r);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_SPECIFIER_CLUSTER_HEADER:
        unsupported(t, "cluster_header");
        break;
    default:
        err(t, NULL, "one of cluster, weighted_clusters is required");
        break;
    }
    switch (a->cluster_not_found_response_code) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_NOT_FOUND_RESPONSE_CODE__NOT_FOUND:
        r->cluster_not_found_status = 404;
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__CLUSTER_NOT_FOUND_RESPONSE_CODE__INTERNAL_SERVER_ERROR:
        r->cluster_not_found_status = 500;
        break;
    default:
        r->cluster_not_found_status = 503;
        break;
    }
    if (a->metadata_match)
        unsupported(t, "metadata_match");
    if (!empty(a->prefix_rewrite))
        r->prefix_rewrite = dup(t, a->prefix_rewrite);
    if (a->regex_rewrite)
        err(t, "regex_rewrite", "regex_rewrite is not supported yet");
    switch (a->host_rewrite_specifier_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_LITERAL:
        if (!empty(a->host_rewrite_literal))
            r->host_rewrite_literal = dup(t, a->host_rewrite_literal);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_AUTO_HOST_REWRITE:
        r->auto_host_rewrite = boolw(a->auto_host_rewrite, false);
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_HEADER:
        unsupported(t, "host_rewrite_header");
        break;
    case ENVOY__CONFIG__ROUTE__V3__ROUTE_ACTION__HOST_REWRITE_SPECIFIER_HOST_REWRITE_PATH_REGEX:
        unsupported(t, "host_rewrite_path_regex");
        break;
    default:
        break;
    }
    if (a->append_x_forwarded_host)
        unsupported(t, "append_x_forwarded_host");
    r->timeout_ms = dur(t, "timeout", a->timeout, 15000, SK_DUR_NONE);
    r->idle_timeout_set = a->idle_timeout != NULL;
    r->idle_timeout_ms = dur(t, "idle_timeout", a->idle_timeout, SK_DUR_NONE, SK_DUR_NONE);
    if (a->retry_policy) {
        size_t o = pushf(t, "retry_policy");
        r->retry = retry_policy(t, a->retry_policy);
        pop(t, o);
    } else if (vh_retry) {
        r->retry = (struct sk_retry_policy *)vh_retry; /* shared, read-only */
    }
    if (a->priority != ENVOY__CONFIG__CORE__V3__ROUTING_PRIORITY__DEFAULT)
        err(t, "priority", "priority HIGH is not supported by skiff");
    hash_policies(t, a->n_hash_policy, a->hash_policy, r);
    /* deprecated max_grpc_timeout: present (even 0s) = honour grpc-timeout */
    if (a->max_grpc_timeout) {
        r->grpc_timeout_header = true;
        r->grpc_timeout_header_max_ms =
            dur(t, "max_grpc_timeout", a->max_grpc_timeout, 0, 0);
    }
    if (a->grpc_timeout_offset &&
        (a->grpc_timeout_offset->seconds || a->grpc_timeout_offset->nanos))
        unsupported(t, "grpc_timeout_offset");
    if (a->n_upgrade_configs)
        unsupported(t, "upgrade_configs");
    r->max_stream_duration_ms = SK_DUR_NONE;
    if (a->max_stream_duration) {
        size_t o = pushf(t, "max_stream_duration");
        r->max_stream_duration_ms =
            dur(t, "max_stream_duration", a->max_stream_duration->max_stream_duration, SK_DUR_NONE,
                SK_DUR_NONE);
        if (a->max_stream_duration->grpc_timeout_header_max) {
            r->grpc_timeout_header = true;
            r->grpc_timeout_header_max_ms = dur(t, "grpc_timeout_header_max",
                                                a->max_stream_duration->grpc_timeout_header_max,
                                                0, 0);
        }
        if (a->max_stream_duration->grpc_timeout_header_offset)
            unsupported(t, "grpc_timeout_header_offset");
        pop(t, o);
    }
}

static void direct_response(struct tr *t, const PbDirectResponse *d, struct sk_route *r,
                            const struct route_ctx *rc)
{
    r->action = SK_ROUTE_DIRECT;
    if (d->status < 200 || d->status > 599)
        err(t, "status", "status %u out of range (200-599)", d->status);
    r->direct_status = d->status;
    if (!d->body)
        return;
    size_t o = pushf(t, "body");
    const Envoy__Config__Core__V3__DataSource *b = d->body;
    switch (b->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        r->direct_body_len = b->inline_string ? strlen(b->inline_string) : 0;
        r->direct_body = dupn(t, b->inline_string, r->direct_body_len);
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        r->direct_body_len = b->inline_bytes.len;
        r->direct_body = dupn(t, (const char *)b->inline_bytes.data, b->inline_bytes.len);
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
        err(t, "filename", "direct_response body from a file is not supported yet");
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE:
        unsupported(t, "environment_variable");
        break;
    default:
        break;
    }
    if (r->direct_body_len > rc->max_direct_body)
        err(t, NULL, "body is %zu bytes, over max_direct_response_body_size_bytes (%u)",
            r->direct_body_len, rc->max_direct_body);
    pop(t, o);
}

static void route(struct tr *t, const PbRoute *pr, struct sk_route *r, const struct route_ctx *rc)
{
    const struct sk_retry_policy *vh_retry = rc->vh_retry;
    if (!empty(pr->name))
        r->name = dup(t, pr->name);
    r->include_attempt_count = rc->include_attempt_count;
    r->per_request_buffer_limit_bytes = buffer_limit(
        pr->request_body_buffer_limit, pr->per_request_buffer_limit_bytes, rc->buffer_limit);
    if (!pr->match) {
        err(t, "match", "match is required");
    } else {
        size_t o = pushf(t, "match");
        route_match(t, pr->match, &r->match);
        pop(t, o);
    }
    switch (pr->action_case) {
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_ROUTE: {
        size_t o = pushf(t, "route");
        route_action(t, pr->route, r, vh_retry);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_DIRECT_RESPONSE: {
        size_t o = pushf(t, "direct_response");
        direct_response(t, pr->direct_response, r, rc);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__ROUTE__V3__ROUTE__ACTION_REDIRECT:
        err(t, "redirect", "redirect is not supported yet");
        break;
    default:
        err(t, NULL, "one of route, direct_response is required");
        break;
    }
    FILTER_OVERRIDES(t, pr, &r->filter_overrides, &r->nfilter_overrides);
    merge_overrides(t, r, rc->vh_fo, rc->nvh_fo, rc->rc_fo, rc->nrc_fo);
    HDR_OPS(t, pr, &r->hdrs_req, &r->hdrs_resp);
}

/* Domain syntax: "*", "*suffix", "prefix*" (one wildcard, at either end). */
static bool valid_domain(const char *d)
{
    if (empty(d))
        return false;
    size_t n = strlen(d);
    const char *star = strchr(d, '*');
    if (!star)
        return true;
    if (strchr(star + 1, '*'))
        return false;
    return star == d || star == d + n - 1;
}

struct domain_ref {
    const char *domain; /* lower-cased, arena */
    size_t vh, idx;
};

static int cmp_domain_ref(const void *a, const void *b)
{
    const struct domain_ref *x = a, *y = b;
    int c = strcmp(x->domain, y->domain);
    if (c)
        return c;
    if (x->vh != y->vh)
        return x->vh < y->vh ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static struct sk_route_config *route_config(struct tr *t, const PbRouteConfig *pc)
{
    struct sk_route_config *rc = al(t, sizeof(*rc));
    if (!rc)
        return NULL;
    rc->name = dup(t, pc->name);
    rc->ignore_port_in_host_matching = pc->ignore_port_in_host_matching;
    struct route_ctx ctx = {.max_direct_body = u32w(pc->max_direct_response_body_size_bytes, 4096)};
    if (pc->n_internal_only_headers)
        unsupported(t, "internal_only_headers");
    if (pc->most_specific_header_mutations_wins)
        unsupported(t, "most_specific_header_mutations_wins");
    if (pc->ignore_path_parameters_in_path_matching)
        unsupported(t, "ignore_path_parameters_in_path_matching");
    FILTER_OVERRIDES(t, pc, &ctx.rc_fo, &ctx.nrc_fo);
    HDR_OPS(t, pc, &rc->hdrs_req, &rc->hdrs_resp);

    size_t ndomains = 0;
    for (size_t i = 0; i < pc->n_virtual_hosts; i++)
        ndomains += pc->virtual_hosts[i]->n_domains;
    struct domain_ref *refs = ndomains ? calloc(ndomains, sizeof(*refs)) : NULL;
    if (ndomains && !refs)
        t->oom = true;
    size_t nrefs = 0;
    char **vnames = pc->n_virtual_hosts ? calloc(pc->n_virtual_hosts, sizeof(char *)) : NULL;

    rc->vhosts = alarr(t, pc->n_virtual_hosts, sizeof(*rc->vhosts));
    rc->nvhosts = rc->vhosts ? pc->n_virtual_hosts : 0;
    size_t o = pushf(t, "virtual_hosts");
    for (size_t i = 0; i < rc->nvhosts; i++) {
        const PbVhost *pv = pc->virtual_hosts[i];
        struct sk_vhost *v = &rc->vhosts[i];
        size_t ov = pushi(t, i);
        if (empty(pv->name))
            err(t, "name", "name is required");
        v->name = dup(t, pv->name);
        if (vnames)
            vnames[i] = v->name;
        if (pv->n_domains == 0)
            err(t, "domains", "at least one domain is required");
        v->domains = alarr(t, pv->n_domains, sizeof(char *));
        v->ndomains = v->domains ? pv->n_domains : 0;
        for (size_t d = 0; d < v->ndomains; d++) {
            size_t od = push(t, ".domains[%zu]", d);
            if (!valid_domain(pv->domains[d]))
                err(t, NULL,
                    "invalid domain '%s' (a wildcard '*' may only be a leading or "
                    "trailing character)",
                    pv->domains[d] ? pv->domains[d] : "");
            v->domains[d] = duplower(t, pv->domains[d]);
            if (refs && v->domains[d])
                refs[nrefs++] = (struct domain_ref){v->domains[d], i, d};
            pop(t, od);
        }
        if (pv->require_tls != ENVOY__CONFIG__ROUTE__V3__VIRTUAL_HOST__TLS_REQUIREMENT_TYPE__NONE)
            unsupported(t, "require_tls");
        FILTER_OVERRIDES(t, pv, &ctx.vh_fo, &ctx.nvh_fo);
        v->include_request_attempt_count = pv->include_request_attempt_count;
        v->include_attempt_count_in_response = pv->include_attempt_count_in_response;
        HDR_OPS(t, pv, &v->hdrs_req, &v->hdrs_resp);
        ctx.vh_retry = NULL;
        if (pv->retry_policy) {
            size_t orp = pushf(t, "retry_policy");
            ctx.vh_retry = retry_policy(t, pv->retry_policy);
            pop(t, orp);
        }
        ctx.include_attempt_count = pv->include_request_attempt_count;
        ctx.buffer_limit = buffer_limit(pv->request_body_buffer_limit,
                                        pv->per_request_buffer_limit_bytes, DEFAULT_BUFFER_LIMIT);
        v->routes = alarr(t, pv->n_routes, sizeof(*v->routes));
        v->nroutes = v->routes ? pv->n_routes : 0;
        for (size_t r = 0; r < v->nroutes; r++) {
            size_t orr = push(t, ".routes[%zu]", r);
            route(t, pv->routes[r], &v->routes[r], &ctx);
            pop(t, orr);
        }
        pop(t, ov);
    }
    /* Envoy rejects a domain listed twice (in one or several vhosts) and
     * duplicate vhost names. */
    if (nrefs > 1) {
        qsort(refs, nrefs, sizeof(*refs), cmp_domain_ref);
        for (size_t i = 1; i < nrefs; i++) {
            if (strcmp(refs[i].domain, refs[i - 1].domain) == 0) {
                size_t od = push(t, "[%zu].domains[%zu]", refs[i].vh, refs[i].idx);
                err(t, NULL, "domain '%s' is already used by virtual host '%s'", refs[i].domain,
                    rc->vhosts[refs[i - 1].vh].name ? rc->vhosts[refs[i - 1].vh].name : "");
                pop(t, od);
            }
        }
    }
    if (vnames && rc->nvhosts > 1) {
        for (size_t i = 0; i < rc->nvhosts; i++)
            for (size_t j = 0; j < i; j++)
                if (vnames[i] && vnames[j] && *vnames[i] && strcmp(vnames[i], vnames[j]) == 0) {
                    size_t on = push(t, "[%zu]", i);
                    err(t, "name", "duplicate virtual host name '%s'", vnames[i]);
                    pop(t, on);
                    break;
                }
    }
    pop(t, o);
    free(refs);
    free(vnames);
    return rc;
}

/* ---- HTTP connection manager ------------------------------------------------------ */

static void http_filters(struct tr *t, const PbHcm *h, struct sk_hcm *m)
{
    if (h->n_http_filters == 0) {
        err(t, "http_filters", "http_filters must end with the router filter");
        return;
    }
    m->filters = alarr(t, h->n_http_filters, sizeof(*m->filters));
    size_t o = pushf(t, "http_filters");
    for (size_t i = 0; i < h->n_http_filters; i++) {
        const PbHttpFilter *f = h->http_filters[i];
        bool last = i + 1 == h->n_http_filters;
        size_t oi = pushi(t, i);
        for (size_t j = 0; j < i; j++)
            if (!empty(f->name) && strcmp(h->http_filters[j]->name, f->name) == 0) {
                err(t, "name", "duplicate HTTP filter name '%s'", f->name);
                break;
            }
        if (f->config_type_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_CONFIG_DISCOVERY) {
            unsupported(t, "config_discovery");
            pop(t, oi);
            continue;
        }
        size_t ot = pushf(t, "typed_config");
        const PbAny *a =
            f->config_type_case ==
                    ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_FILTER__CONFIG_TYPE_TYPED_CONFIG
                ? f->typed_config
                : NULL;
        if (!any_ok(t, a)) {
            /* reported */
        } else if (is_type(a, &envoy__extensions__filters__http__router__v3__router__descriptor)) {
            PbRouter *r =
                unpack(t, a, &envoy__extensions__filters__http__router__v3__router__descriptor);
            if (!last)
                err(t, NULL, "the router filter must be the last HTTP filter");
            if (f->disabled)
                err(t, NULL, "the router filter cannot be disabled");
            if (r && r->n_upstream_http_filters)
                unsupported(t, "upstream_http_filters");
            unpacked_free(r);
        } else if (is_type(a,
                           &envoy__extensions__filters__http__fault__v3__httpfault__descriptor) ||
                   is_type(a, &envoy__extensions__filters__http__rbac__v3__rbac__descriptor)) {
            bool fault =
                is_type(a, &envoy__extensions__filters__http__fault__v3__httpfault__descriptor);
            if (last)
                err(t, NULL, "http_filters must end with the router filter");
            if (empty(f->name))
                err(t, "name", "name is required (typed_per_filter_config refers to it)");
            void *config = NULL;
            if (fault) {
                PbHttpFault *fc = unpack(
                    t, a, &envoy__extensions__filters__http__fault__v3__httpfault__descriptor);
                config = fc ? fault_config(t, fc) : NULL;
                unpacked_free(fc);
            } else {
                PbRbacFilter *rc =
                    unpack(t, a, &envoy__extensions__filters__http__rbac__v3__rbac__descriptor);
                config = rc ? rbac_config(t, rc) : NULL;
                unpacked_free(rc);
            }
            /* a disabled filter is kept: a route's typed_per_filter_config may enable it */
            if (config && m->filters) {
                struct sk_http_filter_cfg *c = &m->filters[m->nfilters++];
                c->name = dup(t, f->name);
                c->type_url = dup(t, any_type(a));
                c->config = config;
                c->disabled = f->disabled;
            }
        } else if (f->is_optional) {
            /* unknown optional filter: skipped (gRPC's rule) */
            if (last)
                err(t, NULL, "http_filters must end with the router filter");
        } else {
            err(t, NULL, "unsupported HTTP filter '%s'", any_type(a));
        }
        pop(t, ot);
        pop(t, oi);
    }
    pop(t, o);
}

static void hcm_protocol_options(struct tr *t, const PbHttpProtocolOptions *p, struct sk_hcm *m)
{
    size_t o = pushf(t, "common_http_protocol_options");
    m->idle_timeout_ms = dur(t, "idle_timeout", p->idle_timeout, MS_PER_HOUR, SK_DUR_NONE);
    m->max_headers_count = u32w(p->max_headers_count, 100);
    if (p->max_headers_count && p->max_headers_count->value == 0)
        err(t, "max_headers_count", "max_headers_count must be at least 1");
    m->max_stream_duration_ms =
        dur(t, "max_stream_duration", p->max_stream_duration, SK_DUR_NONE, SK_DUR_NONE);
    if (p->max_connection_duration)
        unsupported(t, "max_connection_duration");
    if (p->headers_with_underscores_action !=
        ENVOY__CONFIG__CORE__V3__HTTP_PROTOCOL_OPTIONS__HEADERS_WITH_UNDERSCORES_ACTION__ALLOW)
        unsupported(t, "headers_with_underscores_action");
    if (p->max_requests_per_connection)
        unsupported(t, "max_requests_per_connection");
    if (p->max_response_headers_kb)
        unsupported(t, "max_response_headers_kb");
    pop(t, o);
}

/* ---- access logs (HCM access_log) -------------------------------------------------- */

typedef Envoy__Config__Accesslog__V3__AccessLog PbAccessLog;
typedef Envoy__Config__Accesslog__V3__AccessLogFilter PbAlFilter;
typedef Envoy__Config__Core__V3__SubstitutionFormatString PbSubstFmt;

/* Envoy's default access log format (text). */
static const char al_default_format[] =
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" "
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" "
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

static void al_text(struct tr *t, const char *field, const char *fmt, size_t len,
                    struct sk_al_format *out)
{
    char e[256];
    if (sk_al_parse_format(t->a, fmt, len, out, e, sizeof(e)) < 0)
        err(t, field, "%s", e);
}

/* A json_format key as it goes between the quotes of the log line (escaped
 * once here, not for every request). */
static char *json_key_escaped(struct tr *t, const char *k)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)k; *p; p++)
        n += (*p == '"' || *p == '\\') ? 2 : (*p < 0x20 || *p == 0x7f) ? 6 : 1;
    char *out = sk_arena_alloc(t->a, n + 1);
    if (!out) {
        t->oom = true;
        return NULL;
    }
    static const char hx[] = "0123456789abcdef";
    char *o = out;
    for (const unsigned char *p = (const unsigned char *)k; *p; p++) {
        if (*p == '"' || *p == '\\') {
            *o++ = '\\';
            *o++ = (char)*p;
        } else if (*p < 0x20 || *p == 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = hx[*p >> 4];
            o[5] = hx[*p & 15];
            o += 6;
        } else {
            *o++ = (char)*p;
        }
    }
    *o = 0;
    return out;
}

static void al_json(struct tr *t, const char *field, const Google__Protobuf__Struct *js,
                    struct sk_al_format *out)
{
    size_t o = pushf(t, field);
    out->json = true;
    out->njson = js->n_fields;
    out->json_keys = alarr(t, js->n_fields, sizeof(char *));
    out->json_vals = alarr(t, js->n_fields, sizeof(struct sk_al_format));
    for (size_t i = 0; i < js->n_fields && out->json_keys && out->json_vals; i++) {
        const Google__Protobuf__Struct__FieldsEntry *f = js->fields[i];
        out->json_keys[i] = json_key_escaped(t, f->key);
        const Google__Protobuf__Value *v = f->value;
        char num[64];
        const char *txt = NULL;
        if (v && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE) {
            txt = v->string_value;
        } else if (v && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE) {
            snprintf(num, sizeof(num), "%g", v->number_value);
            txt = num;
        } else if (v && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE) {
            txt = v->bool_value ? "true" : "false";
        } else {
            size_t ok = pushf(t, f->key);
            err(t, NULL, "only string, number and bool values are supported in json_format");
            pop(t, ok);
            continue;
        }
        size_t ok = pushf(t, f->key);
        al_text(t, NULL, txt, strlen(txt), &out->json_vals[i]);
        pop(t, ok);
    }
    pop(t, o);
}

static void al_subst(struct tr *t, const PbSubstFmt *sf, struct sk_al_format *out)
{
    size_t o = pushf(t, "log_format");
    out->omit_empty = sf->omit_empty_values;
    switch (sf->format_case) {
    case ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_TEXT_FORMAT:
        al_text(t, "text_format", sf->text_format, strlen(sf->text_format), out);
        break;
    case ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_JSON_FORMAT:
        al_json(t, "json_format", sf->json_format, out);
        break;
    case ENVOY__CONFIG__CORE__V3__SUBSTITUTION_FORMAT_STRING__FORMAT_TEXT_FORMAT_SOURCE: {
        const Envoy__Config__Core__V3__DataSource *ds = sf->text_format_source;
        if (ds->specifier_case == ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING)
            al_text(t, "text_format_source", ds->inline_string, strlen(ds->inline_string), out);
        else if (ds->specifier_case == ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES)
            al_text(t, "text_format_source", (const char *)ds->inline_bytes.data,
                    ds->inline_bytes.len, out);
        else
            err(t, "text_format_source", "only inline_string / inline_bytes are supported");
        break;
    }
    default:
        al_text(t, NULL, al_default_format, sizeof(al_default_format) - 1, out);
    }
    pop(t, o);
}

static struct sk_al_filter *al_filter(struct tr *t, const PbAlFilter *f)
{
    struct sk_al_filter *m = al(t, sizeof(*m));
    if (!m)
        return NULL;
    const Envoy__Config__Accesslog__V3__ComparisonFilter *cmp = NULL;
    switch (f->filter_specifier_case) {
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_STATUS_CODE_FILTER:
        m->kind = SK_ALF_STATUS;
        cmp = f->status_code_filter->comparison;
        break;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_DURATION_FILTER:
        m->kind = SK_ALF_DURATION;
        cmp = f->duration_filter->comparison;
        break;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_NOT_HEALTH_CHECK_FILTER:
        m->kind = SK_ALF_NOT_HEALTH_CHECK;
        break;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_RUNTIME_FILTER: {
        m->kind = SK_ALF_RUNTIME;
        const Envoy__Type__V3__FractionalPercent *fp = f->runtime_filter->percent_sampled;
        uint64_t num = fp ? fp->numerator : 0;
        uint64_t den = !fp ? 100 : fp->denominator == 1 ? 10000 : fp->denominator == 2 ? 1000000 : 100;
        if (!fp) /* Envoy: the runtime key's default; with no runtime, 0% */
            num = 0;
        m->sample_per_million = (uint32_t)(num >= den ? 1000000 : num * 1000000 / den);
        break;
    }
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_AND_FILTER:
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_OR_FILTER: {
        bool isand = f->filter_specifier_case ==
                     ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_AND_FILTER;
        m->kind = isand ? SK_ALF_AND : SK_ALF_OR;
        size_t n = isand ? f->and_filter->n_filters : f->or_filter->n_filters;
        PbAlFilter **v = isand ? f->and_filter->filters : f->or_filter->filters;
        size_t o = pushf(t, isand ? "and_filter" : "or_filter");
        m->sub = alarr(t, n, sizeof(*m->sub));
        m->nsub = m->sub ? n : 0;
        for (size_t i = 0; i < m->nsub; i++) {
            size_t oi = pushf(t, "filters");
            pushi(t, i);
            struct sk_al_filter *x = al_filter(t, v[i]);
            if (x)
                m->sub[i] = *x;
            pop(t, oi);
        }
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_HEADER_FILTER:
        m->kind = SK_ALF_HEADER;
        if (f->header_filter->header) {
            size_t o = pushf(t, "header_filter");
            size_t oh = pushf(t, "header");
            header_matcher(t, f->header_filter->header, &m->hm);
            pop(t, oh);
            pop(t, o);
        } else {
            err(t, "header_filter", "header is required");
        }
        break;
    case ENVOY__CONFIG__ACCESSLOG__V3__ACCESS_LOG_FILTER__FILTER_SPECIFIER_RESPONSE_FLAG_FILTER:
        m->kind = SK_ALF_FLAGS;
        m->nflags = f->response_flag_filter->n_flags;
        m->flags = alarr(t, m->nflags, sizeof(char *));
        for (size_t i = 0; m->flags && i < m->nflags; i++)
            m->flags[i] = dup(t, f->response_flag_filter->flags[i]);
        break;
    default:
        unsupported(t, "filter");
        return NULL;
    }
    if (cmp) {
        m->op = (int)cmp->op;
        m->value = cmp->value ? cmp->value->default_value : 0;
    }
    return m;
}

static void access_logs(struct tr *t, size_t n, PbAccessLog **v, struct sk_access_log **outv,
                        size_t *outn)
{
    if (!n)
        return;
    *outv = alarr(t, n, sizeof(**outv));
    if (!*outv)
        return;
    for (size_t i = 0; i < n; i++) {
        size_t o = pushf(t, "access_log");
        pushi(t, i);
        struct sk_access_log *l = &(*outv)[*outn];
        const PbAccessLog *pl = v[i];
        if (pl->filter) {
            size_t of = pushf(t, "filter");
            l->filter = al_filter(t, pl->filter);
            pop(t, of);
        }
        size_t ot = pushf(t, "typed_config");
        const PbAny *a = pl->typed_config;
        bool ok = true;
        if (!a && pl->name &&
            (strcmp(pl->name, "envoy.access_loggers.stdout") == 0 ||
             strcmp(pl->name, "envoy.access_loggers.stderr") == 0)) {
            /* by name with no typed_config: the stream logger with its default format */
            l->sink = strcmp(pl->name, "envoy.access_loggers.stdout") == 0 ? SK_AL_SINK_STDOUT
                                                                          : SK_AL_SINK_STDERR;
            al_text(t, NULL, al_default_format, sizeof(al_default_format) - 1, &l->fmt);
        } else if (!any_ok(t, a)) {
            ok = false;
        } else if (is_type(a, &envoy__extensions__access_loggers__file__v3__file_access_log__descriptor)) {
            Envoy__Extensions__AccessLoggers__File__V3__FileAccessLog *fl =
                unpack(t, a, &envoy__extensions__access_loggers__file__v3__file_access_log__descriptor);
            if (fl) {
                l->sink = SK_AL_SINK_FILE;
                if (empty(fl->path)) {
                    err(t, "path", "path is required");
                    ok = false;
                } else if (strcmp(fl->path, "/dev/stdout") == 0) {
                    l->sink = SK_AL_SINK_STDOUT;
                } else if (strcmp(fl->path, "/dev/stderr") == 0) {
                    l->sink = SK_AL_SINK_STDERR;
                } else {
                    l->path = dup(t, fl->path);
                }
                switch (fl->access_log_format_case) {
                case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_FORMAT:
                    al_text(t, "format", fl->format, strlen(fl->format), &l->fmt);
                    break;
                case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_JSON_FORMAT:
                    al_json(t, "json_format", fl->json_format, &l->fmt);
                    break;
                case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_TYPED_JSON_FORMAT:
                    al_json(t, "typed_json_format", fl->typed_json_format, &l->fmt);
                    break;
                case ENVOY__EXTENSIONS__ACCESS_LOGGERS__FILE__V3__FILE_ACCESS_LOG__ACCESS_LOG_FORMAT_LOG_FORMAT:
                    al_subst(t, fl->log_format, &l->fmt);
                    break;
                default:
                    al_text(t, NULL, al_default_format, sizeof(al_default_format) - 1, &l->fmt);
                }
                unpacked_free(fl);
            } else {
                ok = false;
            }
        } else if (is_type(a, &envoy__extensions__access_loggers__stream__v3__stdout_access_log__descriptor) ||
                   is_type(a, &envoy__extensions__access_loggers__stream__v3__stderr_access_log__descriptor)) {
            bool out = is_type(a, &envoy__extensions__access_loggers__stream__v3__stdout_access_log__descriptor);
            /* both messages have the same shape: log_format = 1 */
            Envoy__Extensions__AccessLoggers__Stream__V3__StdoutAccessLog *sl = unpack(
                t, a, &envoy__extensions__access_loggers__stream__v3__stdout_access_log__descriptor);
            if (sl) {
                l->sink = out ? SK_AL_SINK_STDOUT : SK_AL_SINK_STDERR;
                if (sl->log_format)
                    al_subst(t, sl->log_format, &l->fmt);
                else
                    al_text(t, NULL, al_default_format, sizeof(al_default_format) - 1, &l->fmt);
                unpacked_free(sl);
            } else {
                ok = false;
            }
        } else {
            err(t, NULL, "unsupported access logger type '%s'", any_type(a));
            ok = false;
        }
        pop(t, ot);
        if (ok && !t->oom && sk_al_compile(t->a, &l->fmt) < 0)
            t->oom = true; /* the flat form workers render (alformat.c) */
        if (ok)
            (*outn)++;
        pop(t, o);
    }
}

static struct sk_hcm *hcm(struct tr *t, const PbHcm *h)
{
    struct sk_hcm *m = al(t, sizeof(*m));
    if (!m)
        return NULL;
    switch (h->codec_type) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__AUTO:
        m->codec_type = SK_CODEC_AUTO;
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP1:
        m->codec_type = SK_CODEC_HTTP1;
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__CODEC_TYPE__HTTP2:
        m->codec_type = SK_CODEC_HTTP2;
        break;
    default:
        err(t, "codec_type", "codec_type HTTP3 is not supported by skiff");
        break;
    }
    if (empty(h->stat_prefix))
        err(t, "stat_prefix", "stat_prefix is required");
    m->stat_prefix = dup(t, h->stat_prefix);

    switch (h->route_specifier_case) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_ROUTE_CONFIG: {
        size_t o = pushf(t, "route_config");
        m->routes = route_config(t, h->route_config);
        pop(t, o);
        break;
    }
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__ROUTE_SPECIFIER_RDS: {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__Rds *r = h->rds;
        size_t o = pushf(t, "rds");
        if (empty(r->route_config_name))
            err(t, "route_config_name", "route_config_name is required");
        m->rds_name = dup(t, r->route_config_name);
        if (!t->snap->xds.ads)
            err(t, NULL, "RDS requires xDS (not configured: dynamic_resources.ads_config)");
        else if (!r->config_source ||
                 (r->config_source->config_source_specifier_case !=
                      ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS &&
                  r->config_source->config_source_specifier_case !=
                      ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_SELF))
            err(t, "config_source", "config_source must be ads");
        pop(t, o);
        break;
    }
    default:
        err(t, NULL, "one of route_config, rds is required");
        break;
    }

    http_filters(t, h, m);

    m->idle_timeout_ms = MS_PER_HOUR;
    m->max_headers_count = 100;
    m->max_stream_duration_ms = SK_DUR_NONE;
    if (h->common_http_protocol_options)
        hcm_protocol_options(t, h->common_http_protocol_options, m);
    if (h->http_protocol_options && h->http_protocol_options->accept_http_10)
        err(t, "http_protocol_options.accept_http_10", "HTTP/1.0 is not supported by skiff");
    m->h2_max_concurrent_streams = 2147483647u;
    m->h2_initial_stream_window_size = 268435456u;
    m->h2_initial_connection_window_size = 268435456u;
    m->h2_hpack_table_size = 4096;
    if (h->http2_protocol_options) {
        const PbHttp2Options *p = h->http2_protocol_options;
        size_t o = pushf(t, "http2_protocol_options");
        m->h2_max_concurrent_streams =
            u32w(p->max_concurrent_streams, m->h2_max_concurrent_streams);
        if (m->h2_max_concurrent_streams == 0 || m->h2_max_concurrent_streams > 2147483647u)
            err(t, "max_concurrent_streams", "must be 1-2147483647");
        m->h2_initial_stream_window_size =
            u32w(p->initial_stream_window_size, m->h2_initial_stream_window_size);
        if (m->h2_initial_stream_window_size < 65535 ||
            m->h2_initial_stream_window_size > 2147483647u)
            err(t, "initial_stream_window_size", "must be 65535-2147483647");
        m->h2_initial_connection_window_size =
            u32w(p->initial_connection_window_size, m->h2_initial_connection_window_size);
        if (m->h2_initial_connection_window_size < 65535 ||
            m->h2_initial_connection_window_size > 2147483647u)
            err(t, "initial_connection_window_size", "must be 65535-2147483647");
        m->h2_hpack_table_size = u32w(p->hpack_table_size, m->h2_hpack_table_size);
        if (p->allow_connect)
            m->allow_connect = true;
        if (p->connection_keepalive)
            unsupported(t, "connection_keepalive");
        pop(t, o);
    }
    m->server_name = dup(t, empty(h->server_name) ? "skiff" : h->server_name);
    m->server_header_transformation = (int)h->server_header_transformation;
    if (m->server_header_transformation < 0 || m->server_header_transformation > 2)
        err(t, "server_header_transformation", "unknown value");
    m->max_request_headers_kb = u32w(h->max_request_headers_kb, 60);
    if (m->max_request_headers_kb == 0 || m->max_request_headers_kb > 8192)
        err(t, "max_request_headers_kb", "must be 1-8192");
    m->stream_idle_timeout_ms =
        dur(t, "stream_idle_timeout", h->stream_idle_timeout, 5 * 60 * 1000, SK_DUR_NONE);
    m->request_timeout_ms = dur(t, "request_timeout", h->request_timeout, SK_DUR_NONE, SK_DUR_NONE);
    m->request_headers_timeout_ms =
        dur(t, "request_headers_timeout", h->request_headers_timeout, SK_DUR_NONE, SK_DUR_NONE);
    m->drain_timeout_ms = dur(t, "drain_timeout", h->drain_timeout, 5000, SK_DUR_NONE);
    (void)dur(t, "delayed_close_timeout", h->delayed_close_timeout, 0, 0); /* validated, ignored */
    access_logs(t, h->n_access_log, h->access_log, &m->access_logs, &m->naccess_logs);
    m->use_remote_address = boolw(h->use_remote_address, false);
    m->xff_num_trusted_hops = h->xff_num_trusted_hops;
    if (h->skip_xff_append)
        unsupported(t, "skip_xff_append");
    if (!empty(h->via))
        unsupported(t, "via");
    m->generate_request_id = boolw(h->generate_request_id, true);
    m->trace_random_ppm = m->trace_client_ppm = m->trace_overall_ppm = 1000000;
    if (h->tracing) {
        size_t o = pushf(t, "tracing");
        const Envoy__Type__V3__Percent *pc[3] = {h->tracing->random_sampling,
                                                 h->tracing->client_sampling,
                                                 h->tracing->overall_sampling};
        static const char *const pn[3] = {"random_sampling", "client_sampling",
                                          "overall_sampling"};
        uint32_t *out[3] = {&m->trace_random_ppm, &m->trace_client_ppm, &m->trace_overall_ppm};
        for (int i = 0; i < 3; i++) {
            if (!pc[i])
                continue;
            double v = pc[i]->value;
            if (!(v >= 0.0 && v <= 100.0)) /* also NaN */
                err(t, pn[i], "must be a percentage from 0 to 100");
            else
                *out[i] = (uint32_t)(v * 10000.0 + 0.5);
        }
        pop(t, o);
    }
    m->preserve_external_request_id = h->preserve_external_request_id;
    /* x-forwarded-client-cert handling (Envoy's modes and element fields) */
    m->forward_client_cert = (int)h->forward_client_cert_details;
    if (m->forward_client_cert < 0 || m->forward_client_cert > 4)
        err(t, "forward_client_cert_details", "unknown mode");
    if (h->set_current_client_cert_details) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager__SetCurrentClientCertDetails
            *sc = h->set_current_client_cert_details;
        m->xfcc_uri = sc->uri;
        m->xfcc_dns = sc->dns;
        m->xfcc_subject = sc->subject && sc->subject->value;
        if (sc->cert || sc->chain) {
            size_t o2 = pushf(t, "set_current_client_cert_details");
            unsupported(t, sc->cert ? "cert" : "chain");
            pop(t, o2);
        }
    }
    m->proxy_100_continue = h->proxy_100_continue;
    for (size_t i = 0; i < h->n_upgrade_configs; i++) {
        const Envoy__Extensions__Filters__Network__HttpConnectionManager__V3__HttpConnectionManager__UpgradeConfig
            *u = h->upgrade_configs[i];
        size_t o = push(t, ".upgrade_configs[%zu]", i);
        bool on = boolw(u->enabled, true);
        if (u->n_filters)
            unsupported(t, "filters");
        if (u->upgrade_type && strcasecmp(u->upgrade_type, "websocket") == 0)
            m->allow_websocket = on;
        else if (u->upgrade_type && strcmp(u->upgrade_type, "CONNECT") == 0)
            m->allow_connect = on;
        else
            err(t, "upgrade_type", "upgrade type '%s' is not supported by skiff",
                u->upgrade_type ? u->upgrade_type : "");
        pop(t, o);
    }
    m->normalize_path = boolw(h->normalize_path, false);
    m->merge_slashes = h->merge_slashes;
    if (h->path_with_escaped_slashes_action !=
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__PATH_WITH_ESCAPED_SLASHES_ACTION__IMPLEMENTATION_SPECIFIC_DEFAULT &&
        h->path_with_escaped_slashes_action !=
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__PATH_WITH_ESCAPED_SLASHES_ACTION__KEEP_UNCHANGED)
        unsupported(t, "path_with_escaped_slashes_action");
    if (h->strip_matching_host_port)
        unsupported(t, "strip_matching_host_port");
    if (h->strip_port_mode_case ==
            ENVOY__EXTENSIONS__FILTERS__NETWORK__HTTP_CONNECTION_MANAGER__V3__HTTP_CONNECTION_MANAGER__STRIP_PORT_MODE_STRIP_ANY_HOST_PORT &&
        h->strip_any_host_port)
        unsupported(t, "strip_any_host_port");
    if (h->strip_trailing_host_dot)
        unsupported(t, "strip_trailing_host_dot");
    if (h->append_x_forwarded_port)
        unsupported(t, "append_x_forwarded_port");
    return m;
}

/* ---- TCP proxy ---------------------------------------------------------------- */

static struct sk_tcp_proxy *tcp_proxy(struct tr *t, const PbTcpProxy *p)
{
    struct sk_tcp_proxy *m = al(t, sizeof(*m));
    if (!m)
        return NULL;
    if (empty(p->stat_prefix))
        err(t, "stat_prefix", "stat_prefix is required");
    m->stat_prefix = dup(t, p->stat_prefix);
    switch (p->cluster_specifier_case) {
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_CLUSTER:
        m->cluster_name = dup(t, p->cluster);
        m->cluster = cluster_ref(t, "cluster", p->cluster);
        break;
    case ENVOY__EXTENSIONS__FILTERS__NETWORK__TCP_PROXY__V3__TCP_PROXY__CLUSTER_SPECIFIER_WEIGHTED_CLUSTERS: {
        const Envoy__Extensions__Filters__Network__TcpProxy__V3__TcpProxy__WeightedCluster *w =
            p->weighted_clusters;
        size_t o = pushf(t, "weighted_clusters");
        if (w->n_clusters == 0)
            err(t, "clusters", "at least one cluster is required");
        m->weighted = alarr(t, w->n_clusters, sizeof(*m->weighted));
        m->nweighted = m->weighted ? w->n_clusters : 0;
        uint64_t sum = 0;
        for (size_t i = 0; i < m->nweighted; i++) {
            size_t oi = push(t, ".clusters[%zu]", i);
            m->weighted[i].name = dup(t, w->clusters[i]->name);
            m->weighted[i].cluster = cluster_ref(t, "name", w->clusters[i]->name);
            m->weighted[i].weight = w->clusters[i]->weight;
            if (w->clusters[i]->weight == 0)
                err(t, "weight", "weight must be at least 1");
            if (w->clusters[i]->metadata_match)
                unsupported(t, "metadata_match");
            sum += w->clusters[i]->weight;
            pop(t, oi);
        }
        if (sum > UINT32_MAX)
            err(t, "clusters", "total weight is over 4294967295");
        m->total_weight = (uint32_t)sum;
        pop(t, o);
        break;
    }
    default:
        err(t, NULL, "one of cluster, weighted_clusters is required");
        break;
    }
    if (p->metadata_match)
        unsupported(t, "metadata_match");
    m->idle_timeout_ms = dur(t, "idle_timeout", p->idle_timeout, MS_PER_HOUR, SK_DUR_NONE);
    m->max_connect_attempts = u32w(p->max_connect_attempts, 1);
    if (m->max_connect_attempts == 0)
        err(t, "max_connect_attempts", "max_connect_attempts must be at least 1");
    if (p->max_downstream_connection_duration)
        unsupported(t, "max_downstream_connection_duration");
    access_logs(t, p->n_access_log, p->access_log, &m->access_logs, &m->naccess_logs);
    /* backoff_options: accepted and ignored */
    return m;
}

/* ---- listeners ------------------------------------------------------------------ */

static char **str_list(struct tr *t, size_t n, char **v, bool lower)
{
    char **out = alarr(t, n, sizeof(char *));
    for (size_t i = 0; out && i < n; i++)
        out[i] = lower ? duplower(t, v[i]) : dup(t, v[i]);
    return out;
}

/* ---- TLS transport sockets (DownstreamTlsContext / UpstreamTlsContext) ---------------- */

typedef Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext PbCommonTls;
typedef Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext PbValidation;
typedef Envoy__Extensions__TransportSockets__Tls__V3__TlsParameters PbTlsParams;
typedef Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig PbSdsSecret;
typedef Envoy__Type__Matcher__V3__StringMatcher PbStringMatcher;

/* DataSource at the current path + field. A missing file is not an error here:
 * rotation may create it, and sk_tls_prepare reports material it cannot load. */
static void datasource(struct tr *t, const char *field,
                       const Envoy__Config__Core__V3__DataSource *d, struct sk_datasource *out)
{
    size_t o = pushf(t, field);
    switch (d->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
        if (empty(d->filename))
            err(t, "filename", "filename must not be empty");
        out->kind = SK_DS_FILE;
        out->filename = dup(t, d->filename);
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        if (d->inline_bytes.len == 0)
            err(t, "inline_bytes", "inline_bytes must not be empty");
        out->kind = SK_DS_INLINE;
        out->data = dupn(t, (const char *)d->inline_bytes.data, d->inline_bytes.len);
        out->len = d->inline_bytes.len;
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        if (empty(d->inline_string))
            err(t, "inline_string", "inline_string must not be empty");
        out->kind = SK_DS_INLINE;
        out->data = dup(t, d->inline_string);
        out->len = d->inline_string ? strlen(d->inline_string) : 0;
        break;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE:
        if (empty(d->environment_variable))
            err(t, "environment_variable", "environment_variable must not be empty");
        out->kind = SK_DS_ENV;
        out->data = dup(t, d->environment_variable);
        out->len = d->environment_variable ? strlen(d->environment_variable) : 0;
        break;
    default:
        err(t, NULL,
            "one of filename, inline_bytes, inline_string, environment_variable is "
            "required");
        break;
    }
    pop(t, o);
}

/* StringMatcher (exact / prefix / suffix / contains) for a SAN matcher, at the
 * current path. */
static void san_string_matcher(struct tr *t, const PbStringMatcher *s, int san_type,
                               struct sk_san_matcher *m)
{
    const char *v = NULL, *vfield = NULL;
    m->san_type = san_type;
    m->ignore_case = s->ignore_case;
    int kind = 0;
    v = string_matcher_kind(t, s, "SAN ", &kind, &vfield);
    if (!v)
        return;
    m->kind = kind;
    if (empty(v)) {
        err(t, vfield, "%s must not be empty", vfield);
        return;
    }
    m->value = dup(t, v);
}

/* CertificateValidationContext at the current path. */
static void validation_context(struct tr *t, const PbValidation *v, struct sk_tls_cfg *c)
{
    if (v->trusted_ca)
        datasource(t, "trusted_ca", v->trusted_ca, &c->trusted_ca);
    if (v->ca_certificate_provider_instance)
        unsupported(t, "ca_certificate_provider_instance");
    if (v->system_root_certs)
        unsupported(t, "system_root_certs");
    if (v->n_verify_certificate_spki)
        unsupported(t, "verify_certificate_spki");
    if (v->n_verify_certificate_hash)
        unsupported(t, "verify_certificate_hash");
    if (boolw(v->require_signed_certificate_timestamp, false))
        unsupported(t, "require_signed_certificate_timestamp");
    if (v->crl)
        unsupported(t, "crl");
    if (v->custom_validator_config)
        unsupported(t, "custom_validator_config");
    if (v->trust_chain_verification !=
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__CERTIFICATE_VALIDATION_CONTEXT__TRUST_CHAIN_VERIFICATION__VERIFY_TRUST_CHAIN)
        unsupported(t, "trust_chain_verification");
    if (v->max_verify_depth)
        unsupported(t, "max_verify_depth");
    /* only_verify_leaf_cert_crl: meaningless without crl; accepted */
    c->allow_expired = v->allow_expired_certificate;
    /* Envoy: when both are given, the deprecated untyped list is ignored */
    if (v->n_match_typed_subject_alt_names) {
        c->san = alarr(t, v->n_match_typed_subject_alt_names, sizeof(*c->san));
        c->nsan = c->san ? v->n_match_typed_subject_alt_names : 0;
        for (size_t i = 0; i < c->nsan; i++) {
            const Envoy__Extensions__TransportSockets__Tls__V3__SubjectAltNameMatcher *m =
                v->match_typed_subject_alt_names[i];
            size_t o = push(t, "%smatch_typed_subject_alt_names[%zu]", t->plen ? "." : "", i);
            int st = -1;
            switch (m->san_type) {
            case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SUBJECT_ALT_NAME_MATCHER__SAN_TYPE__EMAIL:
                st = SK_SAN_EMAIL;
                break;
            case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SUBJECT_ALT_NAME_MATCHER__SAN_TYPE__DNS:
                st = SK_SAN_DNS;
                break;
            case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SUBJECT_ALT_NAME_MATCHER__SAN_TYPE__URI:
                st = SK_SAN_URI;
                break;
            case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SUBJECT_ALT_NAME_MATCHER__SAN_TYPE__IP_ADDRESS:
                st = SK_SAN_IP;
                break;
            case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SUBJECT_ALT_NAME_MATCHER__SAN_TYPE__OTHER_NAME:
                err(t, "san_type", "san_type OTHER_NAME is not supported by skiff");
                break;
            default:
                err(t, "san_type", "san_type is required (EMAIL, DNS, URI or IP_ADDRESS)");
                break;
            }
            if (!m->matcher) {
                err(t, "matcher", "matcher is required");
            } else if (st >= 0) {
                size_t om = pushf(t, "matcher");
                san_string_matcher(t, m->matcher, st, &c->san[i]);
                pop(t, om);
            }
            pop(t, o);
        }
    } else if (v->n_match_subject_alt_names) {
        c->san = alarr(t, v->n_match_subject_alt_names, sizeof(*c->san));
        c->nsan = c->san ? v->n_match_subject_alt_names : 0;
        for (size_t i = 0; i < c->nsan; i++) {
            size_t o = push(t, "%smatch_subject_alt_names[%zu]", t->plen ? "." : "", i);
            san_string_matcher(t, v->match_subject_alt_names[i], SK_SAN_ANY, &c->san[i]);
            pop(t, o);
        }
    }
}

static char *sds_name(struct tr *t, const char *field, const PbSdsSecret *s)
{
    size_t o = pushf(t, field);
    char *name = NULL;
    if (empty(s->name))
        err(t, "name", "name is required");
    else
        name = dup(t, s->name); /* kept on error too: no follow-on errors */
    /* sds_config: ads, or its own SecretDiscoveryService stream (api_config_source
     * GRPC to a static cluster, as istio-agent serves it) */
    const PbConfigSource *cs = s->sds_config;
    const Envoy__Config__Core__V3__ApiConfigSource *api =
        cs && cs->config_source_specifier_case ==
                  ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_API_CONFIG_SOURCE
            ? cs->api_config_source
            : NULL;
    if (api) {
        const Envoy__Config__Core__V3__GrpcService *g =
            api->n_grpc_services == 1 ? api->grpc_services[0] : NULL;
        if (api->api_type != ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__GRPC)
            err(t, "sds_config.api_config_source.api_type",
                "only api_type GRPC (state of the world) is supported");
        else if (!g || g->target_specifier_case !=
                           ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC ||
                 !g->envoy_grpc || empty(g->envoy_grpc->cluster_name))
            err(t, "sds_config.api_config_source.grpc_services",
                "exactly one grpc_services entry with envoy_grpc.cluster_name is required");
        else if (t->snap->xds.sds_cluster &&
                 strcmp(t->snap->xds.sds_cluster, g->envoy_grpc->cluster_name) != 0)
            err(t, "sds_config", "all SDS secrets must come from one SDS cluster ('%s')",
                t->snap->xds.sds_cluster);
        else if (!t->snap->xds.sds_cluster)
            t->snap->xds.sds_cluster = dup(t, g->envoy_grpc->cluster_name);
    } else if (!t->snap->xds.ads) {
        err(t, NULL, "SDS requires xDS (dynamic_resources.ads_config, or sds_config with "
                     "api_config_source GRPC)");
    }
    pop(t, o);
    return name;
}

static int tls_version(struct tr *t, const char *field, int v)
{
    switch (v) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLS_AUTO:
        return 0;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLSv1_2:
        return 3;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLSv1_3:
        return 4;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLSv1_0:
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_PARAMETERS__TLS_PROTOCOL__TLSv1_1:
        err(t, field, "TLS < 1.2 not supported");
        return 0;
    }
    err(t, field, "unknown TLS version %d", v);
    return 0;
}

/* A repeated string joined with ':' (OpenSSL list syntax); elements must be
 * non-empty and free of ':' and spaces. NULL when empty. */
static char *join_list(struct tr *t, const char *field, size_t n, char **v)
{
    if (n == 0)
        return NULL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = v[i] ? v[i] : "";
        if (!*s || strpbrk(s, ": \t")) {
            size_t o = push(t, "%s%s[%zu]", t->plen ? "." : "", field, i);
            err(t, NULL, "invalid %s entry '%s'", field, s);
            pop(t, o);
        }
        total += strlen(s) + 1;
    }
    char *out = al(t, total + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(out, ":");
        strcat(out, v[i] ? v[i] : "");
    }
    return out;
}

static void tls_params(struct tr *t, const PbTlsParams *p, struct sk_tls_cfg *c)
{
    size_t o = pushf(t, "tls_params");
    c->min_version =
        tls_version(t, "tls_minimum_protocol_version", p->tls_minimum_protocol_version);
    c->max_version =
        tls_version(t, "tls_maximum_protocol_version", p->tls_maximum_protocol_version);
    if (c->min_version && c->max_version && c->min_version > c->max_version)
        err(t, "tls_minimum_protocol_version",
            "tls_minimum_protocol_version is above tls_maximum_protocol_version");
    c->cipher_suites = join_list(t, "cipher_suites", p->n_cipher_suites, p->cipher_suites);
    c->ecdh_curves = join_list(t, "ecdh_curves", p->n_ecdh_curves, p->ecdh_curves);
    if (p->n_signature_algorithms)
        unsupported(t, "signature_algorithms");
    if (p->n_compliance_policies)
        unsupported(t, "compliance_policies");
    pop(t, o);
}

/* CommonTlsContext at the current path ("...typed_config.common_tls_context"). */
static void common_tls(struct tr *t, const PbCommonTls *ct, struct sk_tls_cfg *c)
{
    size_t o = pushf(t, "common_tls_context");
    if (ct->tls_params)
        tls_params(t, ct->tls_params, c);
    if (ct->n_tls_certificates > 1) {
        err(t, "tls_certificates", "only one certificate supported");
    } else if (ct->n_tls_certificates == 1) {
        const Envoy__Extensions__TransportSockets__Tls__V3__TlsCertificate *tc =
            ct->tls_certificates[0];
        size_t oc = pushf(t, "tls_certificates[0]");
        if (tc->certificate_chain)
            datasource(t, "certificate_chain", tc->certificate_chain, &c->cert_chain);
        else
            err(t, "certificate_chain", "certificate_chain is required");
        if (tc->private_key)
            datasource(t, "private_key", tc->private_key, &c->private_key);
        else
            err(t, "private_key", "private_key is required");
        if (tc->password)
            unsupported(t, "password");
        if (tc->ocsp_staple)
            unsupported(t, "ocsp_staple");
        if (tc->pkcs12)
            unsupported(t, "pkcs12");
        if (tc->private_key_provider)
            unsupported(t, "private_key_provider");
        if (tc->n_signed_certificate_timestamp)
            unsupported(t, "signed_certificate_timestamp");
        pop(t, oc);
    }
    if (ct->n_tls_certificate_sds_secret_configs > 1) {
        err(t, "tls_certificate_sds_secret_configs", "only one certificate supported");
    } else if (ct->n_tls_certificate_sds_secret_configs == 1 && ct->n_tls_certificates == 0) {
        /* Envoy: with tls_certificates set, the SDS configs are ignored */
        c->sds_cert_name = sds_name(t, "tls_certificate_sds_secret_configs[0]",
                                    ct->tls_certificate_sds_secret_configs[0]);
    }
    if (ct->tls_certificate_provider_instance)
        unsupported(t, "tls_certificate_provider_instance");
    if (ct->tls_certificate_certificate_provider)
        unsupported(t, "tls_certificate_certificate_provider");
    if (ct->tls_certificate_certificate_provider_instance)
        unsupported(t, "tls_certificate_certificate_provider_instance");
    if (ct->custom_tls_certificate_selector)
        unsupported(t, "custom_tls_certificate_selector");
    if (ct->custom_handshaker)
        unsupported(t, "custom_handshaker");
    if (ct->key_log)
        unsupported(t, "key_log");
    /* read_ahead_buffer_size: a performance hint; accepted and ignored */
    switch (ct->validation_context_type_case) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT: {
        size_t ov = pushf(t, "validation_context");
        validation_context(t, ct->validation_context, c);
        pop(t, ov);
        break;
    }
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_SDS_SECRET_CONFIG:
        c->sds_ca_name = sds_name(t, "validation_context_sds_secret_config",
                                  ct->validation_context_sds_secret_config);
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_COMBINED_VALIDATION_CONTEXT: {
        const Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext__CombinedCertificateValidationContext
            *cv = ct->combined_validation_context;
        size_t ov = pushf(t, "combined_validation_context");
        if (cv->default_validation_context) {
            size_t od = pushf(t, "default_validation_context");
            validation_context(t, cv->default_validation_context, c);
            pop(t, od);
        } else {
            err(t, "default_validation_context", "default_validation_context is required");
        }
        if (cv->validation_context_sds_secret_config)
            c->sds_ca_name = sds_name(t, "validation_context_sds_secret_config",
                                      cv->validation_context_sds_secret_config);
        else
            err(t, "validation_context_sds_secret_config",
                "validation_context_sds_secret_config is required");
        if (cv->validation_context_certificate_provider)
            unsupported(t, "validation_context_certificate_provider");
        if (cv->validation_context_certificate_provider_instance)
            unsupported(t, "validation_context_certificate_provider_instance");
        pop(t, ov);
        break;
    }
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_CERTIFICATE_PROVIDER:
        unsupported(t, "validation_context_certificate_provider");
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_CERTIFICATE_PROVIDER_INSTANCE:
        unsupported(t, "validation_context_certificate_provider_instance");
        break;
    default:
        break;
    }
    c->alpn = str_list(t, ct->n_alpn_protocols, ct->alpn_protocols, false);
    c->nalpn = c->alpn ? ct->n_alpn_protocols : 0;
    for (size_t i = 0; i < c->nalpn; i++)
        if (empty(c->alpn[i]) || strlen(c->alpn[i]) > 255) {
            size_t oa = push(t, ".alpn_protocols[%zu]", i);
            err(t, NULL, "ALPN protocol names must be 1-255 bytes");
            pop(t, oa);
        }
    bool has_ca = c->trusted_ca.kind != SK_DS_NONE || c->sds_ca_name;
    if (c->nsan && !has_ca)
        err(t, "validation_context",
            "subject alt name matching without trusted_ca is insecure and not allowed");
    pop(t, o);
}

static struct sk_tls_cfg *downstream_tls(struct tr *t, const PbAny *a)
{
    const ProtobufCMessageDescriptor *d =
        &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor;
    Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *p = unpack(t, a, d);
    if (!p)
        return NULL;
    struct sk_tls_cfg *c = al(t, sizeof(*c));
    if (c) {
        c->is_server = true;
        c->max_session_keys = 1;
        if (p->common_tls_context)
            common_tls(t, p->common_tls_context, c);
        if (c->cert_chain.kind == SK_DS_NONE && !c->sds_cert_name)
            err(t, "common_tls_context",
                "a DownstreamTlsContext needs a certificate (tls_certificates or "
                "tls_certificate_sds_secret_configs)");
        c->require_client_cert = boolw(p->require_client_certificate, false);
        if (c->require_client_cert && c->trusted_ca.kind == SK_DS_NONE && !c->sds_ca_name)
            err(t, "require_client_certificate",
                "require_client_certificate needs a validation context with trusted_ca");
        if (boolw(p->require_sni, false))
            unsupported(t, "require_sni");
        switch (p->session_ticket_keys_type_case) {
        case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__SESSION_TICKET_KEYS_TYPE_SESSION_TICKET_KEYS:
            unsupported(t, "session_ticket_keys");
            break;
        case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__SESSION_TICKET_KEYS_TYPE_SESSION_TICKET_KEYS_SDS_SECRET_CONFIG:
            unsupported(t, "session_ticket_keys_sds_secret_config");
            break;
        case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__SESSION_TICKET_KEYS_TYPE_DISABLE_STATELESS_SESSION_RESUMPTION:
            if (p->disable_stateless_session_resumption)
                unsupported(t, "disable_stateless_session_resumption");
            break;
        default:
            break;
        }
        if (p->disable_stateful_session_resumption)
            unsupported(t, "disable_stateful_session_resumption");
        if (p->session_timeout) {
            if (p->session_timeout->seconds >= 4294967296LL)
                err(t, "session_timeout", "session_timeout must be less than 2^32 seconds");
            else
                c->session_timeout_ms = dur(t, "session_timeout", p->session_timeout, 0, 0);
        }
        if (p->ocsp_staple_policy !=
            ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__OCSP_STAPLE_POLICY__LENIENT_STAPLING)
            unsupported(t, "ocsp_staple_policy");
        if (p->prefer_client_ciphers)
            unsupported(t, "prefer_client_ciphers");
        /* full_scan_certs_on_sni_mismatch: one certificate only; accepted */
    }
    unpacked_free(p);
    return c;
}

static struct sk_tls_cfg *upstream_tls(struct tr *t, const PbAny *a)
{
    const ProtobufCMessageDescriptor *d =
        &envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor;
    Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *p = unpack(t, a, d);
    if (!p)
        return NULL;
    struct sk_tls_cfg *c = al(t, sizeof(*c));
    if (c) {
        c->is_server = false;
        if (p->common_tls_context)
            common_tls(t, p->common_tls_context, c);
        if (!empty(p->sni)) {
            if (strlen(p->sni) > 255)
                err(t, "sni", "sni must be at most 255 bytes");
            c->sni = dup(t, p->sni);
        }
        if (p->allow_renegotiation)
            unsupported(t, "allow_renegotiation");
        c->max_session_keys = u32w(p->max_session_keys, 1);
        if (p->auto_host_sni)
            unsupported(t, "auto_host_sni");
        if (p->auto_sni_san_validation)
            unsupported(t, "auto_sni_san_validation");
        /* enforce_rsa_key_usage: deprecated, ignored by Envoy too */
        if (c->trusted_ca.kind == SK_DS_NONE && !c->sds_ca_name)
            sk_warn("config: %s: upstream TLS without trusted_ca: the server certificate "
                    "will not be verified",
                    t->path); /* allowed, like Envoy */
    }
    unpacked_free(p);
    return c;
}

/* transport_socket of a filter chain or a cluster, at the current path. */
static void transport_socket(struct tr *t, const PbTransportSocket *ts, bool server,
                             struct sk_tls_cfg **tls)
{
    *tls = NULL;
    size_t o = pushf(t, "transport_socket");
    size_t ot = pushf(t, "typed_config");
    const PbAny *a =
        ts->config_type_case == ENVOY__CONFIG__CORE__V3__TRANSPORT_SOCKET__CONFIG_TYPE_TYPED_CONFIG
            ? ts->typed_config
            : NULL;
    const ProtobufCMessageDescriptor *down =
        &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor;
    const ProtobufCMessageDescriptor *up =
        &envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor;
    if (!any_ok(t, a)) {
    } else if (is_type(
                   a,
                   &envoy__extensions__transport_sockets__raw_buffer__v3__raw_buffer__descriptor)) {
    } else if (server && is_type(a, down)) {
        *tls = downstream_tls(t, a);
    } else if (!server && is_type(a, up)) {
        *tls = upstream_tls(t, a);
    } else if (is_type(a, down) || is_type(a, up)) {
        err(t, NULL, "%s cannot be used on a %s", any_type(a),
            server ? "listener filter chain (use DownstreamTlsContext)"
                   : "cluster (use UpstreamTlsContext)");
    } else {
        err(t, NULL, "unsupported transport socket '%s'", any_type(a));
    }
    pop(t, ot);
    pop(t, o);
}

static void chain_match(struct tr *t, const PbFilterChainMatch *fm, struct sk_chain_match *m)
{
    size_t o = pushf(t, "filter_chain_match");
    if (fm->destination_port) {
        if (fm->destination_port->value < 1 || fm->destination_port->value > 65535)
            err(t, "destination_port", "destination_port must be 1-65535");
        m->destination_port = fm->destination_port->value;
    }
    if (fm->n_prefix_ranges)
        unsupported(t, "prefix_ranges");
    if (fm->n_direct_source_prefix_ranges)
        unsupported(t, "direct_source_prefix_ranges");
    if (fm->source_type !=
        ENVOY__CONFIG__LISTENER__V3__FILTER_CHAIN_MATCH__CONNECTION_SOURCE_TYPE__ANY)
        unsupported(t, "source_type");
    if (fm->n_source_prefix_ranges)
        unsupported(t, "source_prefix_ranges");
    if (fm->n_source_ports)
        unsupported(t, "source_ports");
    for (size_t i = 0; i < fm->n_server_names; i++)
        if (!valid_domain(fm->server_names[i]) ||
            (strchr(fm->server_names[i], '*') && strncmp(fm->server_names[i], "*.", 2) != 0)) {
            size_t oi = push(t, ".server_names[%zu]", i);
            err(t, NULL, "invalid server name '%s' (only exact names and '*.suffix')",
                fm->server_names[i] ? fm->server_names[i] : "");
            pop(t, oi);
        }
    m->server_names = str_list(t, fm->n_server_names, fm->server_names, true);
    m->nserver_names = m->server_names ? fm->n_server_names : 0;
    if (!empty(fm->transport_protocol))
        m->transport_protocol = dup(t, fm->transport_protocol);
    m->application_protocols =
        str_list(t, fm->n_application_protocols, fm->application_protocols, false);
    m->napplication_protocols = m->application_protocols ? fm->n_application_protocols : 0;
    pop(t, o);
}

/* skiff.toxics.v1.Toxics (L4 toxics, toxics.h): listener network filter in front
 * of tcp_proxy, or Cluster.filters. The current path is the typed_config. */
static struct sk_toxics_cfg *toxics_cfg(struct tr *t, const PbAny *a)
{
    Skiff__Toxics__V1__Toxics *p = unpack(t, a, &skiff__toxics__v1__toxics__descriptor);
    if (!p)
        return NULL;
    struct sk_toxics_cfg *m = al(t, sizeof(*m));
    if (p->n_toxics == 0)
        err(t, "toxics", "at least one toxic is required");
    else if (p->n_toxics > SK_TOXICS_MAX)
        err(t, "toxics", "at most %d toxics per filter (got %zu)", SK_TOXICS_MAX, p->n_toxics);
    if (m && p->n_toxics && p->n_toxics <= SK_TOXICS_MAX)
        m->v = alarr(t, p->n_toxics, sizeof(*m->v));
    unsigned seen[2] = {0, 0}; /* kinds per stream */
    for (size_t i = 0; m && m->v && i < p->n_toxics; i++) {
        const Skiff__Toxics__V1__Toxic *x = p->toxics[i];
        struct sk_toxic *o = &m->v[m->n++];
        size_t oi = push(t, ".toxics[%zu]", i);
        o->name = dup(t, x->name);
        for (size_t j = 0; j < i && !empty(x->name); j++)
            if (strcmp(p->toxics[j]->name ? p->toxics[j]->name : "", x->name) == 0)
                err(t, "name", "duplicate toxic name '%s'", x->name);
        o->stream = x->stream == SKIFF__TOXICS__V1__TOXIC__STREAM__DOWNSTREAM ? SK_TOXIC_DOWNSTREAM
                                                                               : SK_TOXIC_UPSTREAM;
        o->toxicity = x->toxicity ? x->toxicity->value : 1.0;
        if (!(o->toxicity >= 0.0 && o->toxicity <= 1.0))
            err(t, "toxicity", "toxicity must be between 0 and 1 (got %g)", o->toxicity);
        switch (x->type_case) {
        case SKIFF__TOXICS__V1__TOXIC__TYPE_LATENCY:
            o->kind = SK_TOXIC_LATENCY;
            o->latency_ms = x->latency->latency_ms;
            o->jitter_ms = x->latency->jitter_ms;
            break;
        case SKIFF__TOXICS__V1__TOXIC__TYPE_BANDWIDTH:
            o->kind = SK_TOXIC_BANDWIDTH;
            o->rate_kbps = x->bandwidth->rate_kbps;
            if (o->rate_kbps == 0)
                err(t, "bandwidth.rate_kbps", "rate_kbps must be greater than 0");
            break;
        case SKIFF__TOXICS__V1__TOXIC__TYPE_SLOW_CLOSE:
            o->kind = SK_TOXIC_SLOW_CLOSE;
            o->delay_ms = x->slow_close->delay_ms;
            break;
        case SKIFF__TOXICS__V1__TOXIC__TYPE_TIMEOUT:
            o->kind = SK_TOXIC_TIMEOUT;
            o->timeout_ms = x->timeout->timeout_ms;
            break;
        case SKIFF__TOXICS__V1__TOXIC__TYPE_RESET_PEER:
            o->kind = SK_TOXIC_RESET_PEER;
            o->timeout_ms = x->reset_peer->timeout_ms;
            break;
        case SKIFF__TOXICS__V1__TOXIC__TYPE_SLICER:
            o->kind = SK_TOXIC_SLICER;
            o->average_size = x->slicer->average_size;
            o->size_variation = x->slicer->size_variation;
            o->delay_us = x->slicer->delay_us;
            if (o->average_size == 0)
                err(t, "slicer.average_size", "average_size must be greater than 0");
            else if (o->size_variation >= o->average_size)
                err(t, "slicer.size_variation", "size_variation must be less than average_size");
            break;
        case SKIFF__TOXICS__V1__TOXIC__TYPE_LIMIT_DATA:
            o->kind = SK_TOXIC_LIMIT_DATA;
            o->bytes = x->limit_data->bytes;
            break;
        default:
            o->kind = -1;
            err(t, NULL,
                "a toxic needs a type: one of latency, bandwidth, slow_close, timeout, "
                "reset_peer, slicer, limit_data");
            break;
        }
        if (o->kind >= 0) {
            unsigned bit = 1u << o->kind;
            if (seen[o->stream] & bit)
                err(t, NULL, "two %s toxics on the %s stream (one per kind and stream)",
                    sk_toxic_kind_name(o->kind),
                    o->stream == SK_TOXIC_UPSTREAM ? "upstream" : "downstream");
            seen[o->stream] |= bit;
        }
        pop(t, oi);
    }
    unpacked_free(p);
    return m;
}

/* Network filters: exactly one terminal (HCM or tcp_proxy), last. */
static void chain_filters(struct tr *t, const PbFilterChain *fc, struct sk_filter_chain *c)
{
    if (fc->n_filters == 0) {
        err(t, "filters",
            "a filter chain needs a terminal network filter "
            "(http_connection_manager or tcp_proxy)");
        return;
    }
    size_t o = pushf(t, "filters");
    for (size_t i = 0; i < fc->n_filters; i++) {
        const PbFilter *f = fc->filters[i];
        bool last = i + 1 == fc->n_filters;
        size_t oi = pushi(t, i);
        if (f->config_type_case ==
            ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_CONFIG_DISCOVERY) {
            unsupported(t, "config_discovery");
            pop(t, oi);
            continue;
        }
        size_t ot = pushf(t, "typed_config");
        const PbAny *a =
            f->config_type_case == ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG
                ? f->typed_config
                : NULL;
        const ProtobufCMessageDescriptor *hd =
            &envoy__extensions__filters__network__http_connection_manager__v3__http_connection_manager__descriptor;
        const ProtobufCMessageDescriptor *td =
            &envoy__extensions__filters__network__tcp_proxy__v3__tcp_proxy__descriptor;
        if (!any_ok(t, a)) {
        } else if (is_type(a, hd) || is_type(a, td)) {
            if (!last) {
                err(t, NULL, "'%s' is a terminal filter and must be the last in the chain",
                    any_type(a));
            } else if (is_type(a, hd)) {
                PbHcm *h = unpack(t, a, hd);
                if (h) {
                    c->kind = SK_CHAIN_HCM;
                    c->hcm = hcm(t, h);
                }
                unpacked_free(h);
            } else {
                PbTcpProxy *p = unpack(t, a, td);
                if (p) {
                    c->kind = SK_CHAIN_TCP;
                    c->tcp = tcp_proxy(t, p);
                }
                unpacked_free(p);
            }
        } else if (is_type(a, &skiff__toxics__v1__toxics__descriptor)) {
            /* L4 toxics on the client's connection: only tcp_proxy chains
             * (HTTP: put them on the cluster's filters) */
            const PbFilter *lf = fc->filters[fc->n_filters - 1];
            const PbAny *la =
                lf->config_type_case == ENVOY__CONFIG__LISTENER__V3__FILTER__CONFIG_TYPE_TYPED_CONFIG
                    ? lf->typed_config
                    : NULL;
            if (last || !la || !is_type(la, td))
                err(t, NULL,
                    "skiff.toxics.v1.Toxics goes in front of "
                    "envoy.filters.network.tcp_proxy (for HTTP use the cluster's filters)");
            else if (c->toxics)
                err(t, NULL, "only one skiff.toxics.v1.Toxics filter per filter chain");
            else
                c->toxics = toxics_cfg(t, a);
        } else {
            err(t, NULL, "unsupported network filter '%s'", any_type(a));
        }
        pop(t, ot);
        pop(t, oi);
    }
    pop(t, o);
}

static void filter_chain(struct tr *t, const PbFilterChain *fc, struct sk_filter_chain *c,
                         bool is_default)
{
    if (!empty(fc->name))
        c->name = dup(t, fc->name);
    if (fc->filter_chain_match && !is_default)
        chain_match(t, fc->filter_chain_match, &c->match);
    chain_filters(t, fc, c);
    if (boolw(fc->use_proxy_proto, false))
        unsupported(t, "use_proxy_proto");
    if (fc->transport_socket)
        transport_socket(t, fc->transport_socket, true, &c->tls);
    (void)dur(t, "transport_socket_connect_timeout", fc->transport_socket_connect_timeout, 0, 0);
}

static bool str_set_eq(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        bool found = false;
        for (size_t j = 0; j < nb && !found; j++)
            found = a[i] && b[j] && strcmp(a[i], b[j]) == 0;
        if (!found)
            return false;
    }
    return true;
}

static bool chain_match_eq(const struct sk_chain_match *x, const struct sk_chain_match *y)
{
    if (x->destination_port != y->destination_port)
        return false;
    if ((x->transport_protocol == NULL) != (y->transport_protocol == NULL))
        return false;
    if (x->transport_protocol && strcmp(x->transport_protocol, y->transport_protocol) != 0)
        return false;
    return str_set_eq(x->server_names, x->nserver_names, y->server_names, y->nserver_names) &&
           str_set_eq(x->application_protocols, x->napplication_protocols, y->application_protocols,
                      y->napplication_protocols);
}

static void listener_filters(struct tr *t, const PbListener *pl)
{
    const ProtobufCMessageDescriptor *ok[] = {
        &envoy__extensions__filters__listener__tls_inspector__v3__tls_inspector__descriptor,
        &envoy__extensions__filters__listener__original_dst__v3__original_dst__descriptor,
        &envoy__extensions__filters__listener__http_inspector__v3__http_inspector__descriptor,
    };
    for (size_t i = 0; i < pl->n_listener_filters; i++) {
        const PbListenerFilter *f = pl->listener_filters[i];
        size_t o = push(t, ".listener_filters[%zu]", i);
        if (f->config_type_case ==
            ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER__CONFIG_TYPE_CONFIG_DISCOVERY) {
            unsupported(t, "config_discovery");
        } else {
            size_t ot = pushf(t, "typed_config");
            const PbAny *a =
                f->config_type_case ==
                        ENVOY__CONFIG__LISTENER__V3__LISTENER_FILTER__CONFIG_TYPE_TYPED_CONFIG
                    ? f->typed_config
                    : NULL;
            if (any_ok(t, a)) {
                size_t k = 0;
                while (k < sizeof(ok) / sizeof(ok[0]) && !is_type(a, ok[k]))
                    k++;
                if (k == sizeof(ok) / sizeof(ok[0]))
                    err(t, NULL, "unsupported listener filter '%s'", any_type(a));
                else
                    unpacked_free(unpack(t, a, ok[k])); /* validates; nothing recorded yet */
            }
            pop(t, ot);
        }
        /* filter_disabled: accepted; the inspectors are not run yet anyway */
        pop(t, o);
    }
}

static void listener(struct tr *t, const PbListener *pl, struct sk_listener *l)
{
    if (empty(pl->name))
        err(t, "name", "name is required");
    l->name = dup(t, pl->name);
    size_t o = pushf(t, "address");
    if (address(t, pl->address, ADDR_NEED_IP | ADDR_PORT0_OK, NULL, NULL, &l->addr))
        l->addr_str = addr_str(t, &l->addr);
    pop(t, o);
    if (pl->n_additional_addresses)
        unsupported(t, "additional_addresses");
    if (pl->n_filter_chains == 0 && !pl->default_filter_chain)
        err(t, "filter_chains", "at least one filter chain (or default_filter_chain) is required");
    l->chains = alarr(t, pl->n_filter_chains, sizeof(*l->chains));
    l->nchains = l->chains ? pl->n_filter_chains : 0;
    for (size_t i = 0; i < l->nchains; i++) {
        size_t oc = push(t, ".filter_chains[%zu]", i);
        filter_chain(t, pl->filter_chains[i], &l->chains[i], false);
        for (size_t j = 0; j < i; j++)
            if (chain_match_eq(&l->chains[i].match, &l->chains[j].match)) {
                err(t, "filter_chain_match",
                    "filter chains [%zu] and [%zu] have the same filter_chain_match", j, i);
                break;
            }
        pop(t, oc);
    }
    if (pl->default_filter_chain) {
        l->default_chain = al(t, sizeof(*l->default_chain));
        if (l->default_chain) {
            size_t od = pushf(t, "default_filter_chain");
            filter_chain(t, pl->default_filter_chain, l->default_chain, true);
            pop(t, od);
        }
    }
    l->bind_to_port = boolw(pl->bind_to_port, true);
    l->use_original_dst = boolw(pl->use_original_dst, false);
    l->per_connection_buffer_limit_bytes =
        u32w(pl->per_connection_buffer_limit_bytes, DEFAULT_BUFFER_LIMIT);
    l->tcp_backlog_size = u32w(pl->tcp_backlog_size, 1024);
    listener_filters(t, pl);
    (void)dur(t, "listener_filters_timeout", pl->listener_filters_timeout, 0, 0);
    if (boolw(pl->transparent, false))
        unsupported(t, "transparent");
    if (boolw(pl->freebind, false))
        unsupported(t, "freebind");
    /* accepted and ignored: stat_prefix, metadata, drain_type, traffic_direction,
     * enable_reuse_port (workers always use SO_REUSEPORT), access_log,
     * max_connections_to_accept_per_socket_event, tcp_keepalive,
     * continue_on_listener_filters_timeout */
}

/* ---- clusters ------------------------------------------------------------------- */

static void up_http2(struct tr *t, const PbHttp2Options *p, struct sk_cluster *c)
{
    c->upstream_proto = SK_UP_HTTP2;
    if (p && p->max_concurrent_streams) {
        c->h2_max_concurrent_streams = p->max_concurrent_streams->value;
        if (c->h2_max_concurrent_streams == 0 || c->h2_max_concurrent_streams > 2147483647u)
            err(t, "max_concurrent_streams", "must be 1-2147483647");
    }
    if (p && p->connection_keepalive)
        unsupported(t, "connection_keepalive");
}

static void up_common_options(struct tr *t, const PbHttpProtocolOptions *p, struct sk_cluster *c)
{
    c->idle_timeout_ms = dur(t, "idle_timeout", p->idle_timeout, MS_PER_HOUR, SK_DUR_NONE);
    if (p->max_requests_per_connection)
        c->max_requests_per_connection = p->max_requests_per_connection->value;
    if (p->max_connection_duration)
        unsupported(t, "max_connection_duration");
    if (p->max_stream_duration)
        unsupported(t, "max_stream_duration");
    if (p->headers_with_underscores_action !=
        ENVOY__CONFIG__CORE__V3__HTTP_PROTOCOL_OPTIONS__HEADERS_WITH_UNDERSCORES_ACTION__ALLOW)
        unsupported(t, "headers_with_underscores_action");
    /* max_headers_count / max_response_headers_kb upstream: accepted, ignored */
}

/* typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] */
static void up_http_options(struct tr *t, const PbUpHttpOptions *p, struct sk_cluster *c)
{
    if (p->common_http_protocol_options) {
        size_t o = pushf(t, "common_http_protocol_options");
        up_common_options(t, p->common_http_protocol_options, c);
        pop(t, o);
    }
    /* upstream_http_protocol_options (auto_sni, ...) only matter with TLS */
    switch (p->upstream_protocol_options_case) {
    case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_EXPLICIT_HTTP_CONFIG: {
        const Envoy__Extensions__Upstreams__Http__V3__HttpProtocolOptions__ExplicitHttpConfig *e =
            p->explicit_http_config;
        size_t o = pushf(t, "explicit_http_config");
        if (e->protocol_config_case ==
            ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP2_PROTOCOL_OPTIONS) {
            size_t o2 = pushf(t, "http2_protocol_options");
            up_http2(t, e->http2_protocol_options, c);
            pop(t, o2);
        } else if (
            e->protocol_config_case ==
            ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__EXPLICIT_HTTP_CONFIG__PROTOCOL_CONFIG_HTTP_PROTOCOL_OPTIONS) {
            c->upstream_proto = SK_UP_HTTP1;
        } else {
            err(t, NULL, "one of http_protocol_options, http2_protocol_options is required");
        }
        pop(t, o);
        break;
    }
    case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_USE_DOWNSTREAM_PROTOCOL_CONFIG: {
        size_t o = pushf(t, "use_downstream_protocol_config");
        const PbHttp2Options *h2 = p->use_downstream_protocol_config->http2_protocol_options;
        if (h2) {
            size_t o2 = pushf(t, "http2_protocol_options");
            up_http2(t, h2, c);
            pop(t, o2);
        }
        c->upstream_proto = SK_UP_USE_DOWNSTREAM;
        pop(t, o);
        break;
    }
    case ENVOY__EXTENSIONS__UPSTREAMS__HTTP__V3__HTTP_PROTOCOL_OPTIONS__UPSTREAM_PROTOCOL_OPTIONS_AUTO_CONFIG:
        err(t, "auto_config", "auto_config (ALPN) is not supported yet");
        break;
    default:
        err(t, NULL, "one of explicit_http_config, use_downstream_protocol_config is required");
        break;
    }
}

static void protocol_options(struct tr *t, const PbCluster *pc, struct sk_cluster *c)
{
    static const char key[] = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    bool typed = false;
    for (size_t i = 0; i < pc->n_typed_extension_protocol_options; i++) {
        const Envoy__Config__Cluster__V3__Cluster__TypedExtensionProtocolOptionsEntry *e =
            pc->typed_extension_protocol_options[i];
        size_t o = push(t, ".typed_extension_protocol_options[\"%s\"]", e->key ? e->key : "");
        const ProtobufCMessageDescriptor *d =
            &envoy__extensions__upstreams__http__v3__http_protocol_options__descriptor;
        if (!e->key || strcmp(e->key, key) != 0) {
            err(t, NULL, "unsupported protocol options '%s'", e->key ? e->key : "");
        } else if (!any_ok(t, e->value)) {
        } else if (!is_type(e->value, d)) {
            err(t, NULL, "expected %s, got '%s'", d->name, any_type(e->value));
        } else {
            PbUpHttpOptions *p = unpack(t, e->value, d);
            if (p)
                up_http_options(t, p, c);
            unpacked_free(p);
            typed = true;
        }
        pop(t, o);
    }
    bool deprecated =
        pc->http2_protocol_options || pc->http_protocol_options || pc->common_http_protocol_options;
    if (typed && deprecated) {
        err(t, "typed_extension_protocol_options",
            "cannot be combined with the deprecated cluster-level protocol options");
        return;
    }
    if (pc->common_http_protocol_options) {
        size_t o = pushf(t, "common_http_protocol_options");
        up_common_options(t, pc->common_http_protocol_options, c);
        pop(t, o);
    }
    if (pc->http2_protocol_options) {
        if (pc->http_protocol_options)
            err(t, "http2_protocol_options",
                "http_protocol_options and http2_protocol_options cannot both be set");
        size_t o = pushf(t, "http2_protocol_options");
        up_http2(t, pc->http2_protocol_options, c);
        pop(t, o);
    }
    if (pc->max_requests_per_connection)
        c->max_requests_per_connection = pc->max_requests_per_connection->value;
}

static void circuit_breakers(struct tr *t, const Envoy__Config__Cluster__V3__CircuitBreakers *cb,
                             struct sk_circuit_breakers *m)
{
    size_t o = pushf(t, "circuit_breakers");
    bool seen_default = false;
    for (size_t i = 0; i < cb->n_thresholds; i++) {
        const Envoy__Config__Cluster__V3__CircuitBreakers__Thresholds *th = cb->thresholds[i];
        size_t oi = push(t, ".thresholds[%zu]", i);
        if (th->priority == ENVOY__CONFIG__CORE__V3__ROUTING_PRIORITY__DEFAULT) {
            if (seen_default)
                err(t, "priority", "duplicate thresholds for priority DEFAULT");
            seen_default = true;
            if (th->max_connection_pools)
                unsupported(t, "max_connection_pools");
            m->max_connections = u32w(th->max_connections, 1024);
            m->max_pending_requests = u32w(th->max_pending_requests, 1024);
            m->max_requests = u32w(th->max_requests, 1024);
            m->max_retries = u32w(th->max_retries, 3);
            m->track_remaining = th->track_remaining;
            if (th->retry_budget) {
                const Envoy__Config__Cluster__V3__CircuitBreakers__Thresholds__RetryBudget *rb =
                    th->retry_budget;
                size_t ob = pushf(t, "retry_budget");
                m->retry_budget = true;
                m->retry_budget_percent = 20.0;
                if (rb->budget_percent) {
                    double v = rb->budget_percent->value;
                    if (!(v >= 0.0 && v <= 100.0))
                        err(t, "budget_percent.value", "budget_percent must be 0-100");
                    else
                        m->retry_budget_percent = v;
                }
                m->retry_budget_min_concurrency = u32w(rb->min_retry_concurrency, 3);
                pop(t, ob);
            }
        } else if (th->priority != ENVOY__CONFIG__CORE__V3__ROUTING_PRIORITY__HIGH) {
            err(t, "priority", "unknown priority");
        }
        /* HIGH thresholds: accepted and ignored (routes with priority HIGH are
         * rejected, so they would never apply) */
        pop(t, oi);
    }
    if (cb->n_per_host_thresholds)
        unsupported(t, "per_host_thresholds");
    pop(t, o);
}

/* Cluster.outlier_detection. Envoy's defaults; percentages must be <= 100 and
 * the intervals > 0 (gRPC A50 NACKs the same). */
static struct sk_outlier *outlier(struct tr *t, const PbOutlier *p)
{
    struct sk_outlier *o = al(t, sizeof(*o));
    if (!o)
        return NULL;
    size_t old = pushf(t, "outlier_detection");
    o->consecutive_5xx = u32w(p->consecutive_5xx, 5);
    o->consecutive_gateway_failure = u32w(p->consecutive_gateway_failure, 5);
    o->consecutive_local_origin_failure = u32w(p->consecutive_local_origin_failure, 5);
    o->enforcing_consecutive_5xx =
        pct32(t, "enforcing_consecutive_5xx", p->enforcing_consecutive_5xx, 100);
    o->enforcing_consecutive_gateway_failure = pct32(t, "enforcing_consecutive_gateway_failure",
                                                     p->enforcing_consecutive_gateway_failure, 0);
    o->enforcing_consecutive_local_origin_failure =
        pct32(t, "enforcing_consecutive_local_origin_failure",
              p->enforcing_consecutive_local_origin_failure, 100);
    o->enforcing_local_origin_success_rate = pct32(t, "enforcing_local_origin_success_rate",
                                                   p->enforcing_local_origin_success_rate, 100);
    o->split_external_local_origin_errors = p->split_external_local_origin_errors;
    o->interval_ms = dur_pos(t, "interval", p->interval, 10000);
    o->base_ejection_time_ms = dur_pos(t, "base_ejection_time", p->base_ejection_time, 30000);
    /* unset: 300 s or base_ejection_time, whichever is larger (Envoy) */
    uint64_t max_dflt = o->base_ejection_time_ms > 300000 ? o->base_ejection_time_ms : 300000;
    o->max_ejection_time_ms = dur_pos(t, "max_ejection_time", p->max_ejection_time, max_dflt);
    if (o->max_ejection_time_ms < o->base_ejection_time_ms)
        err(t, "max_ejection_time", "max_ejection_time cannot be smaller than base_ejection_time");
    o->max_ejection_time_jitter_ms =
        dur(t, "max_ejection_time_jitter", p->max_ejection_time_jitter, 0, 0);
    o->max_ejection_percent = pct32(t, "max_ejection_percent", p->max_ejection_percent, 10);
    o->success_rate_minimum_hosts = u32w(p->success_rate_minimum_hosts, 5);
    o->success_rate_request_volume = u32w(p->success_rate_request_volume, 100);
    o->success_rate_stdev_factor = u32w(p->success_rate_stdev_factor, 1900);
    o->enforcing_success_rate = pct32(t, "enforcing_success_rate", p->enforcing_success_rate, 100);
    o->failure_percentage_threshold =
        pct32(t, "failure_percentage_threshold", p->failure_percentage_threshold, 85);
    o->enforcing_failure_percentage =
        pct32(t, "enforcing_failure_percentage", p->enforcing_failure_percentage, 0);
    o->failure_percentage_minimum_hosts = u32w(p->failure_percentage_minimum_hosts, 5);
    o->failure_percentage_request_volume = u32w(p->failure_percentage_request_volume, 50);
    /* Only takes effect in split mode, where skiff has no local-origin failure
     * percentage detector. */
    uint32_t efplo = pct32(t, "enforcing_failure_percentage_local_origin",
                           p->enforcing_failure_percentage_local_origin, 0);
    if (efplo && o->split_external_local_origin_errors)
        err(t, "enforcing_failure_percentage_local_origin",
            "enforcing_failure_percentage_local_origin is not supported by skiff");
    if (!boolw(p->successful_active_health_check_uneject_host, true))
        err(t, "successful_active_health_check_uneject_host",
            "successful_active_health_check_uneject_host: false is not supported by skiff");
    if (boolw(p->always_eject_one_host, false))
        err(t, "always_eject_one_host", "always_eject_one_host: true is not supported by skiff");
    pop(t, old);
    return o;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* HealthCheck.Payload at the current path: text (hex) or binary -> bytes. */
static void hc_payload(struct tr *t, const PbPayload *p, unsigned char **out, size_t *len)
{
    switch (p->payload_case) {
    case ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__PAYLOAD__PAYLOAD_TEXT: {
        const char *s = p->text ? p->text : "";
        size_t n = strlen(s);
        if (n == 0) {
            err(t, "text", "text must not be empty");
            return;
        }
        bool ok = n % 2 == 0;
        for (size_t i = 0; ok && i < n; i++)
            ok = hexval((unsigned char)s[i]) >= 0;
        if (!ok) {
            err(t, "text", "invalid hex string '%s'", s);
            return;
        }
        unsigned char *b = al(t, n / 2);
        if (!b)
            return;
        for (size_t i = 0; i < n / 2; i++)
            b[i] = (unsigned char)(hexval((unsigned char)s[2 * i]) << 4 |
                                   hexval((unsigned char)s[2 * i + 1]));
        *out = b;
        *len = n / 2;
        return;
    }
    case ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__PAYLOAD__PAYLOAD_BINARY:
        *out = (unsigned char *)dupn(t, (const char *)p->binary.data, p->binary.len);
        *len = p->binary.len;
        return;
    default:
        err(t, NULL, "one of text, binary is required");
        return;
    }
}

/* A value for a request line / Host header: no CR, LF or NUL. */
static bool valid_header_value(const char *s)
{
    return !s || !strpbrk(s, "\r\n");
}

static void http_health_check(struct tr *t, const PbHttpHc *p, struct sk_health_check *h,
                              const char *cluster_name)
{
    if (!valid_header_value(p->host))
        err(t, "host", "invalid host");
    h->host = dup(t, empty(p->host) ? cluster_name : p->host);
    if (empty(p->path))
        err(t, "path", "path is required");
    else if (!valid_header_value(p->path))
        err(t, "path", "invalid path");
    else
        h->path = dup(t, p->path);
    if (p->send)
        unsupported(t, "send");
    if (p->n_receive)
        unsupported(t, "receive");
    /* response_buffer_size only matters with receive */
    hdr_add(t, "request_headers_to_add", p->n_request_headers_to_add, p->request_headers_to_add,
            &h->req_hdrs);
    hdr_remove(t, "request_headers_to_remove", p->n_request_headers_to_remove,
               p->request_headers_to_remove, &h->req_hdrs);
    if (p->n_expected_statuses == 0) {
        h->expected_statuses = alarr(t, 2, sizeof(int64_t));
        if (h->expected_statuses) {
            h->expected_statuses[0] = 200;
            h->expected_statuses[1] = 201;
            h->nexpected = 1;
        }
    } else {
        h->expected_statuses = alarr(t, 2 * p->n_expected_statuses, sizeof(int64_t));
        for (size_t i = 0; h->expected_statuses && i < p->n_expected_statuses; i++) {
            const Envoy__Type__V3__Int64Range *r = p->expected_statuses[i];
            size_t o = push(t, ".expected_statuses[%zu]", i);
            if (r->start < 100 || r->end > 600 || r->start >= r->end)
                err(t, NULL, "invalid status range [%lld, %lld): need 100 <= start < end <= 600",
                    (long long)r->start, (long long)r->end);
            else {
                h->expected_statuses[2 * h->nexpected] = r->start;
                h->expected_statuses[2 * h->nexpected + 1] = r->end;
                h->nexpected++;
            }
            pop(t, o);
        }
    }
    if (p->n_retriable_statuses)
        unsupported(t, "retriable_statuses");
    if (p->codec_client_type != ENVOY__TYPE__V3__CODEC_CLIENT_TYPE__HTTP1)
        err(t, "codec_client_type", "codec_client_type %s is not supported by skiff (HTTP1 only)",
            p->codec_client_type == ENVOY__TYPE__V3__CODEC_CLIENT_TYPE__HTTP2   ? "HTTP2"
            : p->codec_client_type == ENVOY__TYPE__V3__CODEC_CLIENT_TYPE__HTTP3 ? "HTTP3"
                                                                                : "?");
    if (p->service_name_matcher)
        unsupported(t, "service_name_matcher");
    if (p->method == ENVOY__CONFIG__CORE__V3__REQUEST_METHOD__CONNECT)
        err(t, "method", "method CONNECT is not allowed for health checks");
    else if (p->method != ENVOY__CONFIG__CORE__V3__REQUEST_METHOD__METHOD_UNSPECIFIED &&
             p->method != ENVOY__CONFIG__CORE__V3__REQUEST_METHOD__GET)
        err(t, "method", "methods other than GET are not supported by skiff");
}

static void tcp_health_check(struct tr *t, const PbTcpHc *p, struct sk_health_check *h)
{
    if (p->send) {
        size_t o = pushf(t, "send");
        hc_payload(t, p->send, &h->send, &h->send_len);
        pop(t, o);
    }
    if (p->n_receive) {
        h->receive = alarr(t, p->n_receive, sizeof(*h->receive));
        h->receive_len = alarr(t, p->n_receive, sizeof(*h->receive_len));
        for (size_t i = 0; h->receive && h->receive_len && i < p->n_receive; i++) {
            size_t o = push(t, ".receive[%zu]", i);
            hc_payload(t, p->receive[i], &h->receive[i], &h->receive_len[i]);
            pop(t, o);
        }
        if (h->receive && h->receive_len)
            h->nreceive = p->n_receive;
    }
}

/* One Cluster.health_checks[] entry at the current path. */
static void health_check(struct tr *t, const PbHealthCheck *p, struct sk_health_check *h,
                         const char *cluster_name)
{
    if (!p->timeout)
        err(t, "timeout", "timeout is required");
    h->timeout_ms = dur_pos(t, "timeout", p->timeout, 0);
    if (!p->interval)
        err(t, "interval", "interval is required");
    h->interval_ms = dur_pos(t, "interval", p->interval, 0);
    h->initial_jitter_ms = dur(t, "initial_jitter", p->initial_jitter, 0, 0);
    h->interval_jitter_ms = dur(t, "interval_jitter", p->interval_jitter, 0, 0);
    h->interval_jitter_percent = p->interval_jitter_percent;
    if (!p->unhealthy_threshold)
        err(t, "unhealthy_threshold", "unhealthy_threshold is required");
    h->unhealthy_threshold = u32w(p->unhealthy_threshold, 0);
    if (!p->healthy_threshold)
        err(t, "healthy_threshold", "healthy_threshold is required");
    h->healthy_threshold = u32w(p->healthy_threshold, 0);
    if (p->alt_port)
        unsupported(t, "alt_port");
    if (!boolw(p->reuse_connection, true))
        err(t, "reuse_connection", "reuse_connection: false is not supported by skiff");
    h->no_traffic_interval_ms = dur_pos(t, "no_traffic_interval", p->no_traffic_interval, 60000);
    h->no_traffic_healthy_interval_ms =
        dur_pos(t, "no_traffic_healthy_interval", p->no_traffic_healthy_interval,
                h->no_traffic_interval_ms);
    h->unhealthy_interval_ms =
        dur_pos(t, "unhealthy_interval", p->unhealthy_interval, h->interval_ms);
    h->unhealthy_edge_interval_ms =
        dur_pos(t, "unhealthy_edge_interval", p->unhealthy_edge_interval, h->unhealthy_interval_ms);
    h->healthy_edge_interval_ms =
        dur_pos(t, "healthy_edge_interval", p->healthy_edge_interval, h->interval_ms);
    /* accepted and ignored: event_log_path, always_log_health_check_{failures,success},
     * tls_options (no upstream TLS yet), transport_socket_match_criteria
     * (transport_socket_matches are rejected) */
    switch (p->health_checker_case) {
    case ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_HTTP_HEALTH_CHECK: {
        size_t o = pushf(t, "http_health_check");
        h->kind = SK_HC_HTTP;
        http_health_check(t, p->http_health_check, h, cluster_name);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_TCP_HEALTH_CHECK: {
        size_t o = pushf(t, "tcp_health_check");
        h->kind = SK_HC_TCP;
        tcp_health_check(t, p->tcp_health_check, h);
        pop(t, o);
        break;
    }
    case ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_GRPC_HEALTH_CHECK:
        unsupported(t, "grpc_health_check");
        break;
    case ENVOY__CONFIG__CORE__V3__HEALTH_CHECK__HEALTH_CHECKER_CUSTOM_HEALTH_CHECK:
        unsupported(t, "custom_health_check");
        break;
    default:
        err(t, NULL, "one of http_health_check, tcp_health_check is required");
        break;
    }
}

static void health_checks(struct tr *t, const PbCluster *pc, struct sk_cluster *c)
{
    size_t n = pc->n_health_checks;
    if (n == 0)
        return;
    if (n > 1)
        err(t, "health_checks", "multiple health checks are not supported (Envoy neither)");
    struct sk_health_checks *hcs = al(t, sizeof(*hcs));
    if (!hcs)
        return;
    hcs->v = alarr(t, n, sizeof(*hcs->v));
    for (size_t i = 0; hcs->v && i < n; i++) {
        size_t o = push(t, ".health_checks[%zu]", i);
        health_check(t, pc->health_checks[i], &hcs->v[i], c->name);
        pop(t, o);
    }
    hcs->n = hcs->v ? n : 0;
    c->health_checks = hcs;
}

/* ---- load balancing policy ----------------------------------------------------- */

#define RING_MAX 8388608u
#define MAGLEV_MAX 5000011u

static void ring_sizes(struct tr *t, const PbU64 *mn, const PbU64 *mx, struct sk_cluster *c)
{
    c->ring_hash_min_size = u64w(mn, 1024);
    c->ring_hash_max_size = u64w(mx, RING_MAX);
    if (c->ring_hash_min_size > RING_MAX)
        err(t, "minimum_ring_size", "minimum_ring_size must be at most %u", RING_MAX);
    else if (c->ring_hash_max_size > RING_MAX)
        err(t, "maximum_ring_size", "maximum_ring_size must be at most %u", RING_MAX);
    else if (c->ring_hash_min_size > c->ring_hash_max_size)
        err(t, "minimum_ring_size",
            "minimum_ring_size (%llu) must not be greater than maximum_ring_size (%llu)",
            (unsigned long long)c->ring_hash_min_size, (unsigned long long)c->ring_hash_max_size);
}

static bool is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    if (n % 2 == 0)
        return n == 2;
    for (uint64_t d = 3; d * d <= n; d += 2)
        if (n % d == 0)
            return false;
    return true;
}

static void maglev_size(struct tr *t, const PbU64 *v, struct sk_cluster *c)
{
    c->maglev_table_size = u64w(v, 65537);
    if (c->maglev_table_size > MAGLEV_MAX)
        err(t, "table_size", "table_size must be at most %u", MAGLEV_MAX);
    else if (!is_prime(c->maglev_table_size))
        err(t, "table_size", "table_size %llu is not a prime number",
            (unsigned long long)c->maglev_table_size);
}

/* Descriptor of Envoy's load_balancing_policies extension config messages. */
#define LBP(pkg, msg) envoy__extensions__load_balancing_policies__##pkg##__v3__##msg##__descriptor

/* One load_balancing_policy typed_config (current path). Returns false if the
 * type is not one skiff implements (the caller tries the next policy). */
static bool lb_policy_ext(struct tr *t, const PbAny *a, struct sk_cluster *c)
{
    if (is_type(a, &LBP(round_robin, round_robin))) {
        unpacked_free(unpack(t, a, &LBP(round_robin, round_robin)));
        c->lb_policy = SK_LB_ROUND_ROBIN;
        return true;
    }
    if (is_type(a, &LBP(random, random))) {
        unpacked_free(unpack(t, a, &LBP(random, random)));
        c->lb_policy = SK_LB_RANDOM;
        return true;
    }
    if (is_type(a, &LBP(least_request, least_request))) {
        Envoy__Extensions__LoadBalancingPolicies__LeastRequest__V3__LeastRequest *m =
            unpack(t, a, &LBP(least_request, least_request));
        c->lb_policy = SK_LB_LEAST_REQUEST;
        if (m) {
            c->lr_choice_count = u32w(m->choice_count, 2);
            if (c->lr_choice_count < 2)
                err(t, "choice_count", "choice_count must be at least 2");
        }
        unpacked_free(m);
        return true;
    }
    if (is_type(a, &LBP(ring_hash, ring_hash))) {
        Envoy__Extensions__LoadBalancingPolicies__RingHash__V3__RingHash *m =
            unpack(t, a, &LBP(ring_hash, ring_hash));
        c->lb_policy = SK_LB_RING_HASH;
        if (m) {
            if (m->hash_function !=
                    ENVOY__EXTENSIONS__LOAD_BALANCING_POLICIES__RING_HASH__V3__RING_HASH__HASH_FUNCTION__DEFAULT_HASH &&
                m->hash_function !=
                    ENVOY__EXTENSIONS__LOAD_BALANCING_POLICIES__RING_HASH__V3__RING_HASH__HASH_FUNCTION__XX_HASH)
                err(t, "hash_function", "only hash_function XX_HASH is supported by skiff");
            ring_sizes(t, m->minimum_ring_size, m->maximum_ring_size, c);
        }
        unpacked_free(m);
        return true;
    }
    if (is_type(a, &LBP(maglev, maglev))) {
        Envoy__Extensions__LoadBalancingPolicies__Maglev__V3__Maglev *m =
            unpack(t, a, &LBP(maglev, maglev));
        c->lb_policy = SK_LB_MAGLEV;
        if (m)
            maglev_size(t, m->table_size, c);
        unpacked_free(m);
        return true;
    }
    if (is_type(a, &skiff__lb__v1__peak_ewma__descriptor)) {
        Skiff__Lb__V1__PeakEwma *m = unpack(t, a, &skiff__lb__v1__peak_ewma__descriptor);
        c->lb_policy = SK_LB_PEAK_EWMA;
        if (m)
            c->peak_ewma_decay_ms = dur_pos(t, "decay_time", m->decay_time, 10000);
        unpacked_free(m);
        return true;
    }
    return false;
}

/* Cluster.load_balancing_policy: the first policy skiff supports wins (Envoy's
 * rule); it overrides lb_policy. */
static void load_balancing_policy(struct tr *t, const PbLbPolicy *lp, struct sk_cluster *c)
{
    size_t o = pushf(t, "load_balancing_policy");
    if (lp->n_policies == 0) {
        err(t, "policies", "at least one policy is required");
        pop(t, o);
        return;
    }
    bool chosen = false;
    for (size_t i = 0; !chosen && i < lp->n_policies; i++) {
        const Envoy__Config__Core__V3__TypedExtensionConfig *tc =
            lp->policies[i]->typed_extension_config;
        size_t oi = push(t, ".policies[%zu].typed_extension_config", i);
        if (!tc || !tc->typed_config || empty(tc->typed_config->type_url)) {
            err(t, "typed_config", "typed_config with an @type is required");
            chosen = true; /* reported; do not also report "none supported" */
        } else {
            size_t ot = pushf(t, "typed_config");
            chosen = lb_policy_ext(t, tc->typed_config, c);
            pop(t, ot);
        }
        pop(t, oi);
    }
    if (!chosen)
        err(t, "policies",
            "none of the policies is supported by skiff (supported: round_robin, least_request, "
            "random, ring_hash, maglev, skiff.lb.v1.PeakEwma)");
    pop(t, o);
}

static void endpoints(struct tr *t, const PbCla *la, struct sk_cluster *c)
{
    size_t o = pushf(t, "load_assignment");
    size_t total = 0;
    for (size_t i = 0; i < la->n_endpoints; i++)
        total += la->endpoints[i]->n_lb_endpoints;
    c->endpoints = alarr(t, total, sizeof(*c->endpoints));
    if (la->policy && la->policy->n_drop_overloads)
        unsupported(t, "policy.drop_overloads");
    for (size_t i = 0; c->endpoints && i < la->n_endpoints; i++) {
        const Envoy__Config__Endpoint__V3__LocalityLbEndpoints *le = la->endpoints[i];
        size_t ol = push(t, ".endpoints[%zu]", i);
        for (size_t j = 0; j < le->n_lb_endpoints; j++) {
            const Envoy__Config__Endpoint__V3__LbEndpoint *lb = le->lb_endpoints[j];
            struct sk_endpoint *ep = &c->endpoints[c->nendpoints];
            size_t oj = push(t, ".lb_endpoints[%zu]", j);
            if (lb->host_identifier_case !=
                    ENVOY__CONFIG__ENDPOINT__V3__LB_ENDPOINT__HOST_IDENTIFIER_ENDPOINT ||
                !lb->endpoint) {
                err(t, "endpoint", "endpoint is required");
                pop(t, oj);
                continue;
            }
            size_t oe = pushf(t, "endpoint");
            if (lb->endpoint->n_additional_addresses)
                unsupported(t, "additional_addresses");
            size_t oa = pushf(t, "address");
            int flags =
                c->type == SK_CLUSTER_STATIC || c->type == SK_CLUSTER_EDS ? ADDR_NEED_IP : 0;
            if (c->type == SK_CLUSTER_STATIC)
                flags |= ADDR_PIPE_OK; /* allowed for the xDS cluster only (checked later) */
            struct sk_sockaddr sa = {0};
            bool ok = address(t, lb->endpoint->address, flags, &ep->host, &ep->port, &sa);
            if (ok && sa.len && !sk_endpoint_set_ip(ep, &sa) && sa.ss.ss_family == AF_UNIX) {
                ep->pipe = alarr(t, 1, sizeof(*ep->pipe)); /* NULL: t->oom is set */
                if (ep->pipe)
                    *ep->pipe = sa;
            }
            pop(t, oa);
            pop(t, oe);
            ep->weight = u32w(lb->load_balancing_weight, 1);
            if (ep->weight == 0)
                err(t, "load_balancing_weight", "load_balancing_weight must be at least 1");
            if ((unsigned)lb->health_status > SK_HEALTH_DEGRADED)
                err(t, "health_status", "unknown health_status");
            ep->health = (uint8_t)lb->health_status;
            ep->priority = le->priority;
            if (ok)
                c->nendpoints++;
            pop(t, oj);
        }
        pop(t, ol);
    }
    if (c->type == SK_CLUSTER_LOGICAL_DNS && total != 1)
        err(t, NULL, "LOGICAL_DNS clusters need exactly one endpoint (got %zu)", total);
    pop(t, o);
}

static void cluster(struct tr *t, const PbCluster *pc, struct sk_cluster *c)
{
    if (empty(pc->name))
        err(t, "name", "name is required");
    c->name = dup(t, pc->name);
    if (pc->cluster_discovery_type_case ==
        ENVOY__CONFIG__CLUSTER__V3__CLUSTER__CLUSTER_DISCOVERY_TYPE_CLUSTER_TYPE) {
        unsupported(t, "cluster_type");
    } else {
        switch (pc->type) {
        case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STATIC:
            c->type = SK_CLUSTER_STATIC;
            break;
        case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__STRICT_DNS:
            c->type = SK_CLUSTER_STRICT_DNS;
            break;
        case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__LOGICAL_DNS:
            c->type = SK_CLUSTER_LOGICAL_DNS;
            break;
        case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__EDS:
            c->type = SK_CLUSTER_EDS;
            if (!t->snap->xds.ads)
                err(t, "type",
                    "EDS clusters require xDS (not configured: "
                    "dynamic_resources.ads_config)");
            break;
        case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__DISCOVERY_TYPE__ORIGINAL_DST:
            err(t, "type", "ORIGINAL_DST clusters are not supported yet");
            break;
        default:
            err(t, "type", "unknown cluster type");
            break;
        }
    }
    if (c->type == SK_CLUSTER_EDS) {
        const Envoy__Config__Cluster__V3__Cluster__EdsClusterConfig *e = pc->eds_cluster_config;
        c->eds_service_name = dup(t, e && !empty(e->service_name) ? e->service_name : pc->name);
        if (e && e->eds_config &&
            e->eds_config->config_source_specifier_case !=
                ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS &&
            e->eds_config->config_source_specifier_case !=
                ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_SELF)
            err(t, "eds_cluster_config.eds_config", "eds_config must be ads");
    }
    /* load_balancing_policy, when set, decides the policy and lb_policy is ignored */
    switch (pc->load_balancing_policy ? ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__ROUND_ROBIN
                                      : pc->lb_policy) {
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__ROUND_ROBIN:
        c->lb_policy = SK_LB_ROUND_ROBIN;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__LEAST_REQUEST:
        c->lb_policy = SK_LB_LEAST_REQUEST;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RANDOM:
        c->lb_policy = SK_LB_RANDOM;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__RING_HASH:
        c->lb_policy = SK_LB_RING_HASH;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__MAGLEV:
        c->lb_policy = SK_LB_MAGLEV;
        break;
    case ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_POLICY__LOAD_BALANCING_POLICY_CONFIG:
        err(t, "lb_policy", "lb_policy LOAD_BALANCING_POLICY_CONFIG needs load_balancing_policy");
        break;
    default:
        err(t, "lb_policy", "lb_policy %s is not supported by skiff",
            protobuf_c_enum_descriptor_get_value(
                &envoy__config__cluster__v3__cluster__lb_policy__descriptor, (int)pc->lb_policy)
                ? protobuf_c_enum_descriptor_get_value(
                      &envoy__config__cluster__v3__cluster__lb_policy__descriptor,
                      (int)pc->lb_policy)
                      ->name
                : "?");
        break;
    }
    c->lr_choice_count = 2;
    c->ring_hash_min_size = 1024;
    c->ring_hash_max_size = RING_MAX;
    c->maglev_table_size = 65537;
    c->peak_ewma_decay_ms = 10000;
    /* the lb_config of another policy than the chosen one is validated, unused */
    if (pc->lb_config_case ==
        ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_LEAST_REQUEST_LB_CONFIG) {
        c->lr_choice_count = u32w(pc->least_request_lb_config->choice_count, 2);
        if (c->lr_choice_count < 2)
            err(t, "least_request_lb_config.choice_count", "choice_count must be at least 2");
    } else if (pc->lb_config_case ==
               ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_RING_HASH_LB_CONFIG) {
        const Envoy__Config__Cluster__V3__Cluster__RingHashLbConfig *r = pc->ring_hash_lb_config;
        size_t o = pushf(t, "ring_hash_lb_config");
        if (r->hash_function !=
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__RING_HASH_LB_CONFIG__HASH_FUNCTION__XX_HASH)
            err(t, "hash_function", "only hash_function XX_HASH is supported by skiff");
        ring_sizes(t, r->minimum_ring_size, r->maximum_ring_size, c);
        pop(t, o);
    } else if (pc->lb_config_case ==
               ENVOY__CONFIG__CLUSTER__V3__CLUSTER__LB_CONFIG_MAGLEV_LB_CONFIG) {
        size_t o = pushf(t, "maglev_lb_config");
        maglev_size(t, pc->maglev_lb_config->table_size, c);
        pop(t, o);
    }
    if (pc->load_balancing_policy)
        load_balancing_policy(t, pc->load_balancing_policy, c);
    c->connect_timeout_ms = dur(t, "connect_timeout", pc->connect_timeout, 5000, 0);
    if (c->connect_timeout_ms == 0)
        err(t, "connect_timeout", "connect_timeout must be greater than 0");
    c->dns_refresh_rate_ms = dur(t, "dns_refresh_rate", pc->dns_refresh_rate, 5000, 0);
    if (c->dns_refresh_rate_ms == 0)
        err(t, "dns_refresh_rate", "dns_refresh_rate must be greater than 0");
    if ((unsigned)pc->dns_lookup_family > 4)
        err(t, "dns_lookup_family", "unknown dns_lookup_family");
    c->dns_lookup_family = (int)pc->dns_lookup_family;
    c->respect_dns_ttl = pc->respect_dns_ttl;
    /* dns_jitter, typed_dns_resolver_config (c-ares is used anyway),
     * wait_for_warm_on_init: accepted and ignored */
    c->per_connection_buffer_limit_bytes =
        u32w(pc->per_connection_buffer_limit_bytes, DEFAULT_BUFFER_LIMIT);
    c->upstream_proto = SK_UP_HTTP1;
    c->idle_timeout_ms = MS_PER_HOUR;
    c->h2_max_concurrent_streams = 100;
    protocol_options(t, pc, c);
    c->cb = (struct sk_circuit_breakers){.max_connections = 1024,
                                         .max_pending_requests = 1024,
                                         .max_requests = 1024,
                                         .max_retries = 3,
                                         .retry_budget_min_concurrency = 3};
    if (pc->circuit_breakers)
        circuit_breakers(t, pc->circuit_breakers, &c->cb);
    c->healthy_panic_percent = 50.0;
    if (pc->common_lb_config) {
        const Envoy__Config__Cluster__V3__Cluster__CommonLbConfig *l = pc->common_lb_config;
        size_t o = pushf(t, "common_lb_config");
        if (l->healthy_panic_threshold) {
            double v = l->healthy_panic_threshold->value;
            if (!(v >= 0.0 && v <= 100.0))
                err(t, "healthy_panic_threshold", "must be 0-100");
            else
                c->healthy_panic_percent = v;
        }
        if (l->locality_config_specifier_case ==
            ENVOY__CONFIG__CLUSTER__V3__CLUSTER__COMMON_LB_CONFIG__LOCALITY_CONFIG_SPECIFIER_LOCALITY_WEIGHTED_LB_CONFIG)
            unsupported(t, "locality_weighted_lb_config");
        pop(t, o);
    }
    if (pc->load_assignment && c->type != SK_CLUSTER_EDS)
        endpoints(t, pc->load_assignment, c);
    else if (!pc->load_assignment && c->type == SK_CLUSTER_LOGICAL_DNS)
        err(t, "load_assignment", "LOGICAL_DNS clusters need exactly one endpoint (got 0)");
    if (pc->transport_socket)
        transport_socket(t, pc->transport_socket, false, &c->tls);
    if (c->tls && c->upstream_proto == SK_UP_HTTP2 && c->tls->nalpn) {
        /* explicit HTTP/2 over TLS requires the server to select ALPN h2 */
        bool h2 = false;
        for (size_t i = 0; i < c->tls->nalpn; i++)
            h2 = h2 || strcmp(c->tls->alpn[i], "h2") == 0;
        if (!h2)
            err(t, "transport_socket.typed_config.common_tls_context.alpn_protocols",
                "an HTTP/2 upstream (explicit http2_protocol_options) over TLS needs \"h2\" "
                "in alpn_protocols (or leave alpn_protocols empty: h2 is then offered)");
    }
    if (pc->n_transport_socket_matches)
        unsupported(t, "transport_socket_matches");
    if (pc->upstream_bind_config)
        unsupported(t, "upstream_bind_config");
    if (pc->connection_pool_per_downstream_connection)
        unsupported(t, "connection_pool_per_downstream_connection");
    if (pc->outlier_detection)
        c->outlier = outlier(t, pc->outlier_detection);
    health_checks(t, pc, c);
    for (size_t i = 0; i < pc->n_filters; i++) {
        const PbAny *a = pc->filters[i]->typed_config;
        if (!a || !is_type(a, &skiff__toxics__v1__toxics__descriptor))
            continue; /* other upstream network filters: ignored (below) */
        size_t o = push(t, ".filters[%zu].typed_config", i);
        if (c->toxics)
            err(t, NULL, "only one skiff.toxics.v1.Toxics filter per cluster");
        else
            c->toxics = toxics_cfg(t, a);
        pop(t, o);
    }
    /* Accepted and ignored: alt_stat_name,
     * metadata, other filters (upstream network filters such as Istio's metadata
     * exchange), upstream_connection_options, upstream_http_protocol_options,
     * cleanup_interval, close_connections_on_host_health_failure,
     * ignore_health_on_host_removal. */
}

/* ---- bootstrap-level -------------------------------------------------------------- */

static bool config_source_ads(const PbConfigSource *cs)
{
    return cs && (cs->config_source_specifier_case ==
                      ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_ADS ||
                  cs->config_source_specifier_case ==
                      ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_SELF);
}

/* A file of resources (path_config_source, or the deprecated `path`): true when
 * cs is one; a missing path is an error. */
static bool config_source_path(struct tr *t, const char *field, const PbConfigSource *cs)
{
    const char *path = NULL;
    if (cs->config_source_specifier_case ==
        ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH_CONFIG_SOURCE) {
        path = cs->path_config_source ? cs->path_config_source->path : NULL;
        if (cs->path_config_source && cs->path_config_source->watched_directory &&
            empty(cs->path_config_source->watched_directory->path))
            err(t, field, "path_config_source.watched_directory.path is required");
    } else if (cs->config_source_specifier_case ==
               ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH) {
        path = cs->path;
    } else {
        return false;
    }
    if (empty(path))
        err(t, field, "path_config_source.path is required");
    return true;
}

static void dynamic_resources(struct tr *t,
                              const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *d)
{
    struct sk_xds_cfg *x = &t->snap->xds;
    size_t o = pushf(t, "dynamic_resources");
    if (d->ads_config) {
        const Envoy__Config__Core__V3__ApiConfigSource *a = d->ads_config;
        size_t oa = pushf(t, "ads_config");
        x->ads = true;
        if (a->api_type != ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__GRPC &&
            a->api_type != ENVOY__CONFIG__CORE__V3__API_CONFIG_SOURCE__API_TYPE__AGGREGATED_GRPC)
            err(t, "api_type", "only api_type GRPC (state of the world) is supported");
        if (a->transport_api_version != ENVOY__CONFIG__CORE__V3__API_VERSION__AUTO &&
            a->transport_api_version != ENVOY__CONFIG__CORE__V3__API_VERSION__V3)
            err(t, "transport_api_version", "only V3 is supported");
        if (a->n_cluster_names)
            unsupported(t, "cluster_names");
        if (a->n_grpc_services != 1) {
            err(t, "grpc_services", "exactly one grpc_services entry is required");
        } else {
            const Envoy__Config__Core__V3__GrpcService *g = a->grpc_services[0];
            size_t og = pushf(t, "grpc_services[0]");
            if (g->target_specifier_case !=
                    ENVOY__CONFIG__CORE__V3__GRPC_SERVICE__TARGET_SPECIFIER_ENVOY_GRPC ||
                !g->envoy_grpc || empty(g->envoy_grpc->cluster_name))
                err(t, "envoy_grpc.cluster_name", "envoy_grpc.cluster_name is required");
            else
                x->ads_cluster = dup(t, g->envoy_grpc->cluster_name);
            if (g->n_initial_metadata)
                unsupported(t, "initial_metadata");
            pop(t, og);
        }
        x->set_node_on_first_message_only = a->set_node_on_first_message_only;
        pop(t, oa);
    }
    if (d->lds_config) {
        if (config_source_path(t, "lds_config", d->lds_config))
            x->files = true;
        else if (!config_source_ads(d->lds_config))
            err(t, "lds_config", "only ads and path_config_source config sources are supported");
        else if (!x->ads)
            err(t, "lds_config", "lds_config: ads requires ads_config");
        x->lds = true;
    }
    if (d->cds_config) {
        if (config_source_path(t, "cds_config", d->cds_config))
            x->files = true;
        else if (!config_source_ads(d->cds_config))
            err(t, "cds_config", "only ads and path_config_source config sources are supported");
        else if (!x->ads)
            err(t, "cds_config", "cds_config: ads requires ads_config");
        x->cds = true;
    }
    pop(t, o);
}

static void admin(struct tr *t, const Envoy__Config__Bootstrap__V3__Admin *ad)
{
    size_t o = pushf(t, "admin");
    if (ad->n_socket_options)
        unsupported(t, "socket_options");
    /* access_log_path, profile_path, access_log: accepted and ignored */
    if (ad->address) {
        size_t oa = pushf(t, "address");
        struct sk_admin_cfg *m = &t->snap->admin;
        if (address(t, ad->address, ADDR_NEED_IP | ADDR_PORT0_OK, NULL, NULL, &m->addr)) {
            m->enabled = true;
            m->addr_str = addr_str(t, &m->addr);
        }
        pop(t, oa);
    }
    pop(t, o);
}

/* Two listeners that both bind the same ip:port (Envoy rejects this too). */
static bool same_bound_addr(const struct sk_listener *a, const struct sk_listener *b)
{
    if (!a->bind_to_port || !b->bind_to_port || !a->addr_str || !b->addr_str)
        return false;
    if (a->addr.len != b->addr.len || a->addr.len == 0)
        return false;
    if (a->addr.ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->addr.ss;
        const struct sockaddr_in *y = (const struct sockaddr_in *)&b->addr.ss;
        return x->sin_port != 0 && x->sin_port == y->sin_port &&
               x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->addr.ss;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)&b->addr.ss;
    return x->sin6_port != 0 && x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* ---- entry point --------------------------------------------------------------------- */

int sk_snapshot_build(const struct Envoy__Config__Bootstrap__V3__Bootstrap *bs,
                      struct sk_snapshot **out, struct sk_cfgerrs *errs)
{
    *out = NULL;
    struct sk_arena arena;
    sk_arena_init(&arena, 16384);
    struct tr tr = {.a = &arena, .errs = errs};
    struct tr *t = &tr;

    struct sk_snapshot *s = al(t, sizeof(*s));
    if (!s) {
        sk_arena_free(&arena);
        sk_cfgerrs_add(errs, "", "out of memory");
        return SK_ERR_NOMEM;
    }
    t->snap = s;
    if (!bs) {
        sk_cfgerrs_add(errs, "", "no bootstrap");
        sk_arena_free(&arena);
        return SK_ERR_CONFIG;
    }

    if (bs->node) {
        s->node_id = dup(t, bs->node->id);
        s->node_cluster = dup(t, bs->node->cluster);
    } else {
        s->node_id = dup(t, "");
        s->node_cluster = dup(t, "");
    }
    if (bs->admin)
        admin(t, bs->admin);
    if (bs->dynamic_resources)
        dynamic_resources(t, bs->dynamic_resources);

    const Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr = bs->static_resources;
    size_t nclusters = sr ? sr->n_clusters : 0, nlisteners = sr ? sr->n_listeners : 0;

    /* Clusters first: listeners' routes resolve cluster names against them. */
    s->clusters = alarr(t, nclusters, sizeof(*s->clusters));
    s->nclusters = s->clusters ? nclusters : 0;
    for (size_t i = 0; i < s->nclusters; i++) {
        size_t o = push(t, "static_resources.clusters[%zu]", i);
        s->clusters[i].index = i;
        cluster(t, sr->clusters[i], &s->clusters[i]);
        pop(t, o);
    }
    s->clusters_by_name = alarr(t, s->nclusters, sizeof(*s->clusters_by_name));
    if (s->clusters_by_name) {
        for (size_t i = 0; i < s->nclusters; i++)
            s->clusters_by_name[i] = &s->clusters[i];
        for (size_t i = 0; i < s->nclusters; i++)
            if (!s->clusters[i].name)
                s->clusters[i].name = (char *)""; /* oom: keep the sort safe */
        qsort(s->clusters_by_name, s->nclusters, sizeof(*s->clusters_by_name), cmp_cluster_ptr);
        for (size_t i = 1; i < s->nclusters; i++) {
            struct sk_cluster *a = s->clusters_by_name[i - 1], *b = s->clusters_by_name[i];
            if (*b->name && strcmp(a->name, b->name) == 0) {
                size_t o = push(t, "static_resources.clusters[%zu]", b->index);
                err(t, "name", "duplicate cluster name '%s'", b->name);
                pop(t, o);
            }
        }
    }
    if (s->xds.ads_cluster) {
        s->xds.cluster = find_cluster(s, s->xds.ads_cluster);
        size_t o = push(t, "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name");
        if (!s->xds.cluster)
            err(t, NULL, "unknown cluster '%s' (the ADS cluster must be a static cluster)",
                s->xds.ads_cluster);
        else if (s->xds.cluster->type == SK_CLUSTER_EDS)
            err(t, NULL, "the ADS cluster '%s' cannot be an EDS cluster", s->xds.ads_cluster);
        pop(t, o);
    }
    /* Unix socket endpoints: only the xDS cluster connects to them */
    for (size_t i = 0; i < s->nclusters; i++) {
        const struct sk_cluster *c = &s->clusters[i];
        for (size_t e = 0; e < c->nendpoints; e++)
            if (c->endpoints[e].pipe && c != s->xds.cluster) {
                size_t o = push(t, "static_resources.clusters[%zu]", c->index);
                err(t, "load_assignment",
                    "pipe (unix socket) endpoints are only supported for the xDS (ADS) cluster");
                pop(t, o);
                break;
            }
    }

    s->listeners = alarr(t, nlisteners, sizeof(*s->listeners));
    s->nlisteners = s->listeners ? nlisteners : 0;
    for (size_t i = 0; i < s->nlisteners; i++) {
        size_t o = push(t, "static_resources.listeners[%zu]", i);
        listener(t, sr->listeners[i], &s->listeners[i]);
        for (size_t j = 0; j < i; j++)
            if (s->listeners[i].name && *s->listeners[i].name && s->listeners[j].name &&
                strcmp(s->listeners[i].name, s->listeners[j].name) == 0) {
                err(t, "name", "duplicate listener name '%s'", s->listeners[i].name);
                break;
            }
        for (size_t j = 0; j < i; j++)
            if (same_bound_addr(&s->listeners[i], &s->listeners[j])) {
                err(t, "address", "address %s is already used by listener '%s'",
                    s->listeners[i].addr_str, s->listeners[j].name ? s->listeners[j].name : "");
                break;
            }
        pop(t, o);
    }
    if (sr && sr->n_secrets)
        err(t, "static_resources.secrets",
            "static secrets are not supported yet (use tls_certificates / trusted_ca)");

    if (t->oom)
        sk_cfgerrs_add(errs, "", "out of memory while building the snapshot");
    if (t->oom || t->nerr) {
        sk_arena_free(&arena);
        return t->oom ? SK_ERR_NOMEM : SK_ERR_CONFIG;
    }
    atomic_init(&s->refs, 1);
    s->arena = arena; /* the snapshot now owns the arena it lives in */
    *out = s;
    return 0;
}

/* ---- derived snapshots (EDS-only updates) ---------------------------------------------- */

/* Copies c's endpoint array (it lives in another snapshot's arena) into t's arena. */
static void own_endpoints(struct tr *t, struct sk_cluster *c)
{
    struct sk_endpoint *v = alarr(t, c->nendpoints, sizeof(*v));
    for (size_t i = 0; v && i < c->nendpoints; i++) {
        v[i] = c->endpoints[i];
        v[i].host = dup(t, c->endpoints[i].host);
        if (c->endpoints[i].pipe) {
            v[i].pipe = alarr(t, 1, sizeof(*v[i].pipe));
            if (v[i].pipe)
                *v[i].pipe = *c->endpoints[i].pipe;
        }
    }
    c->endpoints = v;
    if (!v)
        c->nendpoints = 0;
}

struct sk_snapshot *sk_snapshot_derive(const struct sk_snapshot *cur, size_t max_changes)
{
    if (!cur)
        return NULL;
    struct sk_snapshot *root = cur->base ? cur->base : (struct sk_snapshot *)cur;
    struct sk_arena arena;
    sk_arena_init(&arena, 16384);
    struct sk_snapshot *s = sk_arena_alloc(&arena, sizeof(*s));
    if (!s) {
        sk_arena_free(&arena);
        return NULL;
    }
    /* shallow: listeners, routes, admin, xds settings and every cluster's
     * contents are the root's (kept alive by the base reference) */
    memcpy(s, cur, sizeof(*s));
    s->arena = arena; /* from here on allocations go through s->arena */
    struct tr tr = {.a = &s->arena, .snap = s};
    struct tr *t = &tr;
    s->version = 0;
    s->dtors = NULL; /* TLS contexts etc. belong to the root */
    s->base = root;
    s->own_eps = NULL;
    s->nown_eps = 0;
    s->cap_own_eps = 0;
    s->clusters = alarr(t, cur->nclusters, sizeof(*s->clusters));
    s->clusters_by_name = alarr(t, cur->nclusters, sizeof(*s->clusters_by_name));
    s->cap_own_eps = cur->nown_eps + max_changes;
    s->own_eps = alarr(t, s->cap_own_eps + 1, sizeof(*s->own_eps));
    if (!t->oom && cur->nclusters) {
        memcpy(s->clusters, cur->clusters, cur->nclusters * sizeof(*s->clusters));
        for (size_t i = 0; i < cur->nclusters; i++)
            s->clusters_by_name[i] = &s->clusters[cur->clusters_by_name[i]->index];
        if (cur->xds.cluster)
            s->xds.cluster = &s->clusters[cur->xds.cluster->index];
        /* endpoint arrays that live in cur's own arena (cur goes away, the root
         * stays): copied forward */
        for (size_t k = 0; k < cur->nown_eps; k++) {
            own_endpoints(t, &s->clusters[cur->own_eps[k]]);
            s->own_eps[s->nown_eps++] = cur->own_eps[k];
        }
    }
    if (t->oom) {
        struct sk_arena a = s->arena;
        sk_arena_free(&a);
        return NULL;
    }
    atomic_init(&s->refs, 1);
    sk_snapshot_ref(root);
    return s;
}

int sk_snapshot_derive_endpoints(struct sk_snapshot *s, size_t idx, const PbCla *la,
                                 struct sk_cfgerrs *errs)
{
    if (!s || !s->base || idx >= s->nclusters || !la)
        return SK_ERR_CONFIG;
    bool listed = false;
    for (size_t k = 0; k < s->nown_eps && !listed; k++)
        listed = s->own_eps[k] == idx;
    if (!listed && s->nown_eps >= s->cap_own_eps) {
        sk_cfgerrs_add(errs, "", "more changed clusters than the derived snapshot was made for");
        return SK_ERR_CONFIG;
    }
    struct tr tr = {.a = &s->arena, .snap = s, .errs = errs};
    struct tr *t = &tr;
    struct sk_cluster *c = &s->clusters[idx];
    struct sk_cluster tmp = *c;
    tmp.endpoints = NULL;
    tmp.nendpoints = 0;
    endpoints(t, la, &tmp);
    for (size_t e = 0; e < tmp.nendpoints; e++)
        if (tmp.endpoints[e].pipe) {
            err(t, "load_assignment",
                "pipe (unix socket) endpoints are only supported for the xDS (ADS) cluster");
            break;
        }
    if (t->oom)
        sk_cfgerrs_add(errs, "", "out of memory");
    if (t->oom || t->nerr)
        return t->oom ? SK_ERR_NOMEM : SK_ERR_CONFIG;
    c->endpoints = tmp.endpoints;
    c->nendpoints = tmp.nendpoints;
    if (!listed)
        s->own_eps[s->nown_eps++] = (uint32_t)idx;
    return 0;
}
