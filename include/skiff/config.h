/* Config front door: bootstrap YAML file -> validated snapshot.
 * Pipeline: sk_yaml_pb_parse(Bootstrap) -> sk_snapshot_build() (translate.h).
 * xDS (issue 7) feeds protobuf-c messages into the same translate step. */
#ifndef SKIFF_CONFIG_H
#define SKIFF_CONFIG_H

#include "skiff/cfgerr.h"
#include "skiff/model.h"

#include <protobuf-c/protobuf-c.h>

/* Load + validate a bootstrap file. Returns 0 and a snapshot with refs=1, or
 * SK_ERR_CONFIG with every error found in errs (sk_cfgerrs_init'ed by caller).
 * Never crashes on bad input. */
int sk_config_load_file(const char *path, struct sk_snapshot **out, struct sk_cfgerrs *errs);
/* Same from a buffer; `name` is used in messages. */
int sk_config_load_buf(const char *name, const char *buf, size_t len, struct sk_snapshot **out,
                       struct sk_cfgerrs *errs);

/* Quick mode (no file): one HTTP listener (HCM, codec AUTO, route "/" to
 * cluster "local_service") at listen_addr, STATIC cluster at upstream_addr,
 * admin at admin_addr (NULL = 127.0.0.1:15000). Addresses "ip:port" or
 * "[v6]:port". Built through the same translate+validate step. */
int sk_config_quick(const char *listen_addr, const char *upstream_addr, const char *admin_addr,
                    struct sk_snapshot **out, struct sk_cfgerrs *errs);

/* Runtime preparation of every snapshot the loader builds (sk_config_load_*,
 * sk_config_quick), run on the calling (main) thread after translation
 * succeeds: e.g. sk_tls_prepare (net/tls.h), which loads TLS material. A
 * non-zero return rejects the snapshot (errors in errs; the snapshot is
 * released). The config layer cannot call the runtime directly, so main
 * registers it once at start-up. NULL = none (unit tests of translation). */
typedef int (*sk_config_prepare_fn)(struct sk_snapshot *s, struct sk_cfgerrs *errs);
void sk_config_set_prepare_hook(sk_config_prepare_fn fn);

/* Full name -> descriptor for every message in proto/ (used for Any @type). */
const ProtobufCMessageDescriptor *sk_pb_lookup_type(const char *full_name);

#endif
