/* The ONE translate + validate step: protobuf-c Bootstrap (from YAML or built
 * from xDS resources) -> immutable sk_snapshot. Collects every error it can
 * find (does not stop at the first), each with a proto-JSON field path.
 * A snapshot is returned only if there were no errors. */
#ifndef SKIFF_TRANSLATE_H
#define SKIFF_TRANSLATE_H

#include "skiff/cfgerr.h"
#include "skiff/model.h"

struct Envoy__Config__Bootstrap__V3__Bootstrap;

int sk_snapshot_build(const struct Envoy__Config__Bootstrap__V3__Bootstrap *bs,
                      struct sk_snapshot **out, struct sk_cfgerrs *errs);

/* EDS-only updates in O(changed endpoints): a snapshot that shares everything
 * with `cur`'s full build (see sk_snapshot.base) and can take new endpoints for
 * up to max_changes clusters. NULL on allocation failure. Not prepared for TLS
 * and never passed to sk_tls_prepare: it uses the base's contexts. */
struct sk_snapshot *sk_snapshot_derive(const struct sk_snapshot *cur, size_t max_changes);
/* Translates one ClusterLoadAssignment (the same rules as in a full build) into
 * the endpoints of cluster `idx` of a derived snapshot. 0, or < 0 with errors
 * (paths relative to the ClusterLoadAssignment: "load_assignment.endpoints[0]...")
 * leaving the cluster as it was. */
struct Envoy__Config__Endpoint__V3__ClusterLoadAssignment;
int sk_snapshot_derive_endpoints(struct sk_snapshot *s, size_t idx,
                                 const struct Envoy__Config__Endpoint__V3__ClusterLoadAssignment *la,
                                 struct sk_cfgerrs *errs);

#endif
