/* YAML (or JSON) -> protobuf-c message, driven by the generated descriptors,
 * following the proto3 JSON mapping as Envoy reads its bootstrap:
 *   - field names in snake_case (lowerCamelCase json_name accepted too; protobuf-c
 *     1.4 descriptors carry no json_name, so it is derived like protoc does)
 *   - "@type" on google.protobuf.Any: the remaining keys of that mapping are
 *     parsed as the named message and packed into Any.value; the type URL's
 *     part after the last '/' is looked up with `lookup` (google.protobuf.*
 *     well-known types are found even if `lookup` does not know them). If the
 *     packed type has a special JSON form (Duration, Timestamp, wrappers,
 *     Struct, Value, ListValue, Any) the mapping holds it under "value".
 *   - google.protobuf.Duration as "1.5s" strings (|d| <= 315576000000s);
 *     Timestamp as RFC 3339 strings; wrapper types (UInt32Value, BoolValue, ...)
 *     as plain scalars; Struct/Value/ListValue as free JSON (plain true/false ->
 *     bool, plain numbers -> number, quoted or other scalars -> string, null ->
 *     null_value)
 *   - integers as YAML ints or quoted strings (range-checked per type; integral
 *     floats like 1e3 accepted), bools only `true`/`false`, floats incl. NaN,
 *     Infinity, .inf, .nan; string fields accept any scalar (`port: 80` given to
 *     a string field reads "80"), bytes as base64 (standard or URL-safe, padding
 *     optional), enums by value name or number, maps as YAML mappings
 *   - `null` (or an empty value) for a field leaves it unset (for a
 *     google.protobuf.Value field it is null_value)
 *   - YAML anchors/aliases are expanded; merge keys (`<<: *base`, `<<: [*a, *b]`)
 *     are supported, explicit keys win over merged ones
 *   - udpa.type.v1.TypedStruct / xds.type.v3.TypedStruct are NOT unwrapped here
 *     (they are ordinary messages; the translator unwraps them)
 * Unknown fields, wrong types, bad durations, unknown @type, duplicate keys, two
 * members of one oneof, YAML syntax errors, more than one YAML document, an empty
 * document ("empty configuration"), over-deep nesting and alias bombs (too many
 * nodes) are errors; as many errors as possible are collected (a subtree whose
 * structure is wrong is skipped). Every error is added to `errs` with line:col
 * and the field path.
 *
 * Paths (see cfgerr.h): field names joined by '.', repeated `name[i]`, map
 * `name["key"]`; an Any's fields continue under the Any's field name; the
 * entries of a google.protobuf.Struct continue like fields (`.key`, or `["key"]`
 * when the key is not made of [A-Za-z0-9_-]), ListValue items `[i]`.
 * Every mapping key, sequence item and the root are recorded in `errs`
 * (sk_cfgerrs_record_pos) under their path so later stages can report positions
 * too (an aliased node is recorded under every path that reaches it).
 */
#ifndef SKIFF_YAML_PB_H
#define SKIFF_YAML_PB_H

#include <stdbool.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

#include "skiff/cfgerr.h"

/* Looks a message type up by its full name ("envoy.config.cluster.v3.Cluster");
 * NULL if unknown. */
typedef const ProtobufCMessageDescriptor *(*sk_pb_type_lookup_fn)(const char *full_name);

/* Limits; a zero member means the default. */
struct sk_yaml_pb_opts {
    unsigned max_depth;  /* nesting of mappings/lists/messages; default 64, at most 256 */
    size_t max_nodes;    /* YAML nodes walked, aliases counted each time; default 1000000 */
    unsigned max_errors; /* stop after this many errors; default 100 */
    bool keep_partial;   /* on errors, still hand back what parsed (*out set, rc < 0),
                            so the caller can look for more errors in it */
};

/* Returns 0 and sets *out (free with protobuf_c_message_free_unpacked(*out, NULL))
 * or returns SK_ERR_CONFIG with at least one error in errs and *out = NULL
 * (SK_ERR_NOMEM if an allocation failed; errs then holds an error if it could).
 * Never crashes or leaks on any input bytes. Not thread-hostile: no global state. */
int sk_yaml_pb_parse(const char *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                     sk_pb_type_lookup_fn lookup, ProtobufCMessage **out,
                     struct sk_cfgerrs *errs);

/* Same with explicit limits (opts may be NULL). */
int sk_yaml_pb_parse_opts(const char *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                          sk_pb_type_lookup_fn lookup, const struct sk_yaml_pb_opts *opts,
                          ProtobufCMessage **out, struct sk_cfgerrs *errs);

#endif
