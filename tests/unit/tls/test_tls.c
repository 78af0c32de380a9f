/* Unit tests for src/net/tls.c and src/net/tls_inspect.c.
 *
 * Certificates are made at test time with the OpenSSL API into a temp dir: a
 * CA, server and client certificates with SPIFFE URI SANs, an expired and a
 * not-yet-valid server certificate, and one from another CA. Handshakes are
 * real: a server SSL and a client SSL from sk_tls_ssl_new on the two ends of a
 * non-blocking socketpair, driven alternately by one thread. */
#include "skiff/config.h"
#include "skiff/err.h"
#include "skiff/log.h"
#include "skiff/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

static int failures;
static int checks;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        checks++;                                                                                  \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: '%s' != '%s'\n", __FILE__, __LINE__,             \
                    a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                       \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static char dir[64];

static const char *P(const char *name)
{
    static char bufs[8][256];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 256, "%s/%s", dir, name);
    return b;
}

/* ---- certificates ------------------------------------------------------------------ */

struct pki {
    X509 *cert;
    EVP_PKEY *key;
};

static void write_pem(const char *name, X509 *cert, EVP_PKEY *key)
{
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", P(name));
    FILE *f = fopen(tmp, "w");
    if (!f) {
        perror(tmp);
        exit(2);
    }
    if (cert)
        PEM_write_X509(f, cert);
    if (key)
        PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    rename(tmp, P(name)); /* atomic, like a real rotation */
}

static void add_ext(X509 *c, X509 *issuer, int nid, const char *v)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, c, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, v);
    if (!e) {
        fprintf(stderr, "bad extension %s\n", v);
        exit(2);
    }
    X509_add_ext(c, e, -1);
    X509_EXTENSION_free(e);
}

/* issuer NULL = self-signed CA. Validity [now+from_s, now+to_s]. */
static struct pki make_cert(const char *cn, struct pki *issuer, long serial, long from_s, long to_s,
                            const char *san)
{
    struct pki p = {X509_new(), EVP_EC_gen("P-256")};
    X509_set_version(p.cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(p.cert), serial);
    X509_gmtime_adj(X509_getm_notBefore(p.cert), from_s);
    X509_gmtime_adj(X509_getm_notAfter(p.cert), to_s);
    X509_NAME *n = X509_get_subject_name(p.cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(p.cert, issuer ? X509_get_subject_name(issuer->cert) : n);
    X509_set_pubkey(p.cert, p.key);
    X509 *icert = issuer ? issuer->cert : p.cert;
    if (!issuer) {
        add_ext(p.cert, icert, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(p.cert, icert, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(p.cert, icert, NID_basic_constraints, "CA:FALSE");
        add_ext(p.cert, icert, NID_ext_key_usage, "serverAuth,clientAuth");
    }
    if (san)
        add_ext(p.cert, icert, NID_subject_alt_name, san);
    X509_sign(p.cert, issuer ? issuer->key : p.key, EVP_sha256());
    return p;
}

static void pki_free(struct pki *p)
{
    X509_free(p->cert);
    EVP_PKEY_free(p->key);
}

#define SERVER_ID "spiffe://test.local/ns/default/sa/server"
#define CLIENT_ID "spiffe://test.local/ns/default/sa/client"
#define DAY (24 * 3600L)

static struct pki ca, ca2;

static void issue(const char *base, struct pki *iss, long serial, long from, long to,
                  const char *san)
{
    struct pki p = make_cert(base, iss, serial, from, to, san);
    char c[64], k[64];
    snprintf(c, sizeof(c), "%s.crt", base);
    snprintf(k, sizeof(k), "%s.key", base);
    write_pem(c, p.cert, NULL);
    write_pem(k, NULL, p.key);
    pki_free(&p);
}

static void make_pki(void)
{
    ca = make_cert("test-ca", NULL, 1, -DAY, 3650 * DAY, NULL);
    ca2 = make_cert("other-ca", NULL, 2, -DAY, 3650 * DAY, NULL);
    write_pem("ca.crt", ca.cert, NULL);
    write_pem("ca2.crt", ca2.cert, NULL);
    issue("server", &ca, 1001, -DAY, 365 * DAY, "URI:" SERVER_ID ",DNS:server.test");
    issue("client", &ca, 2001, -DAY, 365 * DAY, "URI:" CLIENT_ID);
    issue("expired", &ca, 3001, -30 * DAY, -DAY, "URI:" SERVER_ID);
    issue("future", &ca, 3002, 10 * DAY, 20 * DAY, "URI:" SERVER_ID);
    issue("evil", &ca2, 4001, -DAY, 365 * DAY, "URI:" SERVER_ID);
    issue("wild", &ca, 5001, -DAY, 365 * DAY, "DNS:*.svc.test,IP:10.1.2.3,email:a@b.test");
}

/* ---- configs and a tiny snapshot ---------------------------------------------------------- */

static struct sk_datasource file_ds(const char *name)
{
    return (struct sk_datasource){.kind = SK_DS_FILE, .filename = strdup(P(name))};
}

static struct sk_tls_cfg server_cfg(const char *base, bool mtls)
{
    char c[64], k[64];
    snprintf(c, sizeof(c), "%s.crt", base);
    snprintf(k, sizeof(k), "%s.key", base);
    struct sk_tls_cfg cfg = {.is_server = true, .max_session_keys = 1};
    cfg.cert_chain = file_ds(c);
    cfg.private_key = file_ds(k);
    if (mtls) {
        cfg.trusted_ca = file_ds("ca.crt");
        cfg.require_client_cert = true;
    }
    return cfg;
}

static struct sk_tls_cfg client_cfg(const char *base)
{
    struct sk_tls_cfg cfg = {.is_server = false, .max_session_keys = 1, .sni = "server.test"};
    if (base) {
        char c[64], k[64];
        snprintf(c, sizeof(c), "%s.crt", base);
        snprintf(k, sizeof(k), "%s.key", base);
        cfg.cert_chain = file_ds(c);
        cfg.private_key = file_ds(k);
    }
    cfg.trusted_ca = file_ds("ca.crt");
    return cfg;
}

static void cfg_free(struct sk_tls_cfg *c)
{
    free(c->cert_chain.filename);
    free(c->private_key.filename);
    free(c->trusted_ca.filename);
}

static struct sk_san_matcher uri_exact(const char *v)
{
    return (struct sk_san_matcher){
        .san_type = SK_SAN_URI, .kind = SK_STR_EXACT, .value = (char *)v};
}

/* A snapshot with one HCM listener chain (server cfg) and one cluster (client
 * cfg); both may be NULL. Lives in its own arena like a real one. */
static struct sk_snapshot *mini_snap(struct sk_tls_cfg *server, struct sk_tls_cfg *client)
{
    struct sk_arena a;
    sk_arena_init(&a, 4096);
    struct sk_snapshot *s = sk_arena_alloc(&a, sizeof(*s));
    s->arena = a;
    atomic_init(&s->refs, 1);
    if (server) {
        s->listeners = sk_arena_alloc(&s->arena, sizeof(*s->listeners));
        s->nlisteners = 1;
        s->listeners[0].chains = sk_arena_alloc(&s->arena, sizeof(struct sk_filter_chain));
        s->listeners[0].nchains = 1;
        s->listeners[0].chains[0].kind = SK_CHAIN_HCM;
        s->listeners[0].chains[0].hcm = sk_arena_alloc(&s->arena, sizeof(struct sk_hcm));
        s->listeners[0].chains[0].tls = server;
    }
    if (client) {
        s->clusters = sk_arena_alloc(&s->arena, sizeof(*s->clusters));
        s->nclusters = 1;
        s->clusters[0].tls = client;
    }
    return s;
}

/* prepare both configs in one snapshot; returns it (unref when done) */
static struct sk_snapshot *prep(struct sk_tls_cfg *server, struct sk_tls_cfg *client)
{
    struct sk_snapshot *s = mini_snap(server, client);
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "test");
    int rc = sk_tls_prepare(s, &e);
    if (rc != 0)
        sk_cfgerrs_print(&e, stderr);
    CHECK(rc == 0);
    sk_cfgerrs_free(&e);
    return s;
}

/* ---- a connection pair ---------------------------------------------------------------------- */

struct pair {
    int fd[2]; /* 0 server, 1 client */
    SSL *s, *c;
    int rs, rc; /* handshake results */
    const char *why_s, *why_c;
};

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void pair_open(struct pair *p, const struct sk_tls_cfg *server,
                      const struct sk_tls_cfg *client)
{
    memset(p, 0, sizeof(*p));
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, p->fd) != 0) {
        perror("socketpair");
        exit(2);
    }
    nonblock(p->fd[0]);
    nonblock(p->fd[1]);
    p->s = server ? sk_tls_ssl_new(server) : NULL;
    p->c = client ? sk_tls_ssl_new(client) : NULL;
    if (p->s)
        SSL_set_fd(p->s, p->fd[0]);
    if (p->c)
        SSL_set_fd(p->c, p->fd[1]);
}

static void pair_close(struct pair *p)
{
    SSL_free(p->s);
    SSL_free(p->c);
    close(p->fd[0]);
    close(p->fd[1]);
}

/* Drive both handshakes until both finished or failed. When one side fails,
 * its socket is shut down so the other side does not wait forever. */
static void pair_handshake(struct pair *p)
{
    int want;
    bool shut_s = false, shut_c = false;
    for (int i = 0; i < 2000 && (p->rs == 0 || p->rc == 0); i++) {
        if (p->rc == 0)
            p->rc = sk_tls_handshake(p->c, &want, &p->why_c);
        if (p->rs == 0)
            p->rs = sk_tls_handshake(p->s, &want, &p->why_s);
        if (p->rs < 0 && !shut_s) {
            shutdown(p->fd[0], SHUT_RDWR);
            shut_s = true;
        }
        if (p->rc < 0 && !shut_c) {
            shutdown(p->fd[1], SHUT_RDWR);
            shut_c = true;
        }
    }
}

/* Exchange a little data so TLS 1.3 session tickets reach the client. */
static void ping(struct pair *p)
{
    int want;
    char b[16];
    CHECK(sk_tls_write(p->s, "ping", 4, &want) == 4);
    ssize_t n = SK_ERR_AGAIN;
    for (int i = 0; i < 100 && n == SK_ERR_AGAIN; i++)
        n = sk_tls_read(p->c, b, sizeof(b), &want);
    CHECK(n == 4 && memcmp(b, "ping", 4) == 0);
}

static long peer_serial(SSL *ssl)
{
    X509 *x = SSL_get0_peer_certificate(ssl);
    return x ? ASN1_INTEGER_get(X509_get0_serialNumber(x)) : -1;
}

/* ---- tests -------------------------------------------------------------------------------------
 */

static void test_mtls_ok(void)
{
    struct sk_tls_cfg sc = server_cfg("server", true), cc = client_cfg("client");
    struct sk_san_matcher sm = uri_exact(CLIENT_ID);
    struct sk_san_matcher cm = {.san_type = SK_SAN_URI,
                                .kind = SK_STR_PREFIX,
                                .value = "SPIFFE://TEST.local/",
                                .ignore_case = true};
    sc.san = &sm, sc.nsan = 1;
    cc.san = &cm, cc.nsan = 1;
    char *alpn[] = {"http/1.1", "h2"}; /* client prefers http/1.1; server's order wins */
    cc.alpn = alpn, cc.nalpn = 2;
    struct sk_snapshot *snap = prep(&sc, &cc);
    struct pair p;
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1);
    CHECK_STR(sk_tls_alpn(p.s), "h2");
    CHECK_STR(sk_tls_alpn(p.c), "h2");
    CHECK(sk_tls_verify_peer(p.s, &sc, NULL) == 0);
    CHECK(sk_tls_verify_peer(p.c, &cc, NULL) == 0);
    char buf[512];
    CHECK(sk_tls_peer_uri_san(p.s, buf, sizeof(buf)) == strlen(CLIENT_ID));
    CHECK_STR(buf, CLIENT_ID);
    CHECK(sk_tls_peer_uri_san(p.c, buf, sizeof(buf)) == strlen(SERVER_ID));
    CHECK(sk_tls_peer_uri_san(p.s, buf, 10) == 0); /* does not fit */
    /* XFCC on the server: By = our id, Hash = sha256(client cert DER), URI = peer */
    size_t n = sk_tls_xfcc(p.s, buf, sizeof(buf));
    unsigned char md[32];
    unsigned mdl = 0;
    X509_digest(SSL_get0_peer_certificate(p.s), EVP_sha256(), md, &mdl);
    char want[512], hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    snprintf(want, sizeof(want), "By=%s;Hash=%s;URI=%s", SERVER_ID, hex, CLIENT_ID);
    CHECK(n == strlen(want));
    CHECK_STR(buf, want);
    CHECK(sk_tls_xfcc(p.s, buf, 20) == 0);
    /* a matcher list that does not match -> verify_peer says so */
    struct sk_tls_cfg other = sc;
    struct sk_san_matcher om = uri_exact("spiffe://test.local/ns/x/sa/y");
    other.san = &om;
    const char *why = NULL;
    CHECK(sk_tls_verify_peer(p.s, &other, &why) < 0);
    CHECK_STR(why, "SAN mismatch");
    pair_close(&p);
    sk_snapshot_unref(snap);
    cfg_free(&sc);
    cfg_free(&cc);
}

/* one handshake with server base cert `sbase` and the given client, returning why's */
static void expect_fail(const char *sbase, bool mtls, const char *cbase, struct sk_san_matcher *cm,
                        bool allow_expired, const char *why_s, const char *why_c, int line)
{
    struct sk_tls_cfg sc = server_cfg(sbase, mtls), cc = client_cfg(cbase);
    if (cm)
        cc.san = cm, cc.nsan = 1;
    cc.allow_expired = allow_expired;
    struct sk_snapshot *snap = prep(&sc, &cc);
    struct pair p;
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    if (!why_s && !why_c) {
        if (!(p.rs == 1 && p.rc == 1))
            fprintf(stderr, "line %d: expected success: %s / %s\n", line, p.why_s ? p.why_s : "-",
                    p.why_c ? p.why_c : "-");
        CHECK(p.rs == 1 && p.rc == 1);
    }
    if (why_s) {
        if (!(p.rs < 0 && p.why_s && strcmp(p.why_s, why_s) == 0))
            fprintf(stderr, "line %d: server: want '%s' got rs=%d '%s'\n", line, why_s, p.rs,
                    p.why_s ? p.why_s : "-");
        CHECK(p.rs < 0 && p.why_s && strcmp(p.why_s, why_s) == 0);
    }
    if (why_c) {
        if (!(p.rc < 0 && p.why_c && strcmp(p.why_c, why_c) == 0))
            fprintf(stderr, "line %d: client: want '%s' got rc=%d '%s'\n", line, why_c, p.rc,
                    p.why_c ? p.why_c : "-");
        CHECK(p.rc < 0 && p.why_c && strcmp(p.why_c, why_c) == 0);
    }
    pair_close(&p);
    sk_snapshot_unref(snap);
    cfg_free(&sc);
    cfg_free(&cc);
}

static void test_failures(void)
{
    struct sk_san_matcher bad = uri_exact("spiffe://test.local/ns/default/sa/other");
    struct sk_san_matcher good = uri_exact(SERVER_ID);
    struct sk_san_matcher dns = {
        .san_type = SK_SAN_DNS, .kind = SK_STR_EXACT, .value = "server.test"};
    struct sk_san_matcher dns_as_uri = {
        .san_type = SK_SAN_URI, .kind = SK_STR_EXACT, .value = "server.test"};
    struct sk_san_matcher any = {.san_type = SK_SAN_ANY, .kind = SK_STR_SUFFIX, .value = ".test"};
    expect_fail("server", false, NULL, &good, false, NULL, NULL, __LINE__);
    expect_fail("server", false, NULL, &dns, false, NULL, NULL, __LINE__);
    expect_fail("server", false, NULL, &any, false, NULL, NULL, __LINE__);
    expect_fail("server", false, NULL, &bad, false, NULL, "SAN mismatch", __LINE__);
    expect_fail("server", false, NULL, &dns_as_uri, false, NULL, "SAN mismatch", __LINE__);
    /* mTLS: the client has no certificate */
    expect_fail("server", true, NULL, NULL, false, "no client certificate", NULL, __LINE__);
    /* the client presents one from another CA */
    expect_fail("server", true, "evil", NULL, false, "unknown CA", NULL, __LINE__);
    /* server certificate problems, seen by the client */
    expect_fail("expired", false, NULL, NULL, false, "certificate expired", "certificate expired",
                __LINE__);
    expect_fail("expired", false, NULL, NULL, true, NULL, NULL, __LINE__); /* allow_expired */
    expect_fail("future", false, NULL, NULL, false, NULL, "certificate not yet valid", __LINE__);
    expect_fail("evil", false, NULL, NULL, false, "unknown CA", "unknown CA", __LINE__);
    /* wildcard DNS SAN, IP and email SANs */
    struct sk_san_matcher wild = {
        .san_type = SK_SAN_DNS, .kind = SK_STR_EXACT, .value = "api.svc.test"};
    struct sk_san_matcher wild2 = {
        .san_type = SK_SAN_DNS, .kind = SK_STR_EXACT, .value = "a.b.svc.test"};
    struct sk_san_matcher ip = {.san_type = SK_SAN_IP, .kind = SK_STR_EXACT, .value = "10.1.2.3"};
    struct sk_san_matcher mail = {
        .san_type = SK_SAN_EMAIL, .kind = SK_STR_CONTAINS, .value = "@b."};
    expect_fail("wild", false, NULL, &wild, false, NULL, NULL, __LINE__);
    expect_fail("wild", false, NULL, &wild2, false, NULL, "SAN mismatch", __LINE__);
    expect_fail("wild", false, NULL, &ip, false, NULL, NULL, __LINE__);
    expect_fail("wild", false, NULL, &mail, false, NULL, NULL, __LINE__);
}

static void test_not_tls(void)
{
    struct sk_tls_cfg sc = server_cfg("server", false);
    struct sk_snapshot *snap = prep(&sc, NULL);
    static const struct {
        const char *b;
        size_t n;
    } inputs[] = {{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27},
                  {"\x16\x03\x01\x00\x04\x02\x00\x00\x00", 9}, /* a ServerHello */
                  {"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", 12}};
    for (size_t i = 0; i < 3; i++) {
        struct pair p;
        pair_open(&p, &sc, NULL);
        CHECK(write(p.fd[1], inputs[i].b, inputs[i].n) == (ssize_t)inputs[i].n);
        int want = 0;
        for (int k = 0; k < 10 && p.rs == 0; k++)
            p.rs = sk_tls_handshake(p.s, &want, &p.why_s);
        CHECK(p.rs < 0);
        CHECK(p.why_s &&
              (strcmp(p.why_s, "not TLS") == 0 || strcmp(p.why_s, "handshake failure") == 0));
        if (i != 1)
            CHECK_STR(p.why_s, "not TLS");
        /* once failed, stays failed */
        CHECK(sk_tls_handshake(p.s, &want, NULL) < 0);
        pair_close(&p);
    }
    sk_snapshot_unref(snap);
    cfg_free(&sc);
}

static void test_bulk(void)
{
    struct sk_tls_cfg sc = server_cfg("server", true), cc = client_cfg("client");
    struct sk_snapshot *snap = prep(&sc, &cc);
    struct pair p;
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1);
    size_t total = 1 << 20;
    unsigned char *src = malloc(total), *dst_s = malloc(total), *dst_c = malloc(total);
    for (size_t i = 0; i < total; i++)
        src[i] = (unsigned char)(i * 7 + (i >> 11));
    size_t wc = 0, ws = 0, rs = 0, rc = 0;
    int want;
    for (int it = 0; it < 100000 && (rs < total || rc < total); it++) {
        if (wc < total) { /* client -> server, in odd chunk sizes */
            size_t n = total - wc < 70001 ? total - wc : 70001;
            ssize_t w = sk_tls_write(p.c, src + wc, n, &want);
            CHECK(w > 0 || w == SK_ERR_AGAIN);
            if (w > 0)
                wc += (size_t)w;
        }
        if (ws < total) { /* server -> client */
            ssize_t w = sk_tls_write(p.s, src + ws, total - ws, &want);
            CHECK(w > 0 || w == SK_ERR_AGAIN);
            if (w > 0)
                ws += (size_t)w;
        }
        for (;;) {
            ssize_t r = rs < total ? sk_tls_read(p.s, dst_s + rs, total - rs, &want) : SK_ERR_AGAIN;
            if (r <= 0)
                break;
            rs += (size_t)r;
        }
        for (;;) {
            ssize_t r = rc < total ? sk_tls_read(p.c, dst_c + rc, total - rc, &want) : SK_ERR_AGAIN;
            if (r <= 0)
                break;
            rc += (size_t)r;
        }
    }
    CHECK(rs == total && rc == total);
    CHECK(memcmp(src, dst_s, total) == 0);
    CHECK(memcmp(src, dst_c, total) == 0);
    /* clean close: close_notify reads as EOF */
    sk_tls_close_notify(p.c);
    char b[8];
    ssize_t r = SK_ERR_AGAIN;
    for (int i = 0; i < 10 && r == SK_ERR_AGAIN; i++)
        r = sk_tls_read(p.s, b, sizeof(b), &want);
    CHECK(r == 0);
    /* an abrupt close (no close_notify) is EOF too */
    shutdown(p.fd[0], SHUT_RDWR);
    r = sk_tls_read(p.c, b, sizeof(b), &want);
    CHECK(r == 0 || r == SK_ERR_IO);
    CHECK(sk_tls_write(p.c, "x", 0, &want) == 0);
    free(src);
    free(dst_s);
    free(dst_c);
    pair_close(&p);
    sk_snapshot_unref(snap);
    cfg_free(&sc);
    cfg_free(&cc);
}

static void test_sharing_and_resumption(void)
{
    struct sk_tls_cfg sc = server_cfg("server", false), cc = client_cfg(NULL);
    struct sk_tls_cfg sc2 = server_cfg("server", false), cc2 = client_cfg(NULL);
    struct sk_snapshot *s1 = prep(&sc, &cc);
    struct sk_snapshot *s2 = prep(&sc2, &cc2);
    CHECK(sc.rt && sc.rt == sc2.rt); /* same content, same context, across snapshots */
    CHECK(cc.rt && cc.rt == cc2.rt);
    CHECK(sc.rt != cc.rt);
    /* prepare is idempotent */
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "t");
    CHECK(sk_tls_prepare(s1, &e) == 0);
    sk_cfgerrs_free(&e);

    struct pair p;
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1);
    CHECK(!SSL_session_reused(p.c));
    ping(&p);
    pair_close(&p);
    /* second connection from the other snapshot's config resumes */
    pair_open(&p, &sc2, &cc2);
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1);
    CHECK(SSL_session_reused(p.c));
    pair_close(&p);
    /* a different session key does not */
    pair_open(&p, &sc, &cc);
    sk_tls_ssl_set_session_key(p.c, "10.0.0.9:443");
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1 && !SSL_session_reused(p.c));
    pair_close(&p);
    /* max_session_keys 0: no resumption */
    struct sk_tls_cfg cc3 = client_cfg(NULL);
    cc3.max_session_keys = 0;
    struct sk_snapshot *s3 = prep(NULL, &cc3);
    CHECK(cc3.rt != cc.rt);
    for (int i = 0; i < 2; i++) {
        pair_open(&p, &sc, &cc3);
        pair_handshake(&p);
        CHECK(p.rs == 1 && p.rc == 1 && !SSL_session_reused(p.c));
        ping(&p);
        pair_close(&p);
    }
    sk_snapshot_unref(s1);
    sk_snapshot_unref(s2);
    sk_snapshot_unref(s3);
    /* the contexts are unused now: the watcher tick frees them */
    sk_tls_watch_check();
    struct sk_buf b;
    sk_buf_init(&b, 1 << 20);
    sk_tls_stats(&b, false);
    sk_buf_append(&b, "", 1);
    CHECK(strstr(sk_buf_rptr(&b), "tls_contexts: 0\n") != NULL);
    sk_buf_free(&b);
    cfg_free(&sc), cfg_free(&cc), cfg_free(&sc2), cfg_free(&cc2), cfg_free(&cc3);
}

static uint64_t stat_val(const char *name)
{
    struct sk_buf b;
    sk_buf_init(&b, 1 << 20);
    sk_tls_stats(&b, false);
    sk_buf_append(&b, "", 1);
    char key[128];
    snprintf(key, sizeof(key), "%s: ", name);
    const char *p = strstr(sk_buf_rptr(&b), key);
    uint64_t v = p ? strtoull(p + strlen(key), NULL, 10) : UINT64_MAX;
    sk_buf_free(&b);
    return v;
}

static void test_rotation(void)
{
    issue("rot", &ca, 7001, -DAY, 365 * DAY, "URI:" SERVER_ID);
    struct sk_tls_cfg sc = server_cfg("rot", false), cc = client_cfg(NULL);
    struct sk_snapshot *snap = prep(&sc, &cc);
    sk_tls_set_grace_ms(0);
    struct pair p;
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rc == 1 && peer_serial(p.c) == 7001);
    CHECK(sk_tls_watch_check() == 0); /* nothing changed */
    uint64_t ok0 = stat_val("tls_rotation_ok"), bad0 = stat_val("tls_rotation_failed");

    issue("rot", &ca, 7002, -DAY, 365 * DAY, "URI:" SERVER_ID);
    CHECK(sk_tls_watch_check() == 1);
    CHECK(stat_val("tls_rotation_ok") == ok0 + 1);
    /* the old connection still works (it keeps its SSL_CTX) */
    ping(&p);
    pair_close(&p);
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rc == 1 && peer_serial(p.c) == 7002);
    pair_close(&p);

    /* a broken certificate keeps the old material */
    FILE *f = fopen(P("rot.crt"), "w");
    fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    CHECK(sk_tls_watch_check() == 0);
    CHECK(stat_val("tls_rotation_failed") == bad0 + 1);
    CHECK(sk_tls_watch_check() == 0); /* no retry until it changes again */
    CHECK(stat_val("tls_rotation_failed") == bad0 + 1);
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rc == 1 && peer_serial(p.c) == 7002);
    pair_close(&p);
    /* a key that does not match the certificate: also kept */
    struct pki other = make_cert("x", &ca, 9, -DAY, DAY, NULL);
    issue("rot", &ca, 7003, -DAY, 365 * DAY, "URI:" SERVER_ID);
    write_pem("rot.key", NULL, other.key);
    pki_free(&other);
    CHECK(sk_tls_watch_check() == 0);
    CHECK(stat_val("tls_rotation_failed") == bad0 + 2);
    /* a missing file: kept */
    unlink(P("rot.key"));
    CHECK(sk_tls_watch_check() == 0);
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rc == 1 && peer_serial(p.c) == 7002);
    pair_close(&p);
    /* fixed: picked up */
    issue("rot", &ca, 7004, -DAY, 365 * DAY, "URI:" SERVER_ID);
    CHECK(sk_tls_watch_check() == 1);
    pair_open(&p, &sc, &cc);
    pair_handshake(&p);
    CHECK(p.rc == 1 && peer_serial(p.c) == 7004);
    pair_close(&p);
    /* rotating the CA (client side) too */
    sk_snapshot_unref(snap);
    cfg_free(&sc);
    cfg_free(&cc);
    sk_tls_set_grace_ms(10000);
}

static void expect_prepare_err(struct sk_tls_cfg *server, struct sk_tls_cfg *client,
                               const char *path, const char *msg, int line)
{
    struct sk_snapshot *s = mini_snap(server, client);
    struct sk_cfgerrs e;
    sk_cfgerrs_init(&e, "test");
    int rc = sk_tls_prepare(s, &e);
    bool found = false;
    for (size_t i = 0; i < e.n; i++)
        if (strcmp(e.v[i].path, path) == 0 && strstr(e.v[i].msg, msg))
            found = true;
    if (rc != SK_ERR_CONFIG || !found) {
        fprintf(stderr, "line %d: want error %s: ...%s..., got rc=%d:\n", line, path, msg, rc);
        sk_cfgerrs_print(&e, stderr);
    }
    CHECK(rc == SK_ERR_CONFIG && found);
    CHECK((!server || !server->rt) && (!client || !client->rt));
    sk_cfgerrs_free(&e);
    sk_snapshot_unref(s);
}

static void test_prepare_errors(void)
{
    const char *lpath = "static_resources.listeners[0].filter_chains[0].transport_socket";
    const char *cpath = "static_resources.clusters[0].transport_socket";
    struct sk_tls_cfg sc = server_cfg("nope", false), cc = client_cfg(NULL);
    expect_prepare_err(&sc, &cc, lpath, "cannot open", __LINE__);
    cfg_free(&sc);
    /* bad PEM */
    FILE *f = fopen(P("garbage.pem"), "w");
    fputs("hello\n", f);
    fclose(f);
    sc = server_cfg("server", false);
    free(sc.cert_chain.filename);
    sc.cert_chain.filename = strdup(P("garbage.pem"));
    expect_prepare_err(&sc, NULL, lpath, "no PEM certificate", __LINE__);
    cfg_free(&sc);
    /* key does not match */
    sc = server_cfg("server", false);
    free(sc.private_key.filename);
    sc.private_key.filename = strdup(P("client.key"));
    expect_prepare_err(&sc, NULL, lpath, "does not match", __LINE__);
    cfg_free(&sc);
    /* bad cipher / curve */
    sc = server_cfg("server", false);
    sc.cipher_suites = "ECDHE-RSA-AES128-GCM-SHA256:NOT-A-CIPHER";
    expect_prepare_err(&sc, NULL, lpath, "unknown cipher 'NOT-A-CIPHER'", __LINE__);
    sc.cipher_suites = NULL;
    sc.ecdh_curves = "P-999";
    expect_prepare_err(&sc, NULL, lpath, "ecdh_curves", __LINE__);
    sc.ecdh_curves = NULL;
    /* CA file without certificates, on the cluster */
    free(cc.trusted_ca.filename);
    cc.trusted_ca.filename = strdup(P("garbage.pem"));
    expect_prepare_err(&sc, &cc, cpath, "trusted_ca", __LINE__);
    /* SDS secrets we do not have */
    struct sk_tls_cfg sds = {.is_server = false, .sds_ca_name = "ROOTCA"};
    expect_prepare_err(NULL, &sds, cpath, "SDS secret 'ROOTCA'", __LINE__);
    /* env / inline sources */
    struct sk_tls_cfg env = {.is_server = false,
                             .trusted_ca = {.kind = SK_DS_ENV, .data = "SKIFF_TEST_NO_SUCH_VAR"}};
    expect_prepare_err(NULL, &env, cpath, "SKIFF_TEST_NO_SUCH_VAR", __LINE__);
    cfg_free(&sc);
    cfg_free(&cc);

    /* inline + env that work */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, ca.cert);
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    char *copy = strndup(pem, (size_t)n);
    BIO_free(b);
    setenv("SKIFF_TEST_CA", copy, 1);
    struct sk_tls_cfg inl = {.is_server = false,
                             .max_session_keys = 1,
                             .trusted_ca = {.kind = SK_DS_INLINE, .data = copy, .len = (size_t)n}};
    struct sk_tls_cfg envok = {.is_server = false,
                               .max_session_keys = 1,
                               .trusted_ca = {.kind = SK_DS_ENV, .data = "SKIFF_TEST_CA"}};
    struct sk_tls_cfg s2 = server_cfg("server", false);
    struct sk_snapshot *s = prep(&s2, &inl);
    struct sk_snapshot *s3 = prep(NULL, &envok);
    struct pair p;
    pair_open(&p, &s2, &inl);
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1);
    pair_close(&p);
    pair_open(&p, &s2, &envok);
    pair_handshake(&p);
    CHECK(p.rs == 1 && p.rc == 1);
    pair_close(&p);
    sk_snapshot_unref(s);
    sk_snapshot_unref(s3);
    cfg_free(&s2);
    free(copy);
}

/* The loader hook: a bootstrap whose TLS material is missing is rejected
 * with the transport_socket path; a good one loads and is prepared. */
static void test_loader_hook(void)
{
    char yaml[4096];
    const char *fmt =
        "static_resources:\n"
        "  listeners:\n"
        "  - name: l0\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 10443}}\n"
        "    filter_chains:\n"
        "    - filters:\n"
        "      - name: envoy.filters.network.tcp_proxy\n"
        "        typed_config:\n"
        "          \"@type\": "
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n"
        "          stat_prefix: t\n"
        "          cluster: c0\n"
        "      transport_socket:\n"
        "        name: envoy.transport_sockets.tls\n"
        "        typed_config:\n"
        "          \"@type\": type.googleapis.com/"
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n"
        "          common_tls_context:\n"
        "            tls_certificates:\n"
        "            - certificate_chain: {filename: \"%s\"}\n"
        "              private_key: {filename: \"%s\"}\n"
        "  clusters:\n"
        "  - name: c0\n"
        "    type: STATIC\n"
        "    load_assignment:\n"
        "      cluster_name: c0\n"
        "      endpoints:\n"
        "      - lb_endpoints:\n"
        "        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n";
    sk_config_set_prepare_hook(sk_tls_prepare);
    struct sk_snapshot *s = NULL;
    struct sk_cfgerrs e;
    snprintf(yaml, sizeof(yaml), fmt, P("missing.crt"), P("server.key"));
    sk_cfgerrs_init(&e, "t.yaml");
    int rc = sk_config_load_buf("t.yaml", yaml, strlen(yaml), &s, &e);
    CHECK(rc == SK_ERR_CONFIG && !s && e.n == 1);
    if (e.n) {
        CHECK_STR(e.v[0].path, "static_resources.listeners[0].filter_chains[0].transport_socket");
        CHECK(strstr(e.v[0].msg, "missing.crt") != NULL);
        CHECK(e.v[0].line == 12); /* position of transport_socket in the YAML */
    }
    sk_cfgerrs_free(&e);
    snprintf(yaml, sizeof(yaml), fmt, P("server.crt"), P("server.key"));
    sk_cfgerrs_init(&e, "t.yaml");
    rc = sk_config_load_buf("t.yaml", yaml, strlen(yaml), &s, &e);
    CHECK(rc == 0 && s && e.n == 0);
    if (s) {
        struct sk_tls_cfg *t = s->listeners[0].chains[0].tls;
        CHECK(t && t->rt);
        /* a TCP proxy chain gets no default ALPN */
        struct sk_tls_cfg cc = client_cfg(NULL);
        char *alpn[] = {"h2"};
        cc.alpn = alpn, cc.nalpn = 1;
        struct sk_snapshot *cs = prep(NULL, &cc);
        struct pair p;
        pair_open(&p, t, &cc);
        pair_handshake(&p);
        CHECK(p.rs == 1 && p.rc == 1 && sk_tls_alpn(p.s) == NULL);
        pair_close(&p);
        sk_snapshot_unref(cs);
        cfg_free(&cc);
        sk_snapshot_unref(s);
    }
    sk_cfgerrs_free(&e);
    sk_config_set_prepare_hook(NULL);
}

/* ---- inspector ---------------------------------------------------------------------------------
 */

/* The client's first flight, captured from the socketpair. */
static size_t capture_hello(const char *sni, char **alpn, size_t nalpn, uint8_t *out, size_t cap)
{
    struct sk_tls_cfg cc = client_cfg(NULL);
    cc.sni = (char *)sni;
    cc.alpn = alpn, cc.nalpn = nalpn;
    struct sk_snapshot *s = prep(NULL, &cc);
    struct pair p;
    pair_open(&p, NULL, &cc);
    int want;
    CHECK(sk_tls_handshake(p.c, &want, NULL) == 0);
    ssize_t n = recv(p.fd[0], out, cap, 0);
    pair_close(&p);
    sk_snapshot_unref(s);
    cfg_free(&cc);
    return n > 0 ? (size_t)n : 0;
}

static void test_inspector(void)
{
    static uint8_t hello[16384], frag[16384 + 64];
    static struct sk_client_hello h;
    char *alpn[] = {"h2", "http/1.1"};
    size_t n = capture_hello("Server.TEST", alpn, 2, hello, sizeof(hello));
    CHECK(n > 100);
    CHECK(sk_tls_inspect(hello, n, &h) == 1);
    CHECK(h.is_tls);
    CHECK_STR(h.sni, "server.test");
    CHECK(h.sni_len == 11);
    CHECK(h.nalpn == 2);
    CHECK_STR(h.alpn[0], "h2");
    CHECK_STR(h.alpn[1], "http/1.1");
    /* every truncation needs more bytes; no over-read (exact-size copies) */
    for (size_t k = 0; k < n; k++) {
        uint8_t *c = malloc(k ? k : 1);
        memcpy(c, hello, k);
        int r = sk_tls_inspect(c, k, &h);
        if (r != 0)
            fprintf(stderr, "prefix %zu -> %d\n", k, r);
        CHECK(r == 0);
        free(c);
    }
    /* the handshake split over two records */
    size_t body = n - 5, first = body / 3;
    memcpy(frag, hello, 5);
    frag[3] = (uint8_t)(first >> 8), frag[4] = (uint8_t)first;
    memcpy(frag + 5, hello + 5, first);
    uint8_t *r2 = frag + 5 + first;
    r2[0] = 0x16, r2[1] = 0x03, r2[2] = 0x03;
    r2[3] = (uint8_t)((body - first) >> 8), r2[4] = (uint8_t)(body - first);
    memcpy(r2 + 5, hello + 5 + first, body - first);
    CHECK(sk_tls_inspect(frag, n + 5, &h) == 1);
    CHECK_STR(h.sni, "server.test");
    CHECK(h.nalpn == 2);
    CHECK(sk_tls_inspect(frag, n + 4, &h) == 0);
    /* no SNI, no ALPN */
    n = capture_hello("", NULL, 0, hello, sizeof(hello));
    CHECK(sk_tls_inspect(hello, n, &h) == 1 && h.is_tls && h.sni_len == 0 && h.nalpn == 0);
    /* not TLS */
    CHECK(sk_tls_inspect((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &h) == -1 && !h.is_tls);
    CHECK(sk_tls_inspect((const uint8_t *)"\x16\x02", 2, &h) == -1);
    CHECK(sk_tls_inspect((const uint8_t *)"\x16\x03\x07", 3, &h) == -1);
    CHECK(sk_tls_inspect((const uint8_t *)"\x16", 1, &h) == 0);
    CHECK(sk_tls_inspect((const uint8_t *)"", 0, &h) == 0);
    /* a handshake record that is not a ClientHello */
    CHECK(sk_tls_inspect((const uint8_t *)"\x16\x03\x03\x00\x04\x02\x00\x00\x00", 9, &h) == -1);
    /* corrupt length inside the hello: malformed */
    n = capture_hello("a.test", alpn, 2, hello, sizeof(hello));
    memcpy(frag, hello, n);
    frag[5 + 4 + 2 + 32] = 0xff; /* session id length 255 */
    CHECK(sk_tls_inspect(frag, n, &h) == -1);
    /* a handshake longer than the inspector's limit: TLS without SNI */
    memcpy(frag, "\x16\x03\x01\x40\x00\x01\x01\x00\x00", 9);
    CHECK(sk_tls_inspect(frag, 9, &h) == 1 && h.is_tls && h.sni_len == 0);
    /* many tiny records: gives up after 16 KiB */
    size_t off = 0;
    while (off + 6 <= sizeof(frag)) {
        memcpy(frag + off, "\x16\x03\x01\x00\x01", 5);
        frag[off + 5] = off == 0 ? 0x01 : 0x00;
        off += 6;
    }
    frag[6 + 5] = 0x00, frag[12 + 5] = 0x30, frag[18 + 5] = 0x00; /* length 0x3000 */
    CHECK(sk_tls_inspect(frag, 600, &h) == 0);
    CHECK(sk_tls_inspect(frag, off, &h) == 1 && h.is_tls && h.sni_len == 0);
}

static void test_stats(void)
{
    struct sk_buf b;
    sk_buf_init(&b, 1 << 20);
    sk_tls_stats(&b, true);
    sk_buf_append(&b, "", 1);
    const char *s = sk_buf_rptr(&b);
    CHECK(strstr(s, "# TYPE skiff_tls_handshake_server_ok counter\n") != NULL);
    CHECK(strstr(s, "skiff_tls_handshake_fail{reason=\"no_cert\"} ") != NULL);
    CHECK(strstr(s, "skiff_tls_handshake_version{version=\"TLSv1.3\"} ") != NULL);
    CHECK(strstr(s, "skiff_tls_handshake_cipher{cipher=\"TLS_AES_256_GCM_SHA384\"} ") != NULL);
    sk_buf_free(&b);
    CHECK(stat_val("tls_handshake_server_ok") > 10);
    CHECK(stat_val("tls_handshake_client_ok") > 10);
    CHECK(stat_val("tls_handshake_fail.no_cert") >= 1);
    CHECK(stat_val("tls_handshake_fail.expired") >= 1);
    CHECK(stat_val("tls_handshake_fail.unknown_ca") >= 1);
    CHECK(stat_val("tls_handshake_fail.san_mismatch") >= 1);
    CHECK(stat_val("tls_handshake_fail.not_tls") >= 1);
    CHECK(stat_val("tls_session_reused") >= 1);
}

static void rm_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

int main(void)
{
    sk_log_level = SK_LOG_ERROR + 1; /* quiet: failures here are expected */
    snprintf(dir, sizeof(dir), "/tmp/sktls.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    make_pki();
    test_mtls_ok();
    test_failures();
    test_not_tls();
    test_bulk();
    test_sharing_and_resumption();
    test_rotation();
    test_prepare_errors();
    test_loader_hook();
    test_inspector();
    test_stats();
    sk_tls_shutdown();
    pki_free(&ca);
    pki_free(&ca2);
    rm_dir();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
