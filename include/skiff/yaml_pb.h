/* YAML (or JSON) -> protobuf-c message, driven by the generated descriptors,
 * following the proto3 JSON mapping as Envoy reads its bootstrap:
 *   - field names in snake_case (lowerCamelCase json_name accepted too)
 *   - "@type" on google.protobuf.Any: the remaining keys of that mapping are
 *     parsed as the named message and packed into Any.value; the type URL's
 *     part after the last '/' is looked up with `lookup`
 *   - google.protobuf.Duration as "1.5s" strings; wrapper types (UInt32Value,
 *     BoolValue, ...) as plain scalars; Struct/Value/ListValue as free JSON;
 *   - enums by name (or number), 64-bit ints as numbers or strings,
 *     bytes as base64, maps as YAML mappings
 *   - udpa.type.v1.TypedStruct / xds.type.v3.TypedStruct are NOT unwrapped here
 *     (they are ordinary messages; the translator unwraps them)
 * Unknown fields, wrong types, bad durations, unknown @type, duplicate keys,
 * YAML syntax errors and over-deep nesting are errors; every error is added to
 * `errs` with line:col and the field path. Every node's position is recorded
 * in `errs` (sk_cfgerrs_record_pos) so later stages can report positions too.
 */
#ifndef SKIFF_YAML_PB_H
#define SKIFF_YAML_PB_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

#include "skiff/cfgerr.h"

/* Looks a message type up by its full name ("envoy.config.cluster.v3.Cluster");
 * NULL if unknown. */
typedef const ProtobufCMessageDescriptor *(*sk_pb_type_lookup_fn)(const char *full_name);

/* Returns 0 and sets *out (free with protobuf_c_message_free_unpacked(*out, NULL))
 * or returns SK_ERR_CONFIG with at least one error in errs and *out = NULL.
 * Never crashes on any input bytes. */
int sk_yaml_pb_parse(const char *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                     sk_pb_type_lookup_fn lookup, ProtobufCMessage **out,
                     struct sk_cfgerrs *errs);

#endif
