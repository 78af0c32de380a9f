/* Asynchronous DNS resolution: c-ares driven by one libev loop.
 *
 * Used by STRICT_DNS / LOGICAL_DNS clusters. One resolver belongs to one loop
 * (one thread); it is not thread-safe. Every function below must be called on
 * that loop's thread. The caller does the periodic re-resolution
 * (dns_refresh_rate); this module resolves one name once per call.
 *
 * Callback contract:
 *   - sk_dns_resolve() returns 0: the callback is called exactly once, later,
 *     from the loop (never from inside sk_dns_resolve(), even for an IP
 *     literal or "localhost"), unless the query is cancelled with
 *     sk_dns_cancel() or the resolver is freed first; then it is never called.
 *   - sk_dns_resolve() returns < 0: the callback is never called.
 *   - Inside a callback one may call sk_dns_resolve(), sk_dns_cancel() (on any
 *     query, including the one being delivered, where it is a no-op) and
 *     sk_dns_free() (no further callbacks follow, not even ones already due).
 *
 * Results: on success (status 0) addrs holds n >= 1 addresses, each with the
 * requested port set, de-duplicated and in a stable order: grouped by family
 * (IPv4 before IPv6 for SK_DNS_ALL; one family otherwise), then by address
 * bytes. The same answer in any record order gives the same array, so a host
 * set built from it does not churn when a server rotates its records. The array
 * is owned by the resolver and valid only during the callback; copy what you
 * keep. On failure addrs is NULL, n is 0 and status is:
 *   SK_ERR_NOTFOUND  NXDOMAIN, or no address of the allowed families
 *   SK_ERR_TIMEOUT   no answer within the configured timeout/tries
 *   SK_ERR_IO        server failure / refused / bad response / connection refused
 *   SK_ERR_INVAL     malformed name
 *   SK_ERR_NOMEM     allocation failed
 *
 * Family policy (Envoy's dns_lookup_family; values equal the model's
 * sk_cluster.dns_lookup_family):
 *   SK_DNS_AUTO          AAAA; if that gives nothing (any failure), then A
 *   SK_DNS_V4_ONLY       A only
 *   SK_DNS_V6_ONLY       AAAA only
 *   SK_DNS_V4_PREFERRED  A; if that gives nothing, then AAAA
 *   SK_DNS_ALL           A and AAAA in parallel; all addresses (IPv4 first).
 *                        Succeeds if either family has an address.
 * STRICT_DNS uses the whole array; LOGICAL_DNS uses addrs[0] (note: the sort
 * means it is the lowest address, not the server's first record).
 *
 * No network for: IP literals ("10.0.0.1", "::1"; returned as is, except that
 * V4_ONLY with an IPv6 literal and V6_ONLY with an IPv4 literal give
 * SK_ERR_NOTFOUND, as getaddrinfo would) and "localhost" / "localhost."
 * (RFC 6761): 127.0.0.1 for AUTO, V4_ONLY, V4_PREFERRED; ::1 for V6_ONLY;
 * both for ALL. AUTO deliberately differs from Envoy (which may pick ::1 from
 * /etc/hosts): local apps mostly listen on 127.0.0.1/0.0.0.0 and pods may
 * have no IPv6. Other names go through c-ares: /etc/hosts first, then DNS
 * ("files dns" lookup order). */
#ifndef SKIFF_DNS_H
#define SKIFF_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "skiff/model.h" /* struct sk_sockaddr */

struct ev_loop;
struct sk_dns;
struct sk_dns_query;

enum sk_dns_family {
    SK_DNS_AUTO = 0,
    SK_DNS_V4_ONLY = 1,
    SK_DNS_V6_ONLY = 2,
    SK_DNS_V4_PREFERRED = 3,
    SK_DNS_ALL = 4,
};

struct sk_dns_opts {
    /* Per-try timeout in ms; 0 = 5000 (c-ares default). c-ares doubles it
     * for each full round over the servers, so with one server and tries=t
     * one lookup can take timeout*(2^t - 1). AUTO / V4_PREFERRED may do two
     * lookups in sequence, and each search-domain candidate is one more. */
    unsigned timeout_ms;
    unsigned tries;          /* attempts per server; 0 = 4 (c-ares default) */
    const char *resolv_conf; /* NULL = /etc/resolv.conf */
    /* Comma-separated "ip", "ip:port", "[ip6]:port"; overrides the servers of
     * resolv.conf (search domains and options still come from it). NULL =
     * use resolv.conf. */
    const char *servers;
    bool no_search_domains; /* Envoy's no_default_search_domain */
    bool use_tcp;           /* Envoy's use_tcp_for_dns_lookups */
};

/* status: 0 or negative SK_ERR_*; see the contract above. */
typedef void (*sk_dns_cb)(void *arg, int status, const struct sk_sockaddr *addrs, size_t n);

/* Creates a resolver on loop. opts may be NULL (all defaults). Returns NULL
 * on allocation failure or bad opts (e.g. unparsable servers); the reason is
 * logged. */
struct sk_dns *sk_dns_new(struct ev_loop *loop, const struct sk_dns_opts *opts);

/* Frees the resolver, cancelling every pending query: no callback is called
 * from now on. Safe with queries in flight and from inside a callback (the
 * memory is then released when the callback returns). NULL is a no-op. */
void sk_dns_free(struct sk_dns *d);

/* Starts resolving host (NUL-terminated, a name or IP literal) for port with
 * family policy (enum sk_dns_family). On success returns 0 and, if q is not
 * NULL, stores a handle for sk_dns_cancel(), valid until the callback has
 * returned or the query is cancelled. Returns SK_ERR_INVAL (empty or too long
 * name, bad policy, cb NULL, resolver being freed) or SK_ERR_NOMEM. */
int sk_dns_resolve(struct sk_dns *d, const char *host, uint16_t port, int family, sk_dns_cb cb,
                   void *arg, struct sk_dns_query **q);

/* Cancels a pending query: its callback will not be called. The handle is
 * invalid afterwards. c-ares cannot abort a single query, so the packet
 * exchange may continue in the background; its result is dropped. */
void sk_dns_cancel(struct sk_dns_query *q);

/* Number of queries started and not yet delivered/cancelled (for tests and
 * the admin dump). */
size_t sk_dns_pending(const struct sk_dns *d);

const char *sk_dns_family_name(int family);

#endif
