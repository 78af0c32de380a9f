/* SotW ADS client on the main thread (include/skiff/xds.h).
 *
 * One connection to the ADS cluster's first endpoint (TCP or a Unix socket;
 * TLS with ALPN h2 when the cluster has an UpstreamTlsContext, else h2c with
 * prior knowledge), one nghttp2 client session and on it one long-lived gRPC bidi stream
 * (StreamAggregatedResources). Our DiscoveryRequests are queued as gRPC frames
 * in `out` and read by a deferred data provider that never ends the stream;
 * DiscoveryResponses are reassembled by the gRPC decoder and handed to the
 * resource store (resources.c), which decides ACK/NACK and publishes.
 *
 * nghttp2 is never re-entered: mem_recv and session_send run only from the I/O
 * and timer callbacks, and a stream/connection end noticed inside an nghttp2
 * callback only sets `dead`; teardown happens after mem_recv returns.
 *
 * Any end of the stream (reset, GOAWAY, EOF, grpc-status) means: keep serving
 * the last good config and reconnect with jittered exponential backoff
 * (0.5 s doubling to 30 s, reset once a stream received a response). A new
 * stream resubscribes every type with the last accepted versions and no nonce. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "skiff/buf.h"
#include "skiff/hash.h"
#include "skiff/config.h"
#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/net.h"
#include "skiff/pbregion.h"
#include "skiff/tls.h"
#include "skiff/xds.h"
#include "skiff/yaml_pb.h"

#include "envoy.config.bootstrap.v3.pb-c.h"
#include "envoy.service.discovery.v3.pb-c.h"
#include "google.rpc.pb-c.h"

#define ADS_PATH "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define SDS_PATH "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
#define ADS_USER_AGENT "skiff"
#define ADS_VERSION "0.1.0"
#define BACKOFF_MIN 0.5
#define BACKOFF_MAX 30.0
#define MAX_CONFIG_BYTES (64u * 1024 * 1024)
#define OUT_MAX (64u * 1024 * 1024) /* queued requests; far above anything sane */
/* NACKs of resent, already rejected resources: a token bucket (burst, then a
 * steady rate). A server that resends at once on every NACK (go-control-plane)
 * is slowed to this rate instead of spinning both processes. */
#define NACK_BURST 5.0
#define NACK_RATE 2.0 /* per second */

typedef Envoy__Config__Bootstrap__V3__Bootstrap PbBootstrap;

struct sk_ads {
    /* The SDS stream (sds_config api_config_source GRPC) is a second sk_ads
     * with its own connection and nghttp2 session, sharing the owner's store,
     * stats and initial-fetch timers: owner != NULL, only Secrets on it. */
    struct sk_ads *owner, *sds;
    const char *path;             /* gRPC method */
    struct sk_snapshot *boot;     /* the start-up snapshot: static clusters (SDS cluster) */
    bool sds_failed;              /* the SDS cluster is unusable (logged once) */
    struct ev_loop *loop;
    char *config_path, *service_node, *service_cluster;
    int (*prepare)(struct sk_snapshot *, struct sk_cfgerrs *);
    int (*publish)(struct sk_snapshot *, const char *);
    struct sk_xds_store *st;
    bool node_first_only;

    struct sk_sockaddr server;
    char server_str[128]; /* "ip:port" or "unix:PATH" (JSON-safe) */
    /* TLS (UpstreamTlsContext on the xDS cluster): the cfg lives in boot */
    const struct sk_tls_cfg *tls;
    SSL *ssl;
    bool handshaking;
    bool rd_wants_write; /* a TLS read needs the socket writable */
    char *authority;
    double connect_timeout_s;

    int fd;
    ev_io io;
    ev_timer timer; /* connect timeout, then reconnect backoff */
    nghttp2_session *ng;
    int32_t sid;
    bool connecting, deferred, dead, got_response, node_sent;
    const char *dead_why;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    struct sk_grpc_dec dec;

    char *nonce[SK_XDS_NTYPES];
    bool subscribed[SK_XDS_NTYPES]; /* a request for the type went out on this stream */
    char **sent[SK_XDS_NTYPES];     /* names last sent (RDS/EDS) */
    size_t nsent[SK_XDS_NTYPES];

    double backoff;
    uint64_t rng; /* jitter (own state: the process-wide random() is not ours to reseed) */
    uint64_t ready_version;
    uint64_t acks, nacks, streams;

    ev_timer fetch_timer; /* the store's earliest initial-fetch deadline */
    /* NACK damping */
    ev_timer rl_timer;
    double tokens, tokens_at;
    char *pending_nonce[SK_XDS_NTYPES]; /* a damped NACK waiting for a token */
    char *pending_error[SK_XDS_NTYPES];

    /* lds_config / cds_config from files (path_config_source) */
    struct fsrc {
        struct sk_ads *a;
        int type; /* SK_XDS_LDS / SK_XDS_CDS; -1 = unused */
        char *path, *dir;
        ev_stat wf, wd; /* the file; the watched_directory (optional) */
        ev_timer poll;  /* stat() through symlinks every second, ns precision */
        struct stat last;
        uint64_t hash;  /* of the last bytes handled */
        bool seen;
    } fs[2];

    /* admin */
    bool connected;
    uint64_t rate_limit_enforced;
    struct {
        uint64_t attempt, success, rejected, failure, damped;
        uint64_t update_time_ms, version_hash;
    } ts[SK_XDS_NTYPES];
};

static struct sk_ads *g_ads; /* the running client, for the admin */

static struct sk_ads *O(struct sk_ads *a)
{
    return a->owner ? a->owner : a;
}

/* Which types this stream carries: the SDS stream only Secrets; ADS the rest,
 * and Secrets too unless they have their own stream. */
static bool carries(struct sk_ads *a, int t)
{
    if (a->owner)
        return t == SK_XDS_SDS;
    return t != SK_XDS_SDS || !sk_xds_store_sds_cluster(a->st);
}

static void maybe_start_sds(struct sk_ads *o);

static void ads_connect(struct sk_ads *a);
static void flush(struct sk_ads *a);

/* ---- bootstrap ------------------------------------------------------------------ */

/* The whole file in a malloc'd buffer sized to it (NULL: *err = 0 when it is
 * over MAX_CONFIG_BYTES or unreadable, else the errno of open). */
static char *read_whole(const char *path, size_t *len, int *err)
{
    *err = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        *err = errno;
        return NULL;
    }
    struct stat sb;
    char *buf = NULL;
    if (fstat(fileno(f), &sb) == 0 && sb.st_size >= 0 &&
        (unsigned long long)sb.st_size <= MAX_CONFIG_BYTES) {
        buf = malloc((size_t)sb.st_size + 1);
        *len = buf ? fread(buf, 1, (size_t)sb.st_size + 1, f) : 0;
        if (buf && (*len > (size_t)sb.st_size || ferror(f))) { /* grew while read */
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

static PbBootstrap *load_bootstrap(struct sk_ads *a)
{
    size_t len = 0;
    int oerr;
    char *buf = read_whole(a->config_path, &len, &oerr);
    if (!buf) {
        if (oerr)
            sk_error("xds: cannot open %s: %s", a->config_path, strerror(oerr));
        else
            sk_error("xds: cannot read %s", a->config_path);
        return NULL;
    }
    struct sk_cfgerrs errs;
    sk_cfgerrs_init(&errs, a->config_path);
    ProtobufCMessage *m = NULL;
    int rc = sk_yaml_pb_parse(buf, len, &envoy__config__bootstrap__v3__bootstrap__descriptor,
                              sk_pb_lookup_type, &m, &errs);
    free(buf);
    if (rc != 0 || !m) {
        for (size_t i = 0; i < errs.n; i++)
            sk_error("xds: %s:%d:%d: %s: %s", a->config_path, errs.v[i].line, errs.v[i].col,
                     errs.v[i].path, errs.v[i].msg);
        sk_cfgerrs_free(&errs);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        return NULL;
    }
    sk_cfgerrs_free(&errs);
    PbBootstrap *bs = (PbBootstrap *)m;
    /* --service-node / --service-cluster override the bootstrap's node */
    if (a->service_node || a->service_cluster) {
        if (!bs->node) {
            bs->node = malloc(sizeof(*bs->node));
            if (bs->node)
                envoy__config__core__v3__node__init(bs->node);
        }
        if (bs->node) {
            struct {
                char **field;
                const char *v;
            } ov[] = {{&bs->node->id, a->service_node}, {&bs->node->cluster, a->service_cluster}};
            for (size_t i = 0; i < 2; i++) {
                char *d = ov[i].v ? strdup(ov[i].v) : NULL;
                if (!d)
                    continue;
                if (*ov[i].field && *ov[i].field != protobuf_c_empty_string)
                    free(*ov[i].field);
                *ov[i].field = d;
            }
        }
    }
    return bs;
}

/* ---- requests ----------------------------------------------------------------------- */

static int out_append(struct sk_ads *a, const uint8_t *p, size_t n)
{
    if (a->out_off && a->out_off == a->out_len)
        a->out_off = a->out_len = 0;
    if (a->out_len - a->out_off + n > OUT_MAX)
        return SK_ERR_TOO_LARGE;
    if (a->out_len + n > a->out_cap) {
        if (a->out_off) {
            memmove(a->out, a->out + a->out_off, a->out_len - a->out_off);
            a->out_len -= a->out_off;
            a->out_off = 0;
        }
        size_t nc = a->out_cap ? a->out_cap : 4096;
        while (nc < a->out_len + n)
            nc *= 2;
        if (nc != a->out_cap) {
            uint8_t *b = realloc(a->out, nc);
            if (!b)
                return SK_ERR_NOMEM;
            a->out = b;
            a->out_cap = nc;
        }
    }
    memcpy(a->out + a->out_len, p, n);
    a->out_len += n;
    return 0;
}

static void save_sent(struct sk_ads *a, int t, const char *const *names, size_t n)
{
    for (size_t i = 0; i < a->nsent[t]; i++)
        free(a->sent[t][i]);
    free(a->sent[t]);
    a->sent[t] = NULL;
    a->nsent[t] = 0;
    if (!n)
        return;
    a->sent[t] = calloc(n, sizeof(char *));
    if (!a->sent[t])
        return;
    for (size_t i = 0; i < n; i++)
        if ((a->sent[t][i] = strdup(names[i])))
            a->nsent[t]++;
}

/* Queues a DiscoveryRequest for `type_url`: version = last accepted, nonce =
 * latest seen on this stream, names = the current subscription, error =
 * NACK detail (NULL = ACK / plain request). */
static void send_request(struct sk_ads *a, int t, const char *type_url, const char *nonce,
                         const char *error)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest rq =
        ENVOY__SERVICE__DISCOVERY__V3__DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    Google__Rpc__Status status = GOOGLE__RPC__STATUS__INIT;
    const PbBootstrap *bs = sk_xds_store_bootstrap(a->st);
    if (!a->node_sent || !a->node_first_only) {
        if (bs->node)
            node = *bs->node; /* shallow: borrowed for packing only */
        node.user_agent_name = (char *)ADS_USER_AGENT;
        node.user_agent_version_type_case =
            ENVOY__CONFIG__CORE__V3__NODE__USER_AGENT_VERSION_TYPE_USER_AGENT_VERSION;
        node.user_agent_version = (char *)ADS_VERSION;
        rq.node = &node;
    }
    const char *const *names = NULL;
    size_t n = 0;
    if (t >= 0)
        n = sk_xds_store_names(a->st, t, &names);
    rq.version_info = (char *)(t >= 0 ? sk_xds_store_version(a->st, t) : "");
    rq.n_resource_names = n;
    rq.resource_names = (char **)names;
    rq.type_url = (char *)type_url;
    rq.response_nonce = (char *)(nonce ? nonce : "");
    if (error) {
        status.code = 3; /* INVALID_ARGUMENT */
        status.message = (char *)error;
        rq.error_detail = &status;
    }
    uint8_t *frame;
    size_t len;
    int r = sk_grpc_frame(&rq.base, &frame, &len);
    if (r == 0) {
        r = out_append(a, frame, len);
        free(frame);
    }
    if (r < 0) {
        sk_error("xds: cannot queue a %s request: %s", sk_xds_type_short(t), sk_strerror(r));
        a->dead = true;
        a->dead_why = "cannot queue a request";
        return;
    }
    if (rq.node)
        a->node_sent = true;
    if (t >= 0) {
        a->subscribed[t] = true;
        save_sent(a, t, names, n);
    }
    sk_debug("xds: -> %s version '%s' nonce '%s' %zu name(s)%s", sk_xds_type_short(t),
             rq.version_info, rq.response_nonce, n, error ? " NACK" : "");
}

static bool names_differ(struct sk_ads *a, int t)
{
    const char *const *names;
    size_t n = sk_xds_store_names(a->st, t, &names);
    if (n != a->nsent[t])
        return true;
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], a->sent[t][i]) != 0)
            return true;
    return false;
}

/* Brings the stream's subscriptions in line with the store: first request for
 * newly wanted types, a new request when an RDS/EDS name set changed. */
static void sync_subscriptions(struct sk_ads *a)
{
    if (!a->ng || a->dead)
        return;
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        bool named = t == SK_XDS_RDS || t == SK_XDS_EDS || t == SK_XDS_SDS;
        if (!carries(a, t))
            continue;
        if (!a->subscribed[t]) {
            if (sk_xds_store_wants(a->st, t))
                send_request(a, t, sk_xds_type_url(t), "", NULL);
        } else if (named && names_differ(a, t)) {
            send_request(a, t, sk_xds_type_url(t), a->nonce[t], NULL);
        }
    }
}

/* ---- admin state, timers, NACK damping --------------------------------------------------- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Envoy's `version` gauge is a hash of version_info; 53 bits so that JSON and
 * Prometheus (doubles) show it exactly. FNV-1a 64. */
static uint64_t version_hash(const char *v)
{
    return sk_fnv1a_str(v ? v : "") & ((1ull << 53) - 1);
}

/* Runs the initial-fetch timers of what this stream subscribed (A57: only
 * once connected) and schedules the earliest. */
static bool stream_up(const struct sk_ads *a)
{
    return a && a->ng && !a->dead && !a->connecting;
}

static void arm_fetch_timers(struct sk_ads *a)
{
    a = O(a);
    if (!stream_up(a) && !stream_up(a->sds))
        return;
    sk_xds_store_arm(a->st, ev_now(a->loop));
    double d = sk_xds_store_next_deadline(a->st);
    ev_timer_stop(a->loop, &a->fetch_timer);
    if (d > 0) {
        double in = d - ev_now(a->loop);
        ev_timer_set(&a->fetch_timer, in > 0.001 ? in : 0.001, 0.);
        ev_timer_start(a->loop, &a->fetch_timer);
    }
}

static void fetch_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sk_ads *a = w->data;
    struct sk_xds_result res;
    size_t n = sk_xds_store_expire(a->st, ev_now(loop), &res);
    if (n)
        sk_info("xds: %zu initial fetch timeout(s)%s", n,
                sk_xds_store_warm(a->st) ? "" : " (still warming)");
    sk_xds_result_free(&res);
    sync_subscriptions(a);
    arm_fetch_timers(a);
    flush(a);
    if (a->sds) {
        sync_subscriptions(a->sds);
        flush(a->sds);
    }
}

static bool take_token(struct sk_ads *a)
{
    double now = ev_now(a->loop);
    a->tokens += (now - a->tokens_at) * NACK_RATE;
    if (a->tokens > NACK_BURST)
        a->tokens = NACK_BURST;
    a->tokens_at = now;
    if (a->tokens < 1.0)
        return false;
    a->tokens -= 1.0;
    return true;
}

static void clear_pending(struct sk_ads *a, int t)
{
    free(a->pending_nonce[t]);
    free(a->pending_error[t]);
    a->pending_nonce[t] = a->pending_error[t] = NULL;
}

static void schedule_rl(struct sk_ads *a)
{
    if (ev_is_active(&a->rl_timer))
        return;
    double in = (1.0 - a->tokens) / NACK_RATE;
    ev_timer_set(&a->rl_timer, in > 0.01 ? in : 0.01, 0.);
    ev_timer_start(a->loop, &a->rl_timer);
}

static void rl_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct sk_ads *a = w->data;
    if (!a->ng || a->dead)
        return;
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        if (!a->pending_nonce[t])
            continue;
        if (!take_token(a)) {
            schedule_rl(a);
            break;
        }
        send_request(a, t, sk_xds_type_url(t), a->pending_nonce[t],
                     a->pending_error[t] ? a->pending_error[t] : "rejected");
        clear_pending(a, t);
    }
    flush(a);
}

/* ---- responses ---------------------------------------------------------------------- */

static int on_message(void *arg, const uint8_t *p, size_t n)
{
    struct sk_ads *a = arg;
    /* the decoded response (every resource's bytes copied once more) lives in
     * its own region for the duration of the update, released wholesale: it
     * never interleaves with the long-lived allocations the update makes */
    struct sk_pbregion rg;
    sk_pbregion_init(&rg);
    Envoy__Service__Discovery__V3__DiscoveryResponse *r =
        envoy__service__discovery__v3__discovery_response__unpack(sk_pbregion_allocator(&rg), n,
                                                                  p);
    if (!r) {
        sk_pbregion_release(&rg);
        sk_warn("xds: cannot decode a DiscoveryResponse (%zu bytes); closing the stream", n);
        return SK_ERR_PROTO;
    }
    a->got_response = true;
    a->backoff = BACKOFF_MIN;
    int t = sk_xds_type_from_url(r->type_url);
    if (t >= 0) {
        char *nn = strdup(r->nonce ? r->nonce : "");
        if (nn) {
            free(a->nonce[t]);
            a->nonce[t] = nn;
        }
    }
    sk_debug("xds: <- %s version '%s' nonce '%s' %zu resource(s)", sk_xds_type_short(t),
             r->version_info, r->nonce, r->n_resources);
    struct sk_xds_result res;
    sk_xds_store_handle(a->st, r, &res);
    if (t >= 0) {
        O(a)->ts[t].attempt++;
        clear_pending(a, t); /* this response supersedes a NACK still waiting */
        if (res.ack) {
            O(a)->ts[t].success++;
            O(a)->ts[t].update_time_ms = wall_ms();
            O(a)->ts[t].version_hash = version_hash(sk_xds_store_version(a->st, t));
        } else {
            O(a)->ts[t].rejected++;
            if (res.damped)
                O(a)->ts[t].damped++;
        }
    }
    if (t >= 0 && res.damped && !take_token(a)) {
        /* answered later (only the latest nonce counts) */
        a->nacks++;
        a->rate_limit_enforced++;
        a->pending_nonce[t] = strdup(r->nonce ? r->nonce : "");
        a->pending_error[t] = strdup(res.error ? res.error : "rejected");
        sk_debug("xds: %s version '%s' rejected again (same resources); NACK delayed",
                 sk_xds_type_short(t), r->version_info);
        schedule_rl(a);
        sk_xds_result_free(&res);
        sk_pbregion_release(&rg); /* r with it */
        return 0;
    }
    if (res.ack) {
        a->acks++;
        if (!res.unchanged)
            sk_info("xds: %s version '%s' accepted (%zu resource(s))%s", sk_xds_type_short(t),
                    r->version_info, sk_xds_store_count(a->st, t),
                    sk_xds_store_warm(a->st) ? "" : " (warming)");
        else
            sk_debug("xds: %s version '%s' unchanged", sk_xds_type_short(t), r->version_info);
    } else if (res.damped) {
        a->nacks++;
        sk_debug("xds: NACK %s version '%s' nonce '%s' (same resources as before)",
                 sk_xds_type_short(t), r->version_info, r->nonce);
    } else {
        a->nacks++;
        sk_warn("xds: NACK %s version '%s' nonce '%s': %s",
                t >= 0 ? sk_xds_type_short(t) : r->type_url, r->version_info, r->nonce,
                res.error ? res.error : "");
    }
    send_request(a, t, t >= 0 ? sk_xds_type_url(t) : r->type_url, r->nonce,
                 res.ack ? NULL : (res.error ? res.error : "rejected"));
    sk_xds_result_free(&res);
    sk_pbregion_release(&rg); /* r with it */
    sync_subscriptions(a);
    /* the other stream: new Secret names from listeners/clusters, or a new SDS stream
     * (its own nghttp2 session: sending on it from here is no re-entry) */
    struct sk_ads *o = O(a);
    maybe_start_sds(o);
    struct sk_ads *other = a == o ? o->sds : o;
    if (other && other != a) {
        sync_subscriptions(other);
        flush(other);
    }
    arm_fetch_timers(a);
    return 0;
}

/* ---- nghttp2 callbacks --------------------------------------------------------------------- */

static ssize_t send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct sk_ads *a = ud;
    if (a->ssl) {
        int want = 0;
        ssize_t w = sk_tls_write(a->ssl, data, len, &want);
        if (w == SK_ERR_AGAIN)
            return NGHTTP2_ERR_WOULDBLOCK;
        return w < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : w;
    }
    ssize_t w = send(a->fd, data, len, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return NGHTTP2_ERR_WOULDBLOCK;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return w;
}

static ssize_t body_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct sk_ads *a = ud;
    size_t avail = a->out_len - a->out_off;
    if (!avail) {
        a->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (len > avail)
        len = avail;
    memcpy(buf, a->out + a->out_off, len);
    a->out_off += len;
    return (ssize_t)len;
}

static int on_data_chunk_cb(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                            size_t len, void *ud)
{
    struct sk_ads *a = ud;
    if (sid != a->sid || a->dead)
        return 0;
    int r = sk_grpc_dec_feed(&a->dec, data, len, on_message, a);
    if (r < 0) {
        a->dead = true;
        a->dead_why = r == SK_ERR_TOO_LARGE ? "message over 16 MiB"
                      : r == SK_ERR_PROTO   ? "bad gRPC message"
                                            : "out of memory";
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
    }
    return 0;
}

static int on_header_cb(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct sk_ads *a = ud;
    if (f->hd.stream_id != a->sid)
        return 0;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0 &&
        !(vlen == 3 && memcmp(value, "200", 3) == 0))
        sk_warn("xds: %s answered :status %.*s", a->server_str, (int)vlen, (const char *)value);
    else if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0 && !(vlen == 1 && value[0] == '0'))
        sk_warn("xds: stream ended with grpc-status %.*s", (int)vlen, (const char *)value);
    else if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0)
        sk_warn("xds: grpc-message: %.*s", (int)(vlen > 300 ? 300 : vlen), (const char *)value);
    return 0;
}

static int on_stream_close_cb(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    struct sk_ads *a = ud;
    if (sid == a->sid && !a->dead) {
        a->dead = true;
        a->dead_why = code ? "stream reset" : "stream closed by the server";
    }
    return 0;
}

/* ---- connection ----------------------------------------------------------------------------- */

static void schedule_reconnect(struct sk_ads *a)
{
    if (a->got_response)
        a->backoff = BACKOFF_MIN;
    a->rng ^= a->rng << 13;
    a->rng ^= a->rng >> 7;
    a->rng ^= a->rng << 17;
    double d = a->backoff * (0.8 + 0.4 * ((double)(a->rng >> 11) / (double)(1ull << 53)));
    if (d < BACKOFF_MIN)
        d = BACKOFF_MIN;
    if (d > BACKOFF_MAX)
        d = BACKOFF_MAX;
    a->backoff *= 2;
    if (a->backoff > BACKOFF_MAX)
        a->backoff = BACKOFF_MAX;
    sk_info("xds: reconnecting to %s in %.2fs", a->server_str, d);
    ev_timer_stop(a->loop, &a->timer);
    ev_timer_set(&a->timer, d, 0.);
    ev_timer_start(a->loop, &a->timer);
}

static void teardown(struct sk_ads *a, const char *why)
{
    if (a->connecting)
        sk_warn("xds: cannot connect to %s (%s)", a->server_str, why ? why : "failed");
    else if (a->ssl && !a->ng)
        sk_warn("xds: TLS handshake with %s failed (%s)", a->server_str, why ? why : "failed");
    else if (a->ng)
        sk_warn("xds: connection to %s lost (%s); keeping the last good config", a->server_str,
                why ? why : "closed");
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        if (sk_xds_store_wants(a->st, t) && carries(a, t))
            O(a)->ts[t].failure++; /* Envoy: fetches that failed because of network errors */
        clear_pending(a, t);
    }
    a->connected = false;
    struct sk_ads *other = a->owner ? a->owner : a->sds;
    if (!stream_up(other)) {
        sk_xds_store_disarm(a->st);
        ev_timer_stop(a->loop, &O(a)->fetch_timer);
    }
    ev_timer_stop(a->loop, &a->rl_timer);
    ev_io_stop(a->loop, &a->io);
    ev_timer_stop(a->loop, &a->timer);
    if (a->ng)
        nghttp2_session_del(a->ng);
    a->ng = NULL;
    if (a->ssl) {
        sk_tls_close_notify(a->ssl);
        SSL_free(a->ssl);
    }
    a->ssl = NULL;
    a->handshaking = a->rd_wants_write = false;
    if (a->fd >= 0)
        close(a->fd);
    a->fd = -1;
    a->sid = -1;
    a->connecting = a->deferred = a->dead = a->node_sent = false;
    a->dead_why = NULL;
    a->out_len = a->out_off = 0;
    sk_grpc_dec_free(&a->dec);
    sk_grpc_dec_init(&a->dec);
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        free(a->nonce[t]);
        a->nonce[t] = NULL;
        a->subscribed[t] = false;
        save_sent(a, t, NULL, 0);
    }
    schedule_reconnect(a);
    a->got_response = false;
}

static void set_io(struct sk_ads *a, int ev)
{
    if (ev_is_active(&a->io) && (a->io.events & (EV_READ | EV_WRITE)) == ev)
        return;
    ev_io_stop(a->loop, &a->io);
    ev_io_set(&a->io, a->fd, ev);
    ev_io_start(a->loop, &a->io);
}

/* Sends what nghttp2 has, then decides what to wait for (or tears down). */
static void flush(struct sk_ads *a)
{
    if (!a->ng)
        return;
    if (!a->dead && a->deferred && a->out_len > a->out_off) {
        a->deferred = false;
        nghttp2_session_resume_data(a->ng, a->sid);
    }
    int r = nghttp2_session_send(a->ng);
    if (r != 0) {
        teardown(a, nghttp2_strerror(r));
        return;
    }
    if (a->dead) {
        teardown(a, a->dead_why);
        return;
    }
    if (!nghttp2_session_want_read(a->ng) && !nghttp2_session_want_write(a->ng)) {
        teardown(a, "session ended");
        return;
    }
    set_io(a, EV_READ | (nghttp2_session_want_write(a->ng) || a->rd_wants_write ? EV_WRITE : 0));
}

static int start_session(struct sk_ads *a)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return SK_ERR_NOMEM;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close_cb);
    int r = nghttp2_session_client_new(&a->ng, cbs, a);
    nghttp2_session_callbacks_del(cbs);
    if (r != 0)
        return SK_ERR_NOMEM;
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 24}};
    nghttp2_submit_settings(a->ng, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(a->ng, NGHTTP2_FLAG_NONE, 0, 1 << 24);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nva[] = {
        NV(":method", "POST"),
        NV(":scheme", a->tls ? "https" : "http"),
        NV(":path", a->path),
        NV(":authority", a->authority),
        NV("content-type", "application/grpc"),
        NV("te", "trailers"),
        NV("user-agent", "skiff/" ADS_VERSION),
    };
#undef NV
    nghttp2_data_provider dp = {.read_callback = body_read_cb};
    a->sid = nghttp2_submit_request(a->ng, NULL, nva, sizeof(nva) / sizeof(nva[0]), &dp, a);
    if (a->sid < 0)
        return SK_ERR_PROTO;
    a->streams++;
    return 0;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct sk_ads *a = w->data;
    if (a->connecting) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err) {
            teardown(a, strerror(err));
            return;
        }
        a->connecting = false;
        if (a->tls) {
            a->ssl = sk_tls_ssl_new(a->tls);
            if (!a->ssl || SSL_set_fd(a->ssl, a->fd) != 1) {
                teardown(a, "cannot create the TLS session");
                return;
            }
            if (!a->tls->nalpn) /* gRPC servers require h2 */
                SSL_set_alpn_protos(a->ssl, (const unsigned char *)"\x02h2", 3);
            sk_tls_ssl_set_session_key(a->ssl, a->server_str);
            a->handshaking = true;
        }
    }
    if (a->handshaking) {
        int want = 0;
        const char *why = NULL;
        int r = sk_tls_handshake(a->ssl, &want, &why);
        if (r < 0) {
            teardown(a, why ? why : "TLS handshake failed");
            return;
        }
        if (r == 0) {
            set_io(a, want == SK_TLS_WANT_WRITE ? EV_WRITE : EV_READ);
            return;
        }
        a->handshaking = false;
        const char *alpn = sk_tls_alpn(a->ssl);
        if (alpn && *alpn && strcmp(alpn, "h2") != 0) {
            teardown(a, "the server did not select ALPN h2");
            return;
        }
    }
    if (!a->ng) {
        ev_timer_stop(a->loop, &a->timer);
        if (start_session(a) < 0) {
            teardown(a, "cannot start the HTTP/2 session");
            return;
        }
        sk_info("xds: connected to %s%s (stream %llu)", a->server_str, a->ssl ? " (TLS)" : "",
                (unsigned long long)a->streams);
        a->connected = true;
        sync_subscriptions(a);
        arm_fetch_timers(a);
        flush(a);
        return;
    }
    if ((revents & EV_READ) || a->rd_wants_write) {
        uint8_t buf[16384];
        a->rd_wants_write = false;
        for (;;) {
            ssize_t n;
            if (a->ssl) {
                int want = 0;
                n = sk_tls_read(a->ssl, buf, sizeof(buf), &want);
                if (n == SK_ERR_AGAIN) {
                    a->rd_wants_write = want == SK_TLS_WANT_WRITE;
                    break;
                }
                if (n < 0) {
                    const char *why = sk_tls_why(a->ssl);
                    teardown(a, why && *why ? why : "TLS read failed");
                    return;
                }
            } else {
                n = recv(a->fd, buf, sizeof(buf), 0);
            }
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                teardown(a, strerror(errno));
                return;
            }
            if (n == 0) {
                teardown(a, "connection closed by the server");
                return;
            }
            ssize_t r = nghttp2_session_mem_recv(a->ng, buf, (size_t)n);
            if (r < 0) {
                teardown(a, nghttp2_strerror((int)r));
                return;
            }
            if (a->dead)
                break;
        }
    }
    flush(a);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct sk_ads *a = t->data;
    if (a->connecting || a->handshaking) {
        teardown(a, a->connecting ? "connect timeout" : "TLS handshake timeout");
        return;
    }
    if (!a->ng)
        ads_connect(a);
}

static void ads_connect(struct sk_ads *a)
{
    int fd = socket(a->server.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        sk_error("xds: socket: %s", strerror(errno));
        schedule_reconnect(a);
        return;
    }
    int one = 1;
    if (a->server.ss.ss_family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    a->fd = fd;
    a->connecting = true;
    if (connect(fd, (const struct sockaddr *)&a->server.ss, a->server.len) != 0 &&
        errno != EINPROGRESS) {
        teardown(a, strerror(errno));
        return;
    }
    ev_io_set(&a->io, fd, EV_WRITE);
    ev_io_start(a->loop, &a->io);
    ev_timer_stop(a->loop, &a->timer);
    ev_timer_set(&a->timer, a->connect_timeout_s, 0.);
    ev_timer_start(a->loop, &a->timer);
}

/* ---- file-based LDS / CDS (path_config_source) ----------------------------------------------- */

/* Replaces a string field of an unpacked message (default allocator). */
static bool set_pb_str(char **field, const char *v)
{
    char *d = strdup(v);
    if (!d)
        return false;
    if (*field && *field != protobuf_c_empty_string)
        free(*field);
    *field = d;
    return true;
}

static uint64_t bytes_hash(const uint8_t *p, size_t n)
{
    return sk_fnv1a(p, n);
}

/* Reads the file of a source as a DiscoveryResponse (YAML or JSON, proto3 JSON
 * mapping, "@type" in each resource, like Envoy's filesystem subscription) and
 * hands it to the store: the same rules as a pushed update (a bad file is
 * rejected and the previous resources keep serving). `force`: handle even if the
 * bytes did not change (SIGHUP). */
static void file_load(struct fsrc *f, bool force)
{
    struct sk_ads *a = f->a;
    int t = f->type;
    const char *what = sk_xds_type_short(t);
    size_t len = 0;
    int oerr;
    char *buf = read_whole(f->path, &len, &oerr);
    if (!buf) {
        if (f->seen || force) { /* a missing file at start-up is not an update */
            O(a)->ts[t].attempt++;
            O(a)->ts[t].rejected++;
        }
        sk_warn("xds: %s file %s: %s; the previous config keeps serving", what, f->path,
                oerr ? strerror(oerr) : "too large or unreadable");
        return;
    }
    uint64_t h = bytes_hash((const uint8_t *)buf, len);
    if (f->seen && h == f->hash && !force) {
        free(buf);
        return;
    }
    f->seen = true;
    f->hash = h;
    O(a)->ts[t].attempt++;
    struct sk_cfgerrs errs;
    sk_cfgerrs_init(&errs, f->path);
    ProtobufCMessage *m = NULL;
    int rc = sk_yaml_pb_parse(buf, len, &envoy__service__discovery__v3__discovery_response__descriptor,
                              sk_pb_lookup_type, &m, &errs);
    free(buf);
    if (rc != 0 || !m) {
        O(a)->ts[t].rejected++;
        sk_warn("xds: %s file %s rejected (%zu error%s); the previous config keeps serving:", what,
                f->path, errs.n, errs.n == 1 ? "" : "s");
        for (size_t i = 0; i < errs.n; i++)
            sk_warn("  %s:%d:%d: %s: %s", f->path, errs.v[i].line, errs.v[i].col, errs.v[i].path,
                    errs.v[i].msg);
        sk_cfgerrs_free(&errs);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        return;
    }
    sk_cfgerrs_free(&errs);
    Envoy__Service__Discovery__V3__DiscoveryResponse *r =
        (Envoy__Service__Discovery__V3__DiscoveryResponse *)m;
    char ver[40];
    snprintf(ver, sizeof(ver), "file-%016llx", (unsigned long long)h);
    bool ok = true;
    if (!r->type_url || !*r->type_url)
        ok = set_pb_str(&r->type_url, sk_xds_type_url(t));
    if (ok && (!r->version_info || !*r->version_info))
        ok = set_pb_str(&r->version_info, ver);
    if (ok && strcmp(r->type_url, sk_xds_type_url(t)) != 0) {
        O(a)->ts[t].rejected++;
        sk_warn("xds: %s file %s rejected: type_url '%.200s' is not %s; the previous config keeps "
                "serving",
                what, f->path, r->type_url, sk_xds_type_url(t));
        protobuf_c_message_free_unpacked(m, NULL);
        return;
    }
    /* the parsed tree (malloc'd by the YAML reader) moves into a region for
     * the update, as a pushed response: freed before the store allocates its
     * long-lived records, the region released wholesale after */
    struct sk_pbregion rg;
    sk_pbregion_init(&rg);
    if (ok) {
        size_t pn = protobuf_c_message_get_packed_size(m);
        uint8_t *pb = malloc(pn ? pn : 1);
        ok = pb != NULL;
        if (ok) {
            protobuf_c_message_pack(m, pb);
            protobuf_c_message_free_unpacked(m, NULL);
            m = NULL;
            r = envoy__service__discovery__v3__discovery_response__unpack(
                sk_pbregion_allocator(&rg), pn, pb);
            free(pb);
            ok = r != NULL;
        }
    }
    if (!ok) {
        O(a)->ts[t].rejected++;
        sk_error("xds: %s file %s: out of memory", what, f->path);
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        sk_pbregion_release(&rg);
        return;
    }
    struct sk_xds_result res;
    sk_xds_store_handle(a->st, r, &res);
    if (res.ack) {
        O(a)->ts[t].success++;
        O(a)->ts[t].update_time_ms = wall_ms();
        O(a)->ts[t].version_hash = version_hash(sk_xds_store_version(a->st, t));
        if (!res.unchanged)
            sk_info("xds: %s file %s (version '%s') applied (%zu resource(s))", what, f->path,
                    r->version_info, sk_xds_store_count(a->st, t));
    } else {
        O(a)->ts[t].rejected++;
        sk_warn("xds: %s file %s (version '%s') %s: %s", what, f->path, r->version_info,
                res.rejected ? "partly rejected, the valid resources applied"
                             : "rejected; the previous config keeps serving",
                res.error ? res.error : "");
    }
    sk_xds_result_free(&res);
    sk_pbregion_release(&rg); /* r with it */
    /* its listeners/clusters may name RDS/EDS/SDS resources of the streams */
    maybe_start_sds(a);
    sync_subscriptions(a);
    arm_fetch_timers(a);
    flush(a);
    if (a->sds) {
        sync_subscriptions(a->sds);
        flush(a->sds);
    }
}

static void fsrc_cb(struct ev_loop *loop, ev_stat *w, int revents)
{
    file_load(w->data, false);
}

/* libev's stat watcher compares whole seconds and, with inotify, watches the
 * symlink target of the moment: a Kubernetes-style swap (..data renamed in the
 * watched directory) within the same second as an earlier change can go
 * unseen. This poll follows symlinks and compares inode, size and ns times. */
static void fsrc_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct fsrc *f = w->data;
    struct stat st;
    if (stat(f->path, &st) != 0)
        memset(&st, 0, sizeof(st));
    if (st.st_ino != f->last.st_ino || st.st_dev != f->last.st_dev ||
        st.st_size != f->last.st_size || st.st_mtim.tv_sec != f->last.st_mtim.tv_sec ||
        st.st_mtim.tv_nsec != f->last.st_mtim.tv_nsec ||
        st.st_ctim.tv_nsec != f->last.st_ctim.tv_nsec) {
        f->last = st;
        file_load(f, false); /* unchanged bytes cost nothing */
    }
}

static void files_start(struct sk_ads *a)
{
    const PbBootstrap *bs = sk_xds_store_bootstrap(a->st);
    const Envoy__Config__Bootstrap__V3__Bootstrap__DynamicResources *d = bs->dynamic_resources;
    const Envoy__Config__Core__V3__ConfigSource *cs[2] = {d ? d->cds_config : NULL,
                                                         d ? d->lds_config : NULL};
    const int types[2] = {SK_XDS_CDS, SK_XDS_LDS}; /* clusters first, as Envoy */
    for (int i = 0; i < 2; i++) {
        struct fsrc *f = &a->fs[i];
        f->a = a;
        f->type = -1;
        const char *path = NULL, *dir = NULL;
        if (!cs[i])
            continue;
        if (cs[i]->config_source_specifier_case ==
                ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH_CONFIG_SOURCE &&
            cs[i]->path_config_source) {
            path = cs[i]->path_config_source->path;
            if (cs[i]->path_config_source->watched_directory)
                dir = cs[i]->path_config_source->watched_directory->path;
        } else if (cs[i]->config_source_specifier_case ==
                   ENVOY__CONFIG__CORE__V3__CONFIG_SOURCE__CONFIG_SOURCE_SPECIFIER_PATH) {
            path = cs[i]->path;
        }
        if (!path || !*path)
            continue;
        f->type = types[i];
        f->path = strdup(path);
        f->dir = dir && *dir ? strdup(dir) : NULL;
        if (!f->path) {
            f->type = -1;
            continue;
        }
        /* libev watches with inotify where it can, and polls stat() every 0.5 s
         * otherwise (and for paths that do not exist yet) */
        ev_stat_init(&f->wf, fsrc_cb, f->path, 0.5);
        f->wf.data = f;
        ev_stat_start(a->loop, &f->wf);
        if (f->dir) {
            ev_stat_init(&f->wd, fsrc_cb, f->dir, 0.5);
            f->wd.data = f;
            ev_stat_start(a->loop, &f->wd);
        }
        if (stat(f->path, &f->last) != 0)
            memset(&f->last, 0, sizeof(f->last));
        ev_timer_init(&f->poll, fsrc_poll_cb, 1.0, 1.0);
        f->poll.data = f;
        ev_timer_start(a->loop, &f->poll);
        sk_info("xds: %s from file %s%s%s%s", sk_xds_type_short(f->type), f->path,
                f->dir ? " (watched directory " : "", f->dir ? f->dir : "", f->dir ? ")" : "");
        file_load(f, false);
    }
}

static void files_stop(struct sk_ads *a)
{
    for (int i = 0; i < 2; i++) {
        struct fsrc *f = &a->fs[i];
        if (f->type >= 0) {
            ev_stat_stop(a->loop, &f->wf);
            ev_timer_stop(a->loop, &f->poll);
            if (f->dir)
                ev_stat_stop(a->loop, &f->wd);
        }
        free(f->path);
        free(f->dir);
        f->path = f->dir = NULL;
        f->type = -1;
    }
}

/* ---- store hooks ------------------------------------------------------------------------ */

static int publish_hook(void *arg, struct sk_snapshot *s)
{
    struct sk_ads *a = arg;
    if (!a->publish)
        return SK_ERR_INVAL;
    int r = a->publish(s, "xds");
    if (r < 0)
        return r;
    if (!a->ready_version) {
        a->ready_version = s->version; /* s is the serving snapshot now (main thread) */
        sk_info("xds: initial configuration complete (config version %llu)",
                (unsigned long long)s->version);
    }
    return 0;
}

/* ---- API ------------------------------------------------------------------------------- */

/* Connection state of a stream to cluster `c` (a static cluster of `snap`,
 * which the caller keeps alive as long as the stream). Returns false (logged)
 * when the cluster cannot carry it. */
static bool conn_init(struct sk_ads *a, const struct sk_cluster *c, const struct sk_snapshot *snap,
                      const char *what)
{
    if (c->nendpoints == 0 || !sk_endpoint_has_addr(&c->endpoints[0])) {
        sk_error("xds: the %s cluster '%s' needs a STATIC endpoint (IP address or pipe)", what,
                 c->name);
        return false;
    }
    if (c->tls && !c->tls->rt) {
        sk_error("xds: the TLS context of the %s cluster '%s' is not prepared", what, c->name);
        return false;
    }
    a->authority = strdup(c->name);
    if (!a->authority)
        return false;
    sk_endpoint_addr(&c->endpoints[0], &a->server);
    if (a->server.ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)&a->server.ss;
        snprintf(a->server_str, sizeof(a->server_str), "unix:%s", un->sun_path);
    } else {
        sk_addr_str(&a->server, a->server_str, sizeof(a->server_str));
    }
    for (char *p = a->server_str; *p; p++) /* shown in JSON and logs as is */
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '_';
    /* the cfg (and its prepared context) must outlive every SSL made from it: it
     * lives in `snap` (a reload does not change the xDS transport) */
    a->tls = c->tls;
    a->connect_timeout_s =
        c->connect_timeout_ms == SK_DUR_NONE ? 5.0 : (double)c->connect_timeout_ms / 1000.0;
    if (a->connect_timeout_s <= 0)
        a->connect_timeout_s = 5.0;
    a->node_first_only = snap->xds.set_node_on_first_message_only;
    a->backoff = BACKOFF_MIN;
    a->tokens = NACK_BURST;
    a->tokens_at = ev_now(a->loop);
    a->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)(ev_time() * 1e6) ^ 0x9e3779b97f4a7c15ull ^
             (uint64_t)(uintptr_t)a;
    return true;
}

static void watchers_init(struct sk_ads *a)
{
    a->fd = -1;
    a->sid = -1;
    sk_grpc_dec_init(&a->dec);
    ev_init(&a->io, io_cb);
    a->io.data = a;
    ev_init(&a->timer, timer_cb);
    a->timer.data = a;
    ev_init(&a->fetch_timer, fetch_timer_cb);
    a->fetch_timer.data = a;
    ev_init(&a->rl_timer, rl_timer_cb);
    a->rl_timer.data = a;
}

static const struct sk_cluster *find_static_cluster(const struct sk_snapshot *s, const char *name)
{
    for (size_t i = 0; s && i < s->nclusters; i++)
        if (strcmp(s->clusters[i].name, name) == 0)
            return &s->clusters[i];
    return NULL;
}

/* Opens the SecretDiscoveryService stream once a Secret names one (sds_config
 * api_config_source GRPC): to a static cluster of the start-up config. */
static void maybe_start_sds(struct sk_ads *o)
{
    const char *name = sk_xds_store_sds_cluster(o->st);
    if (o->sds || o->sds_failed || !name)
        return;
    const struct sk_cluster *c = find_static_cluster(o->boot, name);
    struct sk_ads *x = c && c->type == SK_CLUSTER_STATIC ? calloc(1, sizeof(*x)) : NULL;
    if (x) {
        x->owner = o;
        x->loop = o->loop;
        x->st = o->st;
        x->path = SDS_PATH;
        x->fs[0].type = x->fs[1].type = -1;
        watchers_init(x);
        if (!conn_init(x, c, o->boot, "SDS")) {
            sk_ads_stop(x);
            x = NULL;
        }
    }
    if (!x) {
        o->sds_failed = true;
        sk_error("xds: SDS cluster '%s' is not a usable static cluster of the bootstrap; "
                 "secrets cannot be fetched",
                 name);
        return;
    }
    o->sds = x;
    sk_info("xds: SDS client (SecretDiscoveryService) for cluster '%s' at %s", c->name,
            x->server_str);
    ads_connect(x);
}

struct sk_ads *sk_ads_start(const struct sk_ads_opts *o, const struct sk_snapshot *cur)
{
    const struct sk_cluster *c = cur->xds.cluster;
    if (cur->xds.ads && !c) {
        sk_error("xds: no ADS cluster configured");
        return NULL;
    }
    if (!cur->xds.ads && !cur->xds.files && !cur->xds.sds_cluster) {
        sk_error("xds: no dynamic resources configured");
        return NULL;
    }
    struct sk_ads *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->loop = o->loop;
    a->path = ADS_PATH;
    a->config_path = strdup(o->config_path ? o->config_path : "");
    a->service_node = o->service_node ? strdup(o->service_node) : NULL;
    a->service_cluster = o->service_cluster ? strdup(o->service_cluster) : NULL;
    a->prepare = o->prepare;
    a->publish = o->publish;
    a->fs[0].type = a->fs[1].type = -1;
    a->boot = sk_snapshot_ref((struct sk_snapshot *)cur);
    watchers_init(a);
    if (c && !conn_init(a, c, cur, "ADS")) {
        sk_ads_stop(a);
        return NULL;
    }
    if (!c)
        snprintf(a->server_str, sizeof(a->server_str), "(none)");
    PbBootstrap *bs = a->config_path && *a->config_path ? load_bootstrap(a) : NULL;
    struct sk_xds_hooks h = {a->prepare, publish_hook, a};
    a->st = bs ? sk_xds_store_new(bs, &h) : NULL;
    if (!a->st) {
        sk_ads_stop(a);
        return NULL;
    }
    bool any = false;
    for (int t = 0; t < SK_XDS_NTYPES; t++)
        any = any || sk_xds_store_wants(a->st, t);
    if (!any) /* nothing to wait for: the file's config is complete (files are read now) */
        a->ready_version = cur->version;
    if (c)
        sk_info("xds: ADS client for cluster '%s' at %s", c->name, a->server_str);
    g_ads = a;
    files_start(a);
    maybe_start_sds(a);
    if (c)
        ads_connect(a);
    return a;
}

int sk_ads_reload(struct sk_ads *a)
{
    PbBootstrap *bs = load_bootstrap(a);
    if (!bs)
        return SK_ERR_CONFIG;
    struct sk_cfgerrs errs;
    sk_cfgerrs_init(&errs, a->config_path);
    int r = sk_xds_store_set_bootstrap(a->st, bs, &errs);
    if (r < 0) {
        sk_error("reload of %s rejected (%zu error%s); the previous config keeps serving:",
                 a->config_path, errs.n, errs.n == 1 ? "" : "s");
        for (size_t i = 0; i < errs.n; i++)
            sk_error("  %s: %s", errs.v[i].path, errs.v[i].msg);
    } else {
        sk_info("reloaded %s (with the xDS resources)", a->config_path);
        for (int i = 0; i < 2; i++)
            if (a->fs[i].type >= 0)
                file_load(&a->fs[i], true);
        maybe_start_sds(a);
        sync_subscriptions(a);
        arm_fetch_timers(a);
        flush(a);
        if (a->sds) {
            sync_subscriptions(a->sds);
            flush(a->sds);
        }
    }
    sk_cfgerrs_free(&errs);
    return r;
}

uint64_t sk_ads_ready_version(const struct sk_ads *a)
{
    return a ? a->ready_version : 0;
}

void sk_ads_stop(struct sk_ads *a)
{
    if (!a)
        return;
    if (g_ads == a)
        g_ads = NULL;
    if (a->sds)
        sk_ads_stop(a->sds);
    a->sds = NULL;
    files_stop(a);
    ev_io_stop(a->loop, &a->io);
    ev_timer_stop(a->loop, &a->timer);
    ev_timer_stop(a->loop, &a->fetch_timer);
    ev_timer_stop(a->loop, &a->rl_timer);
    if (a->ng)
        nghttp2_session_del(a->ng);
    if (a->ssl)
        SSL_free(a->ssl);
    if (a->fd >= 0)
        close(a->fd);
    if (a->boot)
        sk_snapshot_unref(a->boot);
    sk_grpc_dec_free(&a->dec);
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        free(a->nonce[t]);
        save_sent(a, t, NULL, 0);
        clear_pending(a, t);
    }
    if (!a->owner) /* the SDS stream borrows its owner's store */
        sk_xds_store_free(a->st);
    free(a->out);
    free(a->config_path);
    free(a->service_node);
    free(a->service_cluster);
    free(a->authority);
    free(a);
}

/* ---- admin ---------------------------------------------------------------------------------- */

static const char *const stat_prefix[SK_XDS_NTYPES] = {
    [SK_XDS_CDS] = "cluster_manager.cds",
    [SK_XDS_EDS] = "eds",
    [SK_XDS_LDS] = "listener_manager.lds",
    [SK_XDS_RDS] = "rds",
    [SK_XDS_SDS] = "sds",
};

static void xstat(struct sk_buf *out, bool prom, const char *prefix, const char *name, bool gauge,
                  uint64_t v)
{
    if (!prom) {
        sk_buf_appendf(out, "%s.%s: %llu\n", prefix, name, (unsigned long long)v);
        return;
    }
    char fam[160];
    snprintf(fam, sizeof(fam), "skiff_%s_%s", prefix, name);
    for (char *p = fam; *p; p++)
        if (*p == '.')
            *p = '_';
    sk_buf_appendf(out, "# TYPE %s %s\n%s %llu\n", fam, gauge ? "gauge" : "counter", fam,
                   (unsigned long long)v);
}

void sk_xds_stats(struct sk_buf *out, bool prom)
{
    struct sk_ads *a = g_ads;
    if (!a)
        return;
    xstat(out, prom, "control_plane", "connected_state", true, a->connected ? 1 : 0);
    xstat(out, prom, "control_plane", "rate_limit_enforced", false, a->rate_limit_enforced);
    for (int t = 0; t < SK_XDS_NTYPES; t++) {
        const char *p = stat_prefix[t];
        xstat(out, prom, p, "update_attempt", false, O(a)->ts[t].attempt);
        xstat(out, prom, p, "update_success", false, O(a)->ts[t].success);
        xstat(out, prom, p, "update_rejected", false, O(a)->ts[t].rejected);
        xstat(out, prom, p, "update_failure", false, O(a)->ts[t].failure);
        xstat(out, prom, p, "update_damped", false, O(a)->ts[t].damped);
        if (t == SK_XDS_EDS) /* skiff's own: EDS updates applied without a full build */
            xstat(out, prom, p, "update_incremental", false, sk_xds_store_incremental(a->st));
        xstat(out, prom, p, "init_fetch_timeout", false,
              sk_xds_store_init_fetch_timeouts(a->st, t));
        xstat(out, prom, p, "update_time", true, O(a)->ts[t].update_time_ms);
        xstat(out, prom, p, "version", true, O(a)->ts[t].version_hash);
    }
}

void sk_xds_config_dump(struct sk_buf *out)
{
    struct sk_ads *a = g_ads;
    if (!a)
        return;
    sk_buf_appendf(out,
                   ",\n\"xds_status\": {\"server\": \"%s\", \"connected\": %s, "
                   "\"streams\": %llu, \"acks\": %llu, \"nacks\": %llu, \"warm\": %s, "
                   "\"types\": ",
                   a->server_str, a->connected ? "true" : "false", (unsigned long long)a->streams,
                   (unsigned long long)a->acks, (unsigned long long)a->nacks,
                   sk_xds_store_warm(a->st) ? "true" : "false");
    sk_xds_store_dump(a->st, out);
    if (a->sds)
        sk_buf_appendf(out,
                       ",\n\"sds_stream\": {\"server\": \"%s\", \"connected\": %s, "
                       "\"streams\": %llu, \"acks\": %llu, \"nacks\": %llu}",
                       a->sds->server_str, a->sds->connected ? "true" : "false",
                       (unsigned long long)a->sds->streams, (unsigned long long)a->sds->acks,
                       (unsigned long long)a->sds->nacks);
    sk_buf_appendf(out, "}");
}
