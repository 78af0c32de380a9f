/* HTTP RBAC filter (envoy.extensions.filters.http.rbac.v3.RBAC / RBACPerRoute):
 * the policy model translate.c builds and the runtime filter in
 * src/filters/rbac.c. A denied request gets 403 "RBAC: access denied"
 * (cause SK_TERM_RBAC_DENIED, flag RBAC). */
#ifndef SKIFF_RBAC_H
#define SKIFF_RBAC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "skiff/filter.h"
#include "skiff/model.h"

#define SK_RBAC_CFG_MAGIC 0x52424331u /* tags a struct sk_rbac_cfg (per-route configs) */

enum sk_rbac_action { SK_RBAC_ALLOW = 0, SK_RBAC_DENY = 1, SK_RBAC_LOG = 2 };

/* envoy.type.matcher.v3.StringMatcher (no regex) */
struct sk_str_match {
    int kind; /* SK_STR_EXACT / PREFIX / SUFFIX / CONTAINS */
    char *value;
    size_t len;
    bool ignore_case;
};

/* envoy.config.core.v3.CidrRange */
struct sk_cidr {
    int family; /* AF_INET / AF_INET6 */
    uint8_t addr[16];
    uint32_t prefix_len;
};

enum sk_rbac_rule_kind {
    SK_RBAC_R_ANY = 0,
    SK_RBAC_R_AND,         /* and_rules / and_ids */
    SK_RBAC_R_OR,          /* or_rules / or_ids */
    SK_RBAC_R_NOT,         /* not_rule / not_id (sub[0]) */
    SK_RBAC_R_HEADER,      /* header */
    SK_RBAC_R_URL_PATH,    /* url_path (path without query) */
    SK_RBAC_R_DEST_PORT,   /* destination_port (the listener's port) */
    SK_RBAC_R_DEST_PORT_RANGE, /* destination_port_range [lo, hi) */
    SK_RBAC_R_AUTHENTICATED, /* peer certificate; principal_name optional */
    SK_RBAC_R_REMOTE_IP,   /* remote_ip / direct_remote_ip / source_ip: the peer */
};

/* One Permission or Principal node. */
struct sk_rbac_rule {
    int kind; /* enum sk_rbac_rule_kind */
    struct sk_rbac_rule *sub;
    size_t nsub;
    struct sk_header_match header;
    struct sk_str_match str; /* url_path / principal_name */
    bool has_str;            /* authenticated: principal_name given */
    uint32_t port_lo, port_hi;
    struct sk_cidr cidr;
};

struct sk_rbac_policy {
    char *name;
    struct sk_rbac_rule *permissions; /* OR */
    size_t npermissions;
    struct sk_rbac_rule *principals; /* OR */
    size_t nprincipals;
};

struct sk_rbac_rules {
    int action; /* enum sk_rbac_action */
    struct sk_rbac_policy *policies; /* sorted by name (Envoy's evaluation order) */
    size_t npolicies;
};

struct sk_rbac_cfg {
    uint32_t magic;      /* SK_RBAC_CFG_MAGIC */
    bool has_rules;      /* rules absent: nothing enforced */
    struct sk_rbac_rules rules;
    bool has_shadow;     /* shadow_rules: evaluated and counted, never enforced */
    struct sk_rbac_rules shadow;
};

extern const struct sk_http_filter_vt sk_rbac_filter;

struct sk_buf;
void sk_rbac_stats(struct sk_buf *out, bool prometheus);

#endif
