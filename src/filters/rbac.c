/* The HTTP RBAC filter (Envoy's envoy.filters.http.rbac).
 *
 * ALLOW: a request is allowed iff some policy matches; DENY: iff none
 * matches; LOG: always allowed. A policy matches when one of its
 * permissions AND one of its principals match. Shadow rules are evaluated
 * and counted (rbac.shadow_allowed / rbac.shadow_denied), never enforced.
 *
 * authenticated.principal_name is matched against the peer certificate's
 * URI SANs, then its DNS SANs, then its subject (RFC 2253), like Envoy; a
 * plaintext stream or one without a peer certificate is not authenticated.
 * remote_ip / direct_remote_ip / source_ip all match the TCP peer (skiff
 * does not derive a remote address from x-forwarded-for). destination_port
 * is the listener's port. */
#include "skiff/rbac.h"

#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include "skiff/buf.h"
#include "skiff/log.h"
#include "skiff/stream.h"

static _Atomic uint64_t c_allowed, c_denied, c_shadow_allowed, c_shadow_denied;

void sk_rbac_stats(struct sk_buf *out, bool prom)
{
    const struct {
        const char *name;
        unsigned long long v;
    } v[] = {
        {"allowed", atomic_load(&c_allowed)},
        {"denied", atomic_load(&c_denied)},
        {"shadow_allowed", atomic_load(&c_shadow_allowed)},
        {"shadow_denied", atomic_load(&c_shadow_denied)},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        if (prom)
            sk_buf_appendf(out, "# TYPE skiff_rbac_%s counter\nskiff_rbac_%s %llu\n", v[i].name,
                           v[i].name, v[i].v);
        else
            sk_buf_appendf(out, "rbac.%s: %llu\n", v[i].name, v[i].v);
    }
}

/* ---- matchers ------------------------------------------------------------------- */

static bool str_match(const struct sk_str_match *m, const char *v, size_t vl)
{
    const char *p = m->value;
    size_t pl = m->len;
    bool ic = m->ignore_case;
    switch (m->kind) {
    case SK_STR_EXACT:
        return vl == pl && (ic ? strncasecmp(v, p, vl) == 0 : memcmp(v, p, vl) == 0);
    case SK_STR_PREFIX:
        return vl >= pl && (ic ? strncasecmp(v, p, pl) == 0 : memcmp(v, p, pl) == 0);
    case SK_STR_SUFFIX:
        return vl >= pl &&
               (ic ? strncasecmp(v + vl - pl, p, pl) == 0 : memcmp(v + vl - pl, p, pl) == 0);
    case SK_STR_CONTAINS:
        for (size_t i = 0; i + pl <= vl; i++)
            if (ic ? strncasecmp(v + i, p, pl) == 0 : memcmp(v + i, p, pl) == 0)
                return true;
        return false;
    }
    return false;
}

static bool cidr_match(const struct sk_cidr *c, const char *ip)
{
    uint8_t a[16];
    size_t alen;
    if (c->family == AF_INET) {
        if (inet_pton(AF_INET, ip, a) != 1) {
            /* an IPv4-mapped IPv6 peer */
            uint8_t a6[16];
            static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            if (inet_pton(AF_INET6, ip, a6) != 1 || memcmp(a6, mapped, 12) != 0)
                return false;
            memcpy(a, a6 + 12, 4);
        }
        alen = 4;
    } else {
        if (inet_pton(AF_INET6, ip, a) != 1)
            return false;
        alen = 16;
    }
    uint32_t bits = c->prefix_len;
    if (bits > alen * 8)
        bits = (uint32_t)alen * 8;
    size_t full = bits / 8;
    if (memcmp(a, c->addr, full) != 0)
        return false;
    uint32_t rem = bits % 8;
    if (!rem)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rem));
    return (a[full] & mask) == (c->addr[full] & mask);
}

static bool authenticated(const struct sk_stream *st, const struct sk_rbac_rule *r)
{
    SSL *ssl = st->tls;
    if (!ssl)
        return false;
    X509 *cert = SSL_get_peer_certificate(ssl);
    if (!cert)
        return false;
    bool ok = !r->has_str;
    GENERAL_NAMES *gens = ok ? NULL : X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    /* URI SANs, then DNS SANs */
    for (int pass = 0; gens && pass < 2 && !ok; pass++) {
        int want = pass == 0 ? GEN_URI : GEN_DNS;
        for (int i = 0; i < sk_GENERAL_NAME_num(gens) && !ok; i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
            if (g->type != want)
                continue;
            const ASN1_IA5STRING *s = want == GEN_URI ? g->d.uniformResourceIdentifier : g->d.dNSName;
            ok = str_match(&r->str, (const char *)ASN1_STRING_get0_data(s),
                           (size_t)ASN1_STRING_length(s));
        }
    }
    if (gens)
        GENERAL_NAMES_free(gens);
    if (!ok && r->has_str) {
        BIO *b = BIO_new(BIO_s_mem());
        if (b && X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
            char *p = NULL;
            long n = BIO_get_mem_data(b, &p);
            ok = n > 0 && str_match(&r->str, p, (size_t)n);
        }
        BIO_free(b);
    }
    X509_free(cert);
    return ok;
}

static bool rule_match(const struct sk_stream *st, const struct sk_rbac_rule *r)
{
    switch (r->kind) {
    case SK_RBAC_R_ANY:
        return true;
    case SK_RBAC_R_AND:
        for (size_t i = 0; i < r->nsub; i++)
            if (!rule_match(st, &r->sub[i]))
                return false;
        return true;
    case SK_RBAC_R_OR:
        for (size_t i = 0; i < r->nsub; i++)
            if (rule_match(st, &r->sub[i]))
                return true;
        return false;
    case SK_RBAC_R_NOT:
        return r->nsub == 1 && !rule_match(st, &r->sub[0]);
    case SK_RBAC_R_HEADER:
        return sk_stream_headers_match(st, &r->header, 1);
    case SK_RBAC_R_URL_PATH: {
        size_t pl = st->path_len;
        const char *q = memchr(st->path, '?', pl);
        if (q)
            pl = (size_t)(q - st->path);
        const char *h = memchr(st->path, '#', pl);
        if (h)
            pl = (size_t)(h - st->path);
        return str_match(&r->str, st->path, pl);
    }
    case SK_RBAC_R_DEST_PORT:
    case SK_RBAC_R_DEST_PORT_RANGE: {
        uint32_t port = 0;
        if (st->listener) {
            const struct sockaddr_storage *ss = &st->listener->addr.ss;
            if (ss->ss_family == AF_INET)
                port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
            else if (ss->ss_family == AF_INET6)
                port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
        }
        if (r->kind == SK_RBAC_R_DEST_PORT)
            return port == r->port_lo;
        return port >= r->port_lo && port < r->port_hi;
    }
    case SK_RBAC_R_AUTHENTICATED:
        return authenticated(st, r);
    case SK_RBAC_R_REMOTE_IP:
        return cidr_match(&r->cidr, st->peer_ip);
    }
    return false;
}

/* true = allowed; *policy = the matching policy's name (or NULL) */
static bool evaluate(const struct sk_stream *st, const struct sk_rbac_rules *rules,
                     const char **policy)
{
    *policy = NULL;
    for (size_t i = 0; i < rules->npolicies && !*policy; i++) {
        const struct sk_rbac_policy *p = &rules->policies[i];
        bool perm = false, princ = false;
        for (size_t k = 0; k < p->npermissions && !perm; k++)
            perm = rule_match(st, &p->permissions[k]);
        for (size_t k = 0; perm && k < p->nprincipals && !princ; k++)
            princ = rule_match(st, &p->principals[k]);
        if (perm && princ)
            *policy = p->name;
    }
    switch (rules->action) {
    case SK_RBAC_ALLOW:
        return *policy != NULL;
    case SK_RBAC_DENY:
        return *policy == NULL;
    default:
        return true;
    }
}

static int rbac_on_request(struct sk_stream *st, struct sk_filter_slot *slot)
{
    const struct sk_rbac_cfg *c = slot->cfg;
    if (!c || c->magic != SK_RBAC_CFG_MAGIC)
        return SK_FILTER_CONTINUE;
    const char *pol;
    if (c->has_shadow) {
        bool ok = evaluate(st, &c->shadow, &pol);
        atomic_fetch_add_explicit(ok ? &c_shadow_allowed : &c_shadow_denied, 1,
                                  memory_order_relaxed);
    }
    if (!c->has_rules)
        return SK_FILTER_CONTINUE;
    if (evaluate(st, &c->rules, &pol)) {
        atomic_fetch_add_explicit(&c_allowed, 1, memory_order_relaxed);
        return SK_FILTER_CONTINUE;
    }
    atomic_fetch_add_explicit(&c_denied, 1, memory_order_relaxed);
    sk_debug("conn %llu stream %u: RBAC denied (%s%s)", (unsigned long long)st->conn_id,
             st->stream_id, pol ? "matched policy " : "no policy matched", pol ? pol : "");
    sk_stream_local_reply(st, SK_TERM_RBAC_DENIED, 403, NULL);
    return SK_FILTER_STOP;
}

static void rbac_on_destroy(struct sk_stream *st, struct sk_filter_slot *slot)
{
    (void)st;
    slot->state = NULL;
}

const struct sk_http_filter_vt sk_rbac_filter = {
    .type_name = "envoy.extensions.filters.http.rbac.v3.RBAC",
    .on_request = rbac_on_request,
    .on_destroy = rbac_on_destroy,
};
