/* TLS contexts, per-connection TLS and certificate rotation (include/skiff/tls.h).
 *
 * Why it is built this way:
 *  - One struct sk_tls_ctx per distinct TLS config content (SHA-256 of a
 *    canonical serialization), shared by every snapshot that uses that config,
 *    so reloads keep session caches and the rotation watch state.
 *  - The SSL_CTX a context hands out is an atomic pointer: rotation builds a
 *    complete new SSL_CTX on the main thread and swaps it in; workers only ever
 *    load it and call SSL_new (which takes its own reference). A retired
 *    SSL_CTX waits out a grace period before our reference is dropped, covering
 *    a worker that loaded the pointer but has not reached SSL_new yet.
 *  - Snapshots count references on contexts (released from the snapshot's
 *    destructor, on whichever thread drops the last snapshot reference); only
 *    the main thread frees a context, in the watcher tick, once that count is 0.
 *    Nothing else can revive it concurrently: only prepare (main thread) takes
 *    new references.
 *  - Per-connection state (which context/config, session cache key, failure
 *    reason, negotiated ALPN) hangs off the SSL as ex_data, freed with the SSL.
 *  - Counters are relaxed atomics bumped by workers; the cipher table is a
 *    fixed array filled lock-free (OpenSSL's cipher names are static strings).
 */
#include "skiff/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "skiff/err.h"
#include "skiff/log.h"

#define MAX_PEM_BYTES (4u * 1024 * 1024)
#define MAX_SESS_KEYS 256
#define DEFAULT_CIPHERS                                                                            \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"                                 \
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:"                                     \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
#define DEFAULT_CURVES "X25519:P-256"

/* ---- counters ------------------------------------------------------------------------ */

enum fail_kind {
    F_NO_CERT,
    F_BAD_CERT,
    F_EXPIRED,
    F_UNKNOWN_CA,
    F_SAN,
    F_NOT_TLS,
    F_OTHER,
    F_ALPN,
    F__N
};
static const char *const fail_names[F__N] = {"no_cert",      "bad_cert", "expired", "unknown_ca",
                                             "san_mismatch", "not_tls",  "other",   "no_alpn"};

#define NCIPHERS 32
static struct {
    _Atomic uint64_t ok_server, ok_client, resumed;
    _Atomic uint64_t fail[F__N];
    _Atomic uint64_t v12, v13, vother;
    _Atomic uint64_t rot_ok, rot_failed;
    _Atomic uint64_t contexts;
    struct {
        _Atomic(const char *) name;
        _Atomic uint64_t n;
    } cipher[NCIPHERS];
    _Atomic uint64_t cipher_other;
} st;

static void cnt(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t ld(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void count_cipher(const char *name)
{
    if (!name)
        return;
    for (int i = 0; i < NCIPHERS; i++) {
        const char *cur = atomic_load_explicit(&st.cipher[i].name, memory_order_acquire);
        if (!cur) {
            const char *expect = NULL;
            if (atomic_compare_exchange_strong(&st.cipher[i].name, &expect, name))
                cur = name;
            else
                cur = expect;
        }
        if (cur == name || strcmp(cur, name) == 0) {
            cnt(&st.cipher[i].n);
            return;
        }
    }
    cnt(&st.cipher_other);
}

/* ---- contexts ------------------------------------------------------------------------ */

struct src { /* one DataSource, copied out of the snapshot */
    int kind;
    char *filename;
    char *data; /* inline bytes, or the env variable's name */
    size_t len;
};

struct fstate { /* what stat() said last time */
    bool exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
};

struct sess {
    char *key;
    SSL_SESSION *s;
    uint64_t seq;
};

struct sk_tls_ctx {
    struct sk_tls_ctx *next;
    unsigned char id[32];
    atomic_int refs; /* snapshot references */
    _Atomic(SSL_CTX *) cur;
    /* the config, owned copies */
    bool is_server;
    struct src cert, key, ca;
    char *ciphers, *ciphersuites, *curves;
    int minv, maxv;      /* OpenSSL version constants */
    unsigned char *alpn; /* wire format (length-prefixed); NULL = none */
    size_t alpn_len;
    bool require_client_cert, allow_expired;
    uint64_t session_timeout_ms;
    uint32_t max_session_keys;
    char *label;         /* the config path that created it, for logs */
    struct fstate fs[3]; /* cert, key, ca */
    /* client session cache */
    pthread_mutex_t sess_lock;
    struct sess *sess;
    size_t nsess, sess_cap;
    uint64_t sess_seq;
};

struct retired {
    SSL_CTX *c;
    uint64_t at_ms;
    struct retired *next;
};

static struct sk_tls_ctx *registry;
static struct retired *retired_list;
static uint64_t grace_ms = 10000;
static struct ev_loop *watch_loop;
static ev_timer watch_timer;
static bool watch_started;

/* ---- per-connection state ------------------------------------------------------------ */

struct conn {
    struct sk_tls_ctx *ctx;
    const struct sk_tls_cfg *cfg;
    const char *why;
    bool done, failed;
    char alpn[256];
    char key[256];      /* client session cache key */
    char need_alpn[32]; /* client: the server must select this protocol ("" = any) */
    /* x-forwarded-client-cert element of this connection, built on first use after
     * the handshake (both certificates are fixed for the connection's life) */
    char *xfcc;
    size_t xfcc_len;
    bool xfcc_done;
};

static int conn_idx = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void conn_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    struct conn *c = ptr;
    if (c)
        free(c->xfcc);
    free(c);
}

static void init_once(void)
{
    conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_free_cb);
}

static struct conn *conn_of(const SSL *ssl)
{
    return conn_idx >= 0 && ssl ? SSL_get_ex_data(ssl, conn_idx) : NULL;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- loading material (main thread) ---------------------------------------------------- */

/* The bytes of a DataSource into a malloc'd buffer (NUL-terminated). */
static int src_read(const struct src *s, const char *what, char **out, size_t *len, char *err,
                    size_t errlen)
{
    *out = NULL;
    *len = 0;
    if (s->kind == SK_DS_INLINE) {
        *out = malloc(s->len + 1);
        if (!*out)
            return SK_ERR_NOMEM;
        memcpy(*out, s->data, s->len);
        (*out)[s->len] = 0;
        *len = s->len;
        return 0;
    }
    if (s->kind == SK_DS_ENV) {
        const char *v = getenv(s->data ? s->data : "");
        if (!v) {
            snprintf(err, errlen, "%s: environment variable '%s' is not set", what,
                     s->data ? s->data : "");
            return SK_ERR_CONFIG;
        }
        *len = strlen(v);
        *out = strdup(v);
        return *out ? 0 : SK_ERR_NOMEM;
    }
    if (s->kind != SK_DS_FILE) {
        snprintf(err, errlen, "%s: no data source", what);
        return SK_ERR_CONFIG;
    }
    FILE *f = fopen(s->filename, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open %s: %s", what, s->filename, strerror(errno));
        return SK_ERR_CONFIG;
    }
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= MAX_PEM_BYTES) {
                snprintf(err, errlen, "%s: %s is larger than %u bytes", what, s->filename,
                         MAX_PEM_BYTES);
                free(buf);
                fclose(f);
                return SK_ERR_CONFIG;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int rerr = ferror(f);
    fclose(f);
    if (!buf)
        return SK_ERR_NOMEM;
    if (rerr) {
        snprintf(err, errlen, "%s: cannot read %s", what, s->filename);
        free(buf);
        return SK_ERR_CONFIG;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static const char *src_name(const struct src *s)
{
    return s->kind == SK_DS_FILE ? s->filename : s->kind == SK_DS_ENV ? "environment" : "inline";
}

/* First OpenSSL error as text, and clear the queue. */
static const char *ossl_err(char *buf, size_t n)
{
    unsigned long e = ERR_peek_error();
    if (e)
        ERR_error_string_n(e, buf, n);
    else
        snprintf(buf, n, "unknown error");
    ERR_clear_error();
    return buf;
}

static int load_cert_key(SSL_CTX *c, struct sk_tls_ctx *x, char *err, size_t errlen)
{
    char *pem = NULL, *kpem = NULL;
    size_t len, klen;
    char eb[256];
    int rc = src_read(&x->cert, "certificate_chain", &pem, &len, err, errlen);
    if (rc)
        return rc;
    rc = SK_ERR_CONFIG;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *leaf = b ? PEM_read_bio_X509_AUX(b, NULL, NULL, NULL) : NULL;
    if (!leaf) {
        snprintf(err, errlen, "certificate_chain: no PEM certificate in %s (%s)",
                 src_name(&x->cert), ossl_err(eb, sizeof(eb)));
        goto out;
    }
    if (SSL_CTX_use_certificate(c, leaf) != 1) {
        snprintf(err, errlen, "certificate_chain: %s", ossl_err(eb, sizeof(eb)));
        goto out;
    }
    SSL_CTX_clear_chain_certs(c);
    for (;;) {
        X509 *ca = PEM_read_bio_X509(b, NULL, NULL, NULL);
        if (!ca)
            break;
        if (SSL_CTX_add0_chain_cert(c, ca) != 1) {
            X509_free(ca);
            snprintf(err, errlen, "certificate_chain: %s", ossl_err(eb, sizeof(eb)));
            goto out;
        }
    }
    unsigned long le = ERR_peek_last_error();
    if (ERR_GET_LIB(le) == ERR_LIB_PEM && ERR_GET_REASON(le) == PEM_R_NO_START_LINE)
        ERR_clear_error(); /* normal end of the chain */
    else if (le) {
        snprintf(err, errlen, "certificate_chain: bad PEM in %s (%s)", src_name(&x->cert),
                 ossl_err(eb, sizeof(eb)));
        goto out;
    }
    if (src_read(&x->key, "private_key", &kpem, &klen, err, errlen) != 0)
        goto out;
    BIO *kb = BIO_new_mem_buf(kpem, (int)klen);
    EVP_PKEY *pk = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, (void *)"") : NULL;
    BIO_free(kb);
    if (!pk) {
        snprintf(err, errlen, "private_key: no PEM private key in %s (%s)", src_name(&x->key),
                 ossl_err(eb, sizeof(eb)));
        goto out;
    }
    int ok = SSL_CTX_use_PrivateKey(c, pk);
    EVP_PKEY_free(pk);
    if (ok != 1 || SSL_CTX_check_private_key(c) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "private_key: the private key does not match the certificate");
        goto out;
    }
    rc = 0;
out:
    X509_free(leaf);
    BIO_free(b);
    if (kpem) {
        OPENSSL_cleanse(kpem, klen);
        free(kpem);
    }
    free(pem);
    return rc;
}

static int load_ca(SSL_CTX *c, struct sk_tls_ctx *x, char *err, size_t errlen)
{
    char *pem;
    size_t len;
    char eb[256];
    int rc = src_read(&x->ca, "trusted_ca", &pem, &len, err, errlen);
    if (rc)
        return rc;
    X509_STORE *store = SSL_CTX_get_cert_store(c);
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    int n = 0;
    rc = 0;
    for (X509 *ca; b && (ca = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL)); n++) {
        if (X509_STORE_add_cert(store, ca) != 1) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
                snprintf(err, errlen, "trusted_ca: %s", ossl_err(eb, sizeof(eb)));
                rc = SK_ERR_CONFIG;
            }
            ERR_clear_error();
        }
        X509_free(ca);
        if (rc)
            break;
    }
    unsigned long le = ERR_peek_last_error();
    if (!rc && le &&
        !(ERR_GET_LIB(le) == ERR_LIB_PEM && ERR_GET_REASON(le) == PEM_R_NO_START_LINE)) {
        snprintf(err, errlen, "trusted_ca: bad PEM in %s (%s)", src_name(&x->ca),
                 ossl_err(eb, sizeof(eb)));
        rc = SK_ERR_CONFIG;
    }
    ERR_clear_error();
    if (!rc && n == 0) {
        snprintf(err, errlen, "trusted_ca: no PEM certificate in %s", src_name(&x->ca));
        rc = SK_ERR_CONFIG;
    }
    /* like Envoy: an intermediate in trusted_ca is a trust anchor too */
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    BIO_free(b);
    free(pem);
    return rc;
}

static int verify_cb(int ok, X509_STORE_CTX *xs);
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg);
static int new_session_cb(SSL *ssl, SSL_SESSION *sess);

/* A complete SSL_CTX from the context's config and the material as it is now. */
static SSL_CTX *build(struct sk_tls_ctx *x, char *err, size_t errlen)
{
    char eb[256];
    SSL_CTX *c = SSL_CTX_new(x->is_server ? TLS_server_method() : TLS_client_method());
    if (!c) {
        snprintf(err, errlen, "SSL_CTX_new: %s", ossl_err(eb, sizeof(eb)));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(c, x->minv);
    SSL_CTX_set_max_proto_version(c, x->maxv);
    uint64_t opts = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF;
    if (x->is_server)
        opts |= SSL_OP_CIPHER_SERVER_PREFERENCE;
    if (!x->is_server && x->max_session_keys == 0)
        opts |= SSL_OP_NO_TICKET;
    SSL_CTX_set_options(c, opts);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    if (x->ciphers) { /* OpenSSL skips unknown names silently; Envoy rejects them */
        char *dup = strdup(x->ciphers), *save = NULL;
        for (char *tok = dup ? strtok_r(dup, ":", &save) : NULL; tok;
             tok = strtok_r(NULL, ":", &save)) {
            if (strchr("!-+@", tok[0]) || SSL_CTX_set_cipher_list(c, tok) == 1)
                continue;
            snprintf(err, errlen, "tls_params.cipher_suites: unknown cipher '%s'", tok);
            free(dup);
            goto fail;
        }
        free(dup);
    }
    if (SSL_CTX_set_cipher_list(c, x->ciphers ? x->ciphers : DEFAULT_CIPHERS) != 1) {
        snprintf(err, errlen, "tls_params.cipher_suites: no usable cipher in '%s'",
                 x->ciphers ? x->ciphers : DEFAULT_CIPHERS);
        goto fail;
    }
    if (x->ciphersuites && SSL_CTX_set_ciphersuites(c, x->ciphersuites) != 1) {
        snprintf(err, errlen, "tls_params.cipher_suites: bad TLS 1.3 cipher suites '%s'",
                 x->ciphersuites);
        goto fail;
    }
    if (SSL_CTX_set1_groups_list(c, x->curves ? x->curves : DEFAULT_CURVES) != 1) {
        snprintf(err, errlen, "tls_params.ecdh_curves: bad curve list '%s'",
                 x->curves ? x->curves : DEFAULT_CURVES);
        goto fail;
    }
    ERR_clear_error();
    if (x->cert.kind != SK_DS_NONE && load_cert_key(c, x, err, errlen) != 0)
        goto fail;
    if (x->ca.kind != SK_DS_NONE && load_ca(c, x, err, errlen) != 0)
        goto fail;
    int mode = SSL_VERIFY_NONE;
    if (x->ca.kind != SK_DS_NONE || x->require_client_cert)
        mode = SSL_VERIFY_PEER;
    if (x->is_server && x->require_client_cert)
        mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(c, mode, verify_cb);
    if (x->is_server) {
        SSL_CTX_set_alpn_select_cb(c, alpn_select_cb, NULL);
        /* one TLS 1.3 ticket, not OpenSSL's 2: OpenSSL 3.0 builds each ticket by
         * encoding the session and parsing it back, peer certificate and its key
         * included, ~10% of a full mTLS handshake per ticket (bench/mesh_peers.sh);
         * tickets stay reusable, so one per connection still resumes */
        SSL_CTX_set_num_tickets(c, 1);
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
        SSL_CTX_set_session_id_context(c, x->id, sizeof(x->id)); /* 32 = the maximum */
        if (x->session_timeout_ms)
            SSL_CTX_set_timeout(c, (long)(x->session_timeout_ms / 1000));
    } else if (x->max_session_keys) {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c, new_session_cb);
    } else {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    }
    return c;
fail:
    ERR_clear_error();
    SSL_CTX_free(c);
    return NULL;
}

/* ---- registry ---------------------------------------------------------------------------- */

static void h_bytes(EVP_MD_CTX *m, const void *p, size_t n)
{
    uint64_t l = n;
    EVP_DigestUpdate(m, &l, sizeof(l));
    if (n)
        EVP_DigestUpdate(m, p, n);
}

static void h_str(EVP_MD_CTX *m, const char *s)
{
    if (s)
        h_bytes(m, s, strlen(s));
    else
        h_bytes(m, "\xff", 1);
}

static void h_u64(EVP_MD_CTX *m, uint64_t v)
{
    EVP_DigestUpdate(m, &v, sizeof(v));
}

static void h_src(EVP_MD_CTX *m, const struct sk_datasource *d)
{
    h_u64(m, (uint64_t)d->kind);
    if (d->kind == SK_DS_FILE)
        h_str(m, d->filename);
    else if (d->kind == SK_DS_INLINE || d->kind == SK_DS_ENV)
        h_bytes(m, d->data, d->kind == SK_DS_ENV ? strlen(d->data ? d->data : "") : d->len);
}

/* Effective config bits that are not copied verbatim from sk_tls_cfg. */
struct eff {
    unsigned char *alpn;
    size_t alpn_len;
    char *ciphers, *ciphersuites;
    int minv, maxv;
};

static void cfg_id(const struct sk_tls_cfg *c, const struct eff *e, unsigned char out[32])
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned int n = 32;
    memset(out, 0, 32);
    if (!m)
        return;
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    h_u64(m, c->is_server);
    h_src(m, &c->cert_chain);
    h_src(m, &c->private_key);
    h_src(m, &c->trusted_ca);
    h_bytes(m, e->alpn, e->alpn_len);
    h_u64(m, (uint64_t)e->minv);
    h_u64(m, (uint64_t)e->maxv);
    h_str(m, e->ciphers);
    h_str(m, e->ciphersuites);
    h_str(m, c->ecdh_curves);
    h_u64(m, c->require_client_cert);
    h_u64(m, c->allow_expired);
    h_u64(m, c->session_timeout_ms);
    h_u64(m, c->max_session_keys);
    EVP_DigestFinal_ex(m, out, &n);
    EVP_MD_CTX_free(m);
}

static void fstate_get(const struct src *s, struct fstate *f)
{
    memset(f, 0, sizeof(*f));
    struct stat sb;
    if (s->kind != SK_DS_FILE || stat(s->filename, &sb) != 0)
        return;
    f->exists = true;
    f->dev = sb.st_dev;
    f->ino = sb.st_ino;
    f->size = sb.st_size;
    f->mtime = sb.st_mtim;
    f->ctime = sb.st_ctim;
}

static bool fstate_eq(const struct fstate *a, const struct fstate *b)
{
    return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static int src_copy(struct src *d, const struct sk_datasource *s)
{
    d->kind = s->kind;
    if (s->filename && !(d->filename = strdup(s->filename)))
        return SK_ERR_NOMEM;
    if (s->data) {
        size_t n = s->kind == SK_DS_ENV ? strlen(s->data) : s->len;
        if (!(d->data = malloc(n + 1)))
            return SK_ERR_NOMEM;
        memcpy(d->data, s->data, n);
        d->data[n] = 0;
        d->len = n;
    }
    return 0;
}

static void src_free(struct src *s)
{
    free(s->filename);
    if (s->data && s->kind == SK_DS_INLINE)
        OPENSSL_cleanse(s->data, s->len);
    free(s->data);
}

static void sess_clear(struct sk_tls_ctx *x)
{
    for (size_t i = 0; i < x->nsess; i++) {
        free(x->sess[i].key);
        SSL_SESSION_free(x->sess[i].s);
    }
    free(x->sess);
    x->sess = NULL;
    x->nsess = x->sess_cap = 0;
}

static void ctx_free(struct sk_tls_ctx *x)
{
    if (!x)
        return;
    SSL_CTX_free(atomic_load(&x->cur));
    src_free(&x->cert);
    src_free(&x->key);
    src_free(&x->ca);
    free(x->ciphers);
    free(x->ciphersuites);
    free(x->curves);
    free(x->alpn);
    free(x->label);
    sess_clear(x);
    pthread_mutex_destroy(&x->sess_lock);
    free(x);
}

static unsigned char *alpn_wire(char **v, size_t n, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        if (l == 0 || l > 255)
            continue;
        total += 1 + l;
    }
    *len = 0;
    if (!total)
        return NULL;
    unsigned char *w = malloc(total), *p = w;
    if (!w)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        if (l == 0 || l > 255)
            continue;
        *p++ = (unsigned char)l;
        memcpy(p, v[i], l);
        p += l;
    }
    *len = total;
    return w;
}

/* Envoy/BoringSSL cipher syntax -> OpenSSL: "[A|B]" equal-preference groups are
 * flattened in order; TLS 1.3 suite names (TLS_*) go to the separate list. */
static void split_ciphers(const char *in, char **ciphers, char **suites)
{
    *ciphers = *suites = NULL;
    if (!in || !*in)
        return;
    size_t n = strlen(in);
    char *c = calloc(1, n + 1), *s = calloc(1, n + 1);
    char *tmp = strdup(in);
    if (!c || !s || !tmp) {
        free(c), free(s), free(tmp);
        return;
    }
    for (char *p = tmp; *p; p++)
        if (*p == '[' || *p == ']')
            *p = ':';
        else if (*p == '|')
            *p = ':';
    char *save = NULL;
    for (char *tok = strtok_r(tmp, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
        char *dst = strncmp(tok, "TLS_", 4) == 0 ? s : c;
        if (*dst)
            strcat(dst, ":");
        strcat(dst, tok);
    }
    free(tmp);
    if (*c)
        *ciphers = c;
    else
        free(c);
    if (*s)
        *suites = s;
    else
        free(s);
}

static int ossl_version(int v, int dflt)
{
    return v == 3 ? TLS1_2_VERSION : v == 4 ? TLS1_3_VERSION : dflt;
}

/* Find or create the context for cfg (with the effective ALPN list). */
static struct sk_tls_ctx *ctx_get(const struct sk_tls_cfg *cfg, char **alpn_dflt, size_t nalpn_dflt,
                                  const char *label, char *err, size_t errlen)
{
    struct eff e = {0};
    e.alpn = cfg->nalpn ? alpn_wire(cfg->alpn, cfg->nalpn, &e.alpn_len)
                        : alpn_wire(alpn_dflt, nalpn_dflt, &e.alpn_len);
    split_ciphers(cfg->cipher_suites, &e.ciphers, &e.ciphersuites);
    e.minv = ossl_version(cfg->min_version, TLS1_2_VERSION);
    e.maxv = ossl_version(cfg->max_version, TLS1_3_VERSION);
    unsigned char id[32];
    cfg_id(cfg, &e, id);
    for (struct sk_tls_ctx *x = registry; x; x = x->next)
        if (memcmp(x->id, id, 32) == 0) {
            free(e.alpn), free(e.ciphers), free(e.ciphersuites);
            atomic_fetch_add(&x->refs, 1);
            return x;
        }
    if (cfg->sds_cert_name && cfg->cert_chain.kind == SK_DS_NONE) {
        snprintf(err, errlen,
                 "SDS secret '%s' (tls_certificate_sds_secret_configs) is not available",
                 cfg->sds_cert_name);
        goto fail_eff;
    }
    if (cfg->sds_ca_name && cfg->trusted_ca.kind == SK_DS_NONE) {
        snprintf(err, errlen, "SDS secret '%s' (validation context) is not available",
                 cfg->sds_ca_name);
        goto fail_eff;
    }
    if (cfg->is_server && cfg->cert_chain.kind == SK_DS_NONE) {
        snprintf(err, errlen, "a server TLS context needs a certificate");
        goto fail_eff;
    }
    struct sk_tls_ctx *x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(err, errlen, "out of memory");
        goto fail_eff;
    }
    pthread_mutex_init(&x->sess_lock, NULL);
    memcpy(x->id, id, 32);
    x->is_server = cfg->is_server;
    x->alpn = e.alpn;
    x->alpn_len = e.alpn_len;
    x->ciphers = e.ciphers;
    x->ciphersuites = e.ciphersuites;
    x->minv = e.minv;
    x->maxv = e.maxv;
    x->require_client_cert = cfg->require_client_cert;
    x->allow_expired = cfg->allow_expired;
    x->session_timeout_ms = cfg->session_timeout_ms;
    x->max_session_keys =
        cfg->max_session_keys > MAX_SESS_KEYS ? MAX_SESS_KEYS : cfg->max_session_keys;
    if (src_copy(&x->cert, &cfg->cert_chain) || src_copy(&x->key, &cfg->private_key) ||
        src_copy(&x->ca, &cfg->trusted_ca) ||
        (cfg->ecdh_curves && !(x->curves = strdup(cfg->ecdh_curves))) ||
        !(x->label = strdup(label))) {
        snprintf(err, errlen, "out of memory");
        ctx_free(x);
        return NULL;
    }
    /* stat before reading: a change racing the load is seen by the next tick */
    fstate_get(&x->cert, &x->fs[0]);
    fstate_get(&x->key, &x->fs[1]);
    fstate_get(&x->ca, &x->fs[2]);
    SSL_CTX *c = build(x, err, errlen);
    if (!c) {
        ctx_free(x);
        return NULL;
    }
    atomic_store(&x->cur, c);
    atomic_store(&x->refs, 1);
    x->next = registry;
    registry = x;
    cnt(&st.contexts);
    return x;
fail_eff:
    free(e.alpn), free(e.ciphers), free(e.ciphersuites);
    return NULL;
}

static void ctx_unref(struct sk_tls_ctx *x)
{
    if (x)
        atomic_fetch_sub_explicit(&x->refs, 1, memory_order_acq_rel);
}

/* ---- prepare -------------------------------------------------------------------------- */

struct prep { /* the snapshot's contexts, released by the destructor */
    size_t n;
    struct sk_tls_ctx **v;
};

static void snapshot_dtor(struct sk_snapshot *s, void *arg)
{
    (void)s;
    struct prep *p = arg;
    for (size_t i = 0; i < p->n; i++)
        ctx_unref(p->v[i]);
}

static char *h2_h1[] = {"h2", "http/1.1"};
static char *h1_only[] = {"http/1.1"};
static char *h2_only[] = {"h2"};

struct item {
    struct sk_tls_cfg *cfg;
    char path[200];
    char **alpn;
    size_t nalpn;
};

static void chain_item(struct item *it, struct sk_filter_chain *fc, const char *path)
{
    it->cfg = fc->tls;
    int w = snprintf(it->path, sizeof(it->path), "%.150s.transport_socket", path);
    (void)w;
    /* Default ALPN for a server without alpn_protocols: what the chain speaks.
     * A TCP proxy chain offers none (the bytes are not ours to interpret). */
    it->alpn = NULL;
    it->nalpn = 0;
    if (fc->kind == SK_CHAIN_HCM && fc->hcm) {
        if (fc->hcm->codec_type == SK_CODEC_HTTP1)
            it->alpn = h1_only, it->nalpn = 1;
        else if (fc->hcm->codec_type == SK_CODEC_HTTP2)
            it->alpn = h2_only, it->nalpn = 1;
        else
            it->alpn = h2_h1, it->nalpn = 2;
    }
}

int sk_tls_prepare(struct sk_snapshot *snap, struct sk_cfgerrs *errs)
{
    if (!snap || snap->base)
        return 0; /* a derived snapshot (EDS-only update) uses its base's contexts */
    pthread_once(&once, init_once);
    for (struct sk_snapshot_dtor *d = snap->dtors; d; d = d->next)
        if (d->fn == snapshot_dtor)
            return 0; /* already prepared */
    size_t n = 0;
    for (size_t i = 0; i < snap->nlisteners; i++) {
        struct sk_listener *l = &snap->listeners[i];
        for (size_t j = 0; j < l->nchains; j++)
            n += l->chains[j].tls != NULL;
        n += l->default_chain && l->default_chain->tls;
    }
    for (size_t i = 0; i < snap->nclusters; i++)
        n += snap->clusters[i].tls != NULL;
    if (n == 0)
        return 0;
    struct item *items = calloc(n, sizeof(*items));
    struct prep *p = sk_arena_alloc(&snap->arena, sizeof(*p));
    struct sk_snapshot_dtor *d = sk_arena_alloc(&snap->arena, sizeof(*d));
    struct sk_tls_ctx **v = sk_arena_alloc(&snap->arena, n * sizeof(*v));
    if (!items || !p || !d || !v) {
        free(items);
        sk_cfgerrs_add(errs, "", "out of memory preparing TLS contexts");
        return SK_ERR_NOMEM;
    }
    size_t k = 0;
    char path[160];
    for (size_t i = 0; i < snap->nlisteners; i++) {
        struct sk_listener *l = &snap->listeners[i];
        for (size_t j = 0; j < l->nchains; j++)
            if (l->chains[j].tls) {
                snprintf(path, sizeof(path), "static_resources.listeners[%zu].filter_chains[%zu]",
                         i, j);
                chain_item(&items[k++], &l->chains[j], path);
            }
        if (l->default_chain && l->default_chain->tls) {
            snprintf(path, sizeof(path), "static_resources.listeners[%zu].default_filter_chain", i);
            chain_item(&items[k++], l->default_chain, path);
        }
    }
    for (size_t i = 0; i < snap->nclusters; i++)
        if (snap->clusters[i].tls) {
            items[k].cfg = snap->clusters[i].tls;
            snprintf(items[k].path, sizeof(items[k].path),
                     "static_resources.clusters[%zu].transport_socket", i);
            k++;
        }
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        char err[512] = "";
        struct sk_tls_ctx *x =
            ctx_get(items[i].cfg, items[i].alpn, items[i].nalpn, items[i].path, err, sizeof(err));
        v[i] = x;
        if (!x) {
            sk_cfgerrs_add(errs, items[i].path, "%s", err);
            bad++;
        }
    }
    if (bad) {
        for (size_t i = 0; i < n; i++) {
            ctx_unref(v[i]);
            items[i].cfg->rt = NULL;
        }
        free(items);
        return SK_ERR_CONFIG;
    }
    for (size_t i = 0; i < n; i++)
        items[i].cfg->rt = v[i];
    free(items);
    p->n = n;
    p->v = v;
    d->fn = snapshot_dtor;
    d->arg = p;
    d->next = snap->dtors;
    snap->dtors = d;
    return 0;
}

/* ---- rotation (main thread) ---------------------------------------------------------------- */

static void retire(SSL_CTX *c)
{
    struct retired *r = malloc(sizeof(*r));
    if (!r) {
        /* cannot track it: leaking is safer than freeing under a worker */
        sk_error("[tls] out of memory retiring an SSL_CTX; leaking it");
        return;
    }
    r->c = c;
    r->at_ms = now_ms();
    r->next = retired_list;
    retired_list = r;
}

static void sweep(bool all)
{
    uint64_t now = now_ms();
    for (struct retired **pp = &retired_list; *pp;) {
        struct retired *r = *pp;
        if (all || now - r->at_ms >= grace_ms) {
            *pp = r->next;
            SSL_CTX_free(r->c);
            free(r);
        } else {
            pp = &r->next;
        }
    }
    for (struct sk_tls_ctx **pp = &registry; *pp;) {
        struct sk_tls_ctx *x = *pp;
        if (all || atomic_load(&x->refs) <= 0) {
            *pp = x->next;
            ctx_free(x);
            atomic_fetch_sub(&st.contexts, 1);
        } else {
            pp = &x->next;
        }
    }
}

int sk_tls_watch_check(void)
{
    int rotated = 0;
    for (struct sk_tls_ctx *x = registry; x; x = x->next) {
        if (atomic_load(&x->refs) <= 0)
            continue;
        struct fstate now[3];
        fstate_get(&x->cert, &now[0]);
        fstate_get(&x->key, &now[1]);
        fstate_get(&x->ca, &now[2]);
        bool changed = false;
        for (int i = 0; i < 3; i++)
            changed |= !fstate_eq(&now[i], &x->fs[i]);
        if (!changed)
            continue;
        memcpy(x->fs, now, sizeof(now)); /* retry only on the next change */
        char err[512] = "";
        SSL_CTX *c = build(x, err, sizeof(err));
        if (!c) {
            cnt(&st.rot_failed);
            sk_error("[tls] %s: certificate rotation failed, keeping the old material: %s",
                     x->label, err);
            continue;
        }
        SSL_CTX *old = atomic_exchange(&x->cur, c);
        retire(old);
        if (!x->is_server) { /* sessions of the old material are no use */
            pthread_mutex_lock(&x->sess_lock);
            sess_clear(x);
            pthread_mutex_unlock(&x->sess_lock);
        }
        cnt(&st.rot_ok);
        rotated++;
        sk_info("[tls] %s: rotated TLS material", x->label);
    }
    sweep(false);
    return rotated;
}

void sk_tls_set_grace_ms(uint64_t ms)
{
    grace_ms = ms;
}

static void watch_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)t, (void)revents;
    sk_tls_watch_check();
}

void sk_tls_watch_start(struct ev_loop *loop)
{
    if (watch_started)
        return;
    watch_loop = loop;
    ev_timer_init(&watch_timer, watch_cb, 1.0, 1.0);
    ev_timer_start(loop, &watch_timer);
    ev_unref(loop); /* the watcher alone does not keep the loop running */
    watch_started = true;
}

void sk_tls_shutdown(void)
{
    if (watch_started) {
        ev_ref(watch_loop);
        ev_timer_stop(watch_loop, &watch_timer);
        watch_started = false;
    }
    sweep(true);
}

/* ---- SAN matching -------------------------------------------------------------------------- */

static bool ci_eq(const char *a, const char *b, size_t n, bool icase)
{
    return icase ? strncasecmp(a, b, n) == 0 : memcmp(a, b, n) == 0;
}

static bool str_match(const struct sk_san_matcher *m, const char *s, size_t n)
{
    size_t vl = strlen(m->value);
    switch (m->kind) {
    case SK_STR_EXACT:
        return n == vl && ci_eq(s, m->value, n, m->ignore_case);
    case SK_STR_PREFIX:
        return n >= vl && ci_eq(s, m->value, vl, m->ignore_case);
    case SK_STR_SUFFIX:
        return n >= vl && ci_eq(s + n - vl, m->value, vl, m->ignore_case);
    case SK_STR_CONTAINS:
        for (size_t i = 0; i + vl <= n; i++)
            if (ci_eq(s + i, m->value, vl, m->ignore_case))
                return true;
        return false;
    }
    return false;
}

/* A DNS SAN "*.example.com" matches exactly one extra label, like Envoy's
 * dnsNameMatch, for exact matchers. */
static bool dns_wild_match(const struct sk_san_matcher *m, const char *san, size_t n)
{
    if (m->kind != SK_STR_EXACT || n < 3 || san[0] != '*' || san[1] != '.')
        return false;
    const char *v = m->value;
    const char *dot = strchr(v, '.');
    if (!dot || dot == v)
        return false;
    size_t rest = strlen(dot);
    return rest == n - 1 && strncasecmp(dot, san + 1, rest) == 0;
}

static int san_type_of(int gen_type)
{
    switch (gen_type) {
    case GEN_EMAIL:
        return SK_SAN_EMAIL;
    case GEN_DNS:
        return SK_SAN_DNS;
    case GEN_URI:
        return SK_SAN_URI;
    case GEN_IPADD:
        return SK_SAN_IP;
    }
    return -1;
}

/* The text of a SAN entry into buf; length or 0 (unusable). */
static size_t san_text(const GENERAL_NAME *g, char *buf, size_t n)
{
    if (g->type == GEN_IPADD) {
        const ASN1_OCTET_STRING *ip = g->d.iPAddress;
        int fam = ip->length == 4 ? AF_INET : ip->length == 16 ? AF_INET6 : 0;
        if (!fam || !inet_ntop(fam, ip->data, buf, (socklen_t)n))
            return 0;
        return strlen(buf);
    }
    const ASN1_IA5STRING *s = g->d.ia5;
    if (!s || s->length <= 0 || (size_t)s->length >= n || memchr(s->data, 0, (size_t)s->length))
        return 0;
    memcpy(buf, s->data, (size_t)s->length);
    buf[s->length] = 0;
    return (size_t)s->length;
}

static bool san_ok(X509 *cert, const struct sk_tls_cfg *cfg)
{
    if (!cfg || cfg->nsan == 0)
        return true;
    if (!cert)
        return false;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    bool ok = false;
    char buf[1024];
    for (int i = 0; names && !ok && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        int t = san_type_of(g->type);
        if (t < 0)
            continue;
        size_t n = san_text(g, buf, sizeof(buf));
        if (!n)
            continue;
        for (size_t j = 0; !ok && j < cfg->nsan; j++) {
            const struct sk_san_matcher *m = &cfg->san[j];
            if (m->san_type != SK_SAN_ANY && m->san_type != t)
                continue;
            ok = str_match(m, buf, n) || (t == SK_SAN_DNS && dns_wild_match(m, buf, n));
        }
    }
    GENERAL_NAMES_free(names);
    return ok;
}

static int verify_cb(int ok, X509_STORE_CTX *xs)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct conn *c = conn_of(ssl);
    if (!c)
        return ok;
    int e = X509_STORE_CTX_get_error(xs);
    if (!ok && c->ctx->allow_expired && e == X509_V_ERR_CERT_HAS_EXPIRED) {
        X509_STORE_CTX_set_error(xs, X509_V_OK);
        ok = 1;
    }
    if (ok && X509_STORE_CTX_get_error_depth(xs) == 0 && c->cfg && c->cfg->nsan &&
        !san_ok(X509_STORE_CTX_get_current_cert(xs), c->cfg)) {
        c->why = "SAN mismatch";
        X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
        ok = 0;
    }
    return ok;
}

int sk_tls_verify_peer(SSL *ssl, const struct sk_tls_cfg *cfg, const char **why)
{
    if (!cfg || cfg->nsan == 0)
        return 0;
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (!peer) {
        if (why)
            *why = "no peer certificate";
        return SK_ERR_PROTO;
    }
    if (!san_ok(peer, cfg)) {
        if (why)
            *why = "SAN mismatch";
        return SK_ERR_PROTO;
    }
    return 0;
}

/* ---- callbacks ---------------------------------------------------------------------------- */

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)arg;
    struct conn *c = conn_of(ssl);
    if (!c || !c->ctx->alpn)
        return SSL_TLSEXT_ERR_NOACK;
    const unsigned char *ours = c->ctx->alpn;
    size_t olen = c->ctx->alpn_len;
    for (size_t i = 0; i < olen; i += 1 + (size_t)ours[i]) {
        size_t l = ours[i];
        if (i + 1 + l > olen)
            break;
        for (size_t j = 0; j < inlen;) {
            size_t cl = in[j];
            if (j + 1 + cl > inlen)
                break;
            if (cl == l && memcmp(in + j + 1, ours + i + 1, l) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)cl;
                return SSL_TLSEXT_ERR_OK;
            }
            j += 1 + cl;
        }
    }
    return SSL_TLSEXT_ERR_NOACK; /* no overlap: carry on without ALPN, like Envoy */
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct conn *c = conn_of(ssl);
    if (!c || c->ctx->max_session_keys == 0 || !SSL_SESSION_is_resumable(sess))
        return 0;
    struct sk_tls_ctx *x = c->ctx;
    /* keep a copy (see offer_session); the SSL keeps the original */
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    if (!copy)
        return 0;
    bool taken = false;
    pthread_mutex_lock(&x->sess_lock);
    struct sess *slot = NULL;
    for (size_t i = 0; i < x->nsess; i++)
        if (strcmp(x->sess[i].key, c->key) == 0)
            slot = &x->sess[i];
    if (!slot && x->nsess < x->max_session_keys) {
        if (x->nsess == x->sess_cap) {
            size_t nc = x->sess_cap ? x->sess_cap * 2 : 4;
            if (nc > x->max_session_keys)
                nc = x->max_session_keys;
            struct sess *nv = realloc(x->sess, nc * sizeof(*nv));
            if (nv) {
                x->sess = nv;
                x->sess_cap = nc;
            }
        }
        if (x->nsess < x->sess_cap) {
            char *k = strdup(c->key);
            if (k) {
                slot = &x->sess[x->nsess++];
                slot->key = k;
                slot->s = NULL;
            }
        }
    }
    if (!slot && x->nsess) { /* full: replace the least recently stored */
        slot = &x->sess[0];
        for (size_t i = 1; i < x->nsess; i++)
            if (x->sess[i].seq < slot->seq)
                slot = &x->sess[i];
        char *k = strdup(c->key);
        if (k) {
            free(slot->key);
            slot->key = k;
        } else {
            slot = NULL;
        }
    }
    if (slot) {
        SSL_SESSION_free(slot->s);
        slot->s = copy;
        slot->seq = ++x->sess_seq;
        taken = true;
    }
    pthread_mutex_unlock(&x->sess_lock);
    if (!taken)
        SSL_SESSION_free(copy);
    return 0; /* we did not keep `sess` itself */
}

static void offer_session(SSL *ssl, struct conn *c)
{
    struct sk_tls_ctx *x = c->ctx;
    if (x->is_server || x->max_session_keys == 0)
        return;
    pthread_mutex_lock(&x->sess_lock);
    for (size_t i = 0; i < x->nsess; i++)
        if (strcmp(x->sess[i].key, c->key) == 0) {
            /* a copy: OpenSSL marks the SSL's session not resumable when the
             * connection ends without close_notify */
            SSL_SESSION *dup = SSL_SESSION_dup(x->sess[i].s);
            if (dup) {
                SSL_set_session(ssl, dup);
                SSL_SESSION_free(dup);
            }
            break;
        }
    pthread_mutex_unlock(&x->sess_lock);
}

/* ---- connections -------------------------------------------------------------------------- */

SSL *sk_tls_ssl_new(const struct sk_tls_cfg *cfg)
{
    pthread_once(&once, init_once);
    if (!cfg || !cfg->rt || conn_idx < 0)
        return NULL;
    struct sk_tls_ctx *x = cfg->rt;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ctx = x;
    c->cfg = cfg;
    SSL *ssl = SSL_new(atomic_load_explicit(&x->cur, memory_order_acquire));
    if (!ssl || !SSL_set_ex_data(ssl, conn_idx, c)) {
        SSL_free(ssl);
        free(c);
        ERR_clear_error();
        return NULL;
    }
    if (x->is_server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (cfg->sni && *cfg->sni)
            SSL_set_tlsext_host_name(ssl, cfg->sni);
        if (x->alpn)
            SSL_set_alpn_protos(ssl, x->alpn, (unsigned)x->alpn_len);
        snprintf(c->key, sizeof(c->key), "%s", cfg->sni ? cfg->sni : "");
        offer_session(ssl, c);
    }
    ERR_clear_error();
    return ssl;
}

void sk_tls_ssl_require_alpn(SSL *ssl, const char *proto)
{
    struct conn *c = conn_of(ssl);
    size_t n = proto ? strlen(proto) : 0;
    if (!c || c->ctx->is_server || n == 0 || n >= sizeof(c->need_alpn))
        return;
    memcpy(c->need_alpn, proto, n + 1);
    if (!c->ctx->alpn) {
        /* no alpn_protocols configured: offer just this one */
        unsigned char wire[sizeof(c->need_alpn) + 1];
        wire[0] = (unsigned char)n;
        memcpy(wire + 1, proto, n);
        SSL_set_alpn_protos(ssl, wire, (unsigned)n + 1);
    }
}

void sk_tls_ssl_set_session_key(SSL *ssl, const char *key)
{
    struct conn *c = conn_of(ssl);
    if (!c || c->ctx->is_server)
        return;
    snprintf(c->key, sizeof(c->key), "%s", key ? key : "");
    SSL_set_session(ssl, NULL);
    offer_session(ssl, c);
}

static int verify_reason(long v, const char **why)
{
    switch (v) {
    case X509_V_OK:
        return -1;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        *why = "certificate expired";
        return F_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        *why = "certificate not yet valid";
        return F_BAD_CERT;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
        *why = "unknown CA";
        return F_UNKNOWN_CA;
    }
    *why = "bad certificate";
    return F_BAD_CERT;
}

/* Why did this SSL operation fail? Consumes the thread's error queue. */
static int classify(SSL *ssl, int ssl_err, struct conn *c, const char **why)
{
    int kind = F_OTHER;
    *why = "handshake failure";
    if (c && c->why && strcmp(c->why, "SAN mismatch") == 0) {
        *why = c->why;
        ERR_clear_error();
        return F_SAN;
    }
    int vk = verify_reason(SSL_get_verify_result(ssl), why);
    if (vk >= 0) {
        ERR_clear_error();
        return vk;
    }
    if (ssl_err == SSL_ERROR_ZERO_RETURN) {
        *why = "connection closed";
        return F_OTHER;
    }
    if (ssl_err == SSL_ERROR_SYSCALL) {
        *why = errno ? "socket error" : "connection closed";
        ERR_clear_error();
        return F_OTHER;
    }
    unsigned long e;
    bool found = false;
    while (!found && (e = ERR_get_error()) != 0) {
        if (ERR_GET_LIB(e) != ERR_LIB_SSL)
            continue;
        found = true;
        switch (ERR_GET_REASON(e)) {
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
            *why = "no client certificate";
            kind = F_NO_CERT;
            break;
        case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
            *why = "certificate expired";
            kind = F_EXPIRED;
            break;
        case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
            *why = "unknown CA";
            kind = F_UNKNOWN_CA;
            break;
        case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
        case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
            *why = "bad certificate";
            kind = F_BAD_CERT;
            break;
        case SSL_R_WRONG_VERSION_NUMBER:
        case SSL_R_HTTP_REQUEST:
        case SSL_R_HTTPS_PROXY_REQUEST:
        case SSL_R_UNKNOWN_PROTOCOL:
        case SSL_R_PACKET_LENGTH_TOO_LONG:
        case SSL_R_RECORD_LENGTH_MISMATCH:
            *why = "not TLS";
            kind = F_NOT_TLS;
            break;
        case SSL_R_UNSUPPORTED_PROTOCOL:
        case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        case SSL_R_NO_PROTOCOLS_AVAILABLE:
            *why = "protocol version";
            break;
        case SSL_R_NO_SHARED_CIPHER:
            *why = "no shared cipher";
            break;
        case SSL_R_NO_APPLICATION_PROTOCOL:
        case SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL:
            *why = "no ALPN match";
            kind = F_ALPN;
            break;
        case SSL_R_UNEXPECTED_EOF_WHILE_READING:
            *why = "connection closed";
            break;
        default:
            found = false; /* keep looking for a more telling entry */
            break;
        }
    }
    ERR_clear_error();
    return kind;
}

static void count_ok(SSL *ssl, struct conn *c)
{
    cnt(c->ctx->is_server ? &st.ok_server : &st.ok_client);
    if (SSL_session_reused(ssl))
        cnt(&st.resumed);
    int v = SSL_version(ssl);
    cnt(v == TLS1_3_VERSION ? &st.v13 : v == TLS1_2_VERSION ? &st.v12 : &st.vother);
    count_cipher(SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
}

int sk_tls_handshake(SSL *ssl, int *want, const char **why)
{
    struct conn *c = conn_of(ssl);
    const char *w = NULL;
    if (!c) {
        if (why)
            *why = "not a skiff TLS connection";
        return SK_ERR_INVAL;
    }
    if (c->failed) {
        if (why)
            *why = c->why ? c->why : "handshake failure";
        return SK_ERR_PROTO;
    }
    if (c->done)
        return 1;
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        /* verify_cb does not run on a resumed session: re-check the SANs */
        if (SSL_session_reused(ssl) && sk_tls_verify_peer(ssl, c->cfg, &w) != 0) {
            c->failed = true;
            c->why = w;
            cnt(&st.fail[F_SAN]);
            if (why)
                *why = w;
            return SK_ERR_PROTO;
        }
        const unsigned char *a = NULL;
        unsigned al = 0;
        SSL_get0_alpn_selected(ssl, &a, &al);
        if (a && al) {
            memcpy(c->alpn, a, al);
            c->alpn[al] = 0;
        }
        if (c->need_alpn[0] && strcmp(c->alpn, c->need_alpn) != 0) {
            /* never carry on with another protocol than the one required */
            c->failed = true;
            c->why = "no ALPN match";
            cnt(&st.fail[F_ALPN]);
            if (why)
                *why = c->why;
            return SK_ERR_PROTO;
        }
        c->done = true;
        count_ok(ssl, c);
        /* from now on read whole socket buffers, not a 5-byte record header
         * and then its body: one read(2) per batch of records instead of two
         * per record (readers ask SSL_has_pending, which counts read-ahead
         * bytes). Not during the handshake: what a peer sends right after it
         * must stay in the socket, where the codec taking over will see it. */
        SSL_set_read_ahead(ssl, 1);
        return 1;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        *want = SK_TLS_WANT_READ;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        *want = SK_TLS_WANT_WRITE;
        return 0;
    }
    int kind = classify(ssl, e, c, &w);
    c->failed = true;
    c->why = w;
    cnt(&st.fail[kind]);
    if (why)
        *why = w;
    return e == SSL_ERROR_SYSCALL ? SK_ERR_IO : SK_ERR_PROTO;
}

static ssize_t io_error(SSL *ssl, int r, int *want)
{
    int e = SSL_get_error(ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want = SK_TLS_WANT_READ;
        return SK_ERR_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want = SK_TLS_WANT_WRITE;
        return SK_ERR_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default: {
        struct conn *c = conn_of(ssl);
        const char *w;
        classify(ssl, e, c, &w);
        if (c && !c->why)
            c->why = w;
        return SK_ERR_IO;
    }
    }
}

/* SSL_get_error needs an empty error queue before the call. Failures empty it
 * (classify), so it is nearly always empty: peeking is much cheaper than
 * ERR_clear_error (~800 instructions in OpenSSL 3, twice per request on a
 * TLS hop). */
static inline void clear_errors(void)
{
    if (ERR_peek_error())
        ERR_clear_error();
}

ssize_t sk_tls_read(SSL *ssl, void *buf, size_t n, int *want)
{
    if (n == 0)
        return SK_ERR_INVAL;
    size_t got = 0;
    clear_errors();
    errno = 0;
    int r = SSL_read_ex(ssl, buf, n, &got);
    if (r == 1)
        return (ssize_t)got;
    return io_error(ssl, r, want);
}

ssize_t sk_tls_write(SSL *ssl, const void *buf, size_t n, int *want)
{
    if (n == 0)
        return 0;
    size_t done = 0;
    clear_errors();
    errno = 0;
    int r = SSL_write_ex(ssl, buf, n, &done);
    if (r == 1)
        return (ssize_t)done;
    ssize_t rc = io_error(ssl, r, want);
    return rc == 0 ? SK_ERR_IO : rc; /* the peer closed: writing is an error */
}

void sk_tls_close_notify(SSL *ssl)
{
    ERR_clear_error();
    if (SSL_is_init_finished(ssl))
        (void)SSL_shutdown(ssl);
    ERR_clear_error();
}

const char *sk_tls_why(SSL *ssl)
{
    struct conn *c = conn_of(ssl);
    return c && c->why ? c->why : "";
}

const char *sk_tls_alpn(SSL *ssl)
{
    struct conn *c = conn_of(ssl);
    if (c && c->done)
        return c->alpn[0] ? c->alpn : NULL;
    return NULL;
}

/* ---- identity ------------------------------------------------------------------------------- */

static size_t first_uri(X509 *cert, char *buf, size_t n)
{
    if (!cert || n == 0)
        return 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    size_t len = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type == GEN_URI && (len = san_text(g, buf, n)) != 0)
            break;
    }
    GENERAL_NAMES_free(names);
    if (!len)
        buf[0] = 0;
    return len;
}

size_t sk_tls_peer_uri_san(SSL *ssl, char *buf, size_t n)
{
    return first_uri(SSL_get0_peer_certificate(ssl), buf, n);
}

/* XFCC values are quoted when they contain a separator. */
static int xfcc_val(char *out, size_t n, size_t *pos, const char *key, const char *v)
{
    bool q = strpbrk(v, ",;=\"") != NULL;
    int w = snprintf(out + *pos, n - *pos, "%s%s=%s", *pos ? ";" : "", key, q ? "\"" : "");
    if (w < 0 || (size_t)w >= n - *pos)
        return -1;
    *pos += (size_t)w;
    for (const char *p = v; *p; p++) {
        if (*pos + 3 >= n)
            return -1;
        if (q && (*p == '"' || *p == '\\'))
            out[(*pos)++] = '\\';
        out[(*pos)++] = *p;
    }
    if (q) {
        if (*pos + 2 >= n)
            return -1;
        out[(*pos)++] = '"';
    }
    out[*pos] = 0;
    return 0;
}

size_t sk_tls_xfcc(SSL *ssl, char *buf, size_t n)
{
    if (!buf || n == 0)
        return 0;
    buf[0] = 0;
    struct conn *c = conn_of(ssl);
    if (c && c->xfcc_done) { /* hashing + SAN parsing cost ~20% of a proxied request */
        if (c->xfcc_len == 0 || c->xfcc_len >= n)
            return 0;
        memcpy(buf, c->xfcc, c->xfcc_len + 1);
        return c->xfcc_len;
    }
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (!peer) {
        if (c && c->done)
            c->xfcc_done = true; /* no client certificate: stays so */
        return 0;
    }
    char by[1024], uri[1024], hex[65];
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (X509_digest(peer, EVP_sha256(), md, &mdlen) != 1 || mdlen != 32) {
        ERR_clear_error();
        return 0;
    }
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    size_t pos = 0;
    if (first_uri(SSL_get_certificate(ssl), by, sizeof(by)) && xfcc_val(buf, n, &pos, "By", by))
        goto too_small;
    if (xfcc_val(buf, n, &pos, "Hash", hex))
        goto too_small;
    if (first_uri(peer, uri, sizeof(uri)) && xfcc_val(buf, n, &pos, "URI", uri))
        goto too_small;
    if (c && c->done && (c->xfcc = malloc(pos + 1)) != NULL) {
        memcpy(c->xfcc, buf, pos + 1);
        c->xfcc_len = pos;
        c->xfcc_done = true;
    }
    return pos;
too_small:
    buf[0] = 0;
    return 0;
}

/* ---- stats ---------------------------------------------------------------------------------- */

static void stat_line(struct sk_buf *out, bool prom, const char *name, const char *type, uint64_t v)
{
    if (prom)
        sk_buf_appendf(out, "# TYPE skiff_%s %s\nskiff_%s %llu\n", name, type, name,
                       (unsigned long long)v);
    else
        sk_buf_appendf(out, "%s: %llu\n", name, (unsigned long long)v);
}

static void label_line(struct sk_buf *out, bool prom, const char *name, const char *label,
                       const char *value, uint64_t v)
{
    if (prom)
        sk_buf_appendf(out, "skiff_%s{%s=\"%s\"} %llu\n", name, label, value,
                       (unsigned long long)v);
    else
        sk_buf_appendf(out, "%s.%s: %llu\n", name, value, (unsigned long long)v);
}

void sk_tls_stats(struct sk_buf *out, bool prom)
{
    stat_line(out, prom, "tls_handshake_server_ok", "counter", ld(&st.ok_server));
    stat_line(out, prom, "tls_handshake_client_ok", "counter", ld(&st.ok_client));
    stat_line(out, prom, "tls_session_reused", "counter", ld(&st.resumed));
    if (prom)
        sk_buf_appendf(out, "# TYPE skiff_tls_handshake_fail counter\n");
    for (int i = 0; i < F__N; i++)
        label_line(out, prom, "tls_handshake_fail", "reason", fail_names[i], ld(&st.fail[i]));
    if (prom)
        sk_buf_appendf(out, "# TYPE skiff_tls_handshake_version counter\n");
    label_line(out, prom, "tls_handshake_version", "version", "TLSv1.2", ld(&st.v12));
    label_line(out, prom, "tls_handshake_version", "version", "TLSv1.3", ld(&st.v13));
    label_line(out, prom, "tls_handshake_version", "version", "other", ld(&st.vother));
    if (prom)
        sk_buf_appendf(out, "# TYPE skiff_tls_handshake_cipher counter\n");
    for (int i = 0; i < NCIPHERS; i++) {
        const char *name = atomic_load_explicit(&st.cipher[i].name, memory_order_acquire);
        if (!name)
            break;
        label_line(out, prom, "tls_handshake_cipher", "cipher", name, ld(&st.cipher[i].n));
    }
    if (ld(&st.cipher_other))
        label_line(out, prom, "tls_handshake_cipher", "cipher", "other", ld(&st.cipher_other));
    stat_line(out, prom, "tls_rotation_ok", "counter", ld(&st.rot_ok));
    stat_line(out, prom, "tls_rotation_failed", "counter", ld(&st.rot_failed));
    stat_line(out, prom, "tls_contexts", "gauge", ld(&st.contexts));
}
