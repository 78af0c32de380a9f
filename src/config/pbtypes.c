/* Full message name -> protobuf-c descriptor, for google.protobuf.Any @type
 * resolution (YAML loader) and typed_config unpacking (translate).
 *
 * The table is generated at build time by scripts/gen_pbtypes.py from the
 * protoc-c output of every file in proto/, so a message added to a .proto is
 * found without touching this file. It is sorted by strcmp order, which makes
 * the lookup a bsearch with no initialisation and no locking. */
#include "skiff/config.h"

#include <stdlib.h>
#include <string.h>

#include "sk_pb_types.inc"

struct pb_type {
    const char *name;
    const ProtobufCMessageDescriptor *desc;
};

static const struct pb_type types[] = {SK_PB_TYPES_TABLE};

static int cmp_type(const void *key, const void *elem)
{
    return strcmp(key, ((const struct pb_type *)elem)->name);
}

const ProtobufCMessageDescriptor *sk_pb_lookup_type(const char *full_name)
{
    if (!full_name)
        return NULL;
    const struct pb_type *t =
        bsearch(full_name, types, SK_PB_TYPES_COUNT, sizeof(types[0]), cmp_type);
    return t ? t->desc : NULL;
}
