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

#endif
