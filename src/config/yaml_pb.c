/* YAML -> protobuf-c messages, driven by the generated descriptors (contract in
 * include/skiff/yaml_pb.h).
 *
 * libyaml's document API builds the node graph (aliases become shared node
 * indices, so an anchor is simply walked again each time it is referenced; a
 * node budget bounds alias bombs and the depth limit bounds alias cycles). We
 * then walk the graph with the descriptor in hand.
 *
 * Memory: every value is attached to its parent message as soon as it exists,
 * using protobuf-c's default-allocator layout (malloc'ed messages initialised
 * with protobuf_c_message_init, malloc'ed strings/arrays/bytes, oneof case set
 * before returning), so that protobuf_c_message_free_unpacked(root, NULL) frees
 * a half-built tree on any error path. Sub-parsers never leave an unattached
 * allocation behind.
 */
#include "skiff/yaml_pb.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "google.protobuf.pb-c.h"
#include "skiff/err.h"

#define DEF_MAX_DEPTH 64
#define MAX_MAX_DEPTH 256
#define DEF_MAX_NODES 1000000
#define DEF_MAX_ERRORS 100
#define MAX_DURATION_SECONDS 315576000000LL

struct ctx {
    yaml_document_t *doc;
    sk_pb_type_lookup_fn lookup;
    struct sk_cfgerrs *errs;
    unsigned max_depth, max_errors, nerr;
    size_t max_nodes, nodes;
    int abort; /* stop walking: node budget, error cap or out of memory */
    int oom;
    char *path; /* current field path, always NUL-terminated */
    size_t plen, pcap;
};

/* ---- errors and paths ---------------------------------------------------- */

static void oom(struct ctx *c)
{
    if (!c->oom)
        sk_cfgerrs_add_at(c->errs, 0, 0, c->path ? c->path : "", "out of memory");
    c->oom = 1;
    c->abort = 1;
    c->nerr++;
}

static void verr(struct ctx *c, const yaml_mark_t *m, const char *fmt, va_list ap)
{
    if (c->nerr >= c->max_errors) {
        c->abort = 1;
        return;
    }
    char msg[768];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    c->nerr++;
    int line = m ? (int)m->line + 1 : 0, col = m ? (int)m->column + 1 : 0;
    sk_cfgerrs_add_at(c->errs, line, col, c->path, "%s", msg);
    if (c->nerr == c->max_errors) {
        sk_cfgerrs_add_at(c->errs, line, col, c->path, "too many errors (%u), giving up",
                          c->max_errors);
        c->abort = 1;
    }
}

__attribute__((format(printf, 3, 4))) static void err(struct ctx *c, const yaml_node_t *n,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr(c, n ? &n->start_mark : NULL, fmt, ap);
    va_end(ap);
}

static int path_reserve(struct ctx *c, size_t extra)
{
    if (c->plen + extra + 1 <= c->pcap)
        return 0;
    size_t nc = c->pcap ? c->pcap : 128;
    while (nc < c->plen + extra + 1)
        nc *= 2;
    char *p = realloc(c->path, nc);
    if (!p) {
        oom(c);
        return -1;
    }
    c->path = p;
    c->pcap = nc;
    return 0;
}

static size_t path_push_field(struct ctx *c, const char *name)
{
    size_t old = c->plen, l = strlen(name);
    if (path_reserve(c, l + 1))
        return old;
    if (c->plen)
        c->path[c->plen++] = '.';
    memcpy(c->path + c->plen, name, l);
    c->plen += l;
    c->path[c->plen] = 0;
    return old;
}

static size_t path_push_index(struct ctx *c, size_t i)
{
    size_t old = c->plen;
    if (path_reserve(c, 32))
        return old;
    c->plen += (size_t)snprintf(c->path + c->plen, 32, "[%zu]", i);
    return old;
}

/* ["key"] with '"' and '\' escaped and control bytes as \xNN. */
static size_t path_push_key(struct ctx *c, const char *k, size_t kl)
{
    size_t old = c->plen;
    if (path_reserve(c, kl * 4 + 4))
        return old;
    char *p = c->path + c->plen;
    *p++ = '[';
    *p++ = '"';
    for (size_t i = 0; i < kl; i++) {
        unsigned char ch = (unsigned char)k[i];
        if (ch == '"' || ch == '\\') {
            *p++ = '\\';
            *p++ = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            p += sprintf(p, "\\x%02x", ch);
        } else {
            *p++ = (char)ch;
        }
    }
    *p++ = '"';
    *p++ = ']';
    *p = 0;
    c->plen = (size_t)(p - c->path);
    return old;
}

static void path_pop(struct ctx *c, size_t old)
{
    if (old <= c->plen) {
        c->plen = old;
        c->path[old] = 0;
    }
}

static void record(struct ctx *c, const yaml_node_t *n)
{
    if (n)
        sk_cfgerrs_record_pos(c->errs, c->path, (int)n->start_mark.line + 1,
                              (int)n->start_mark.column + 1);
}

/* ---- nodes ------------------------------------------------------------- */

static yaml_node_t *node_at(struct ctx *c, int idx)
{
    return yaml_document_get_node(c->doc, idx);
}

static const char *kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a scalar";
    }
}

static int is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    const char *s = (const char *)n->data.scalar.value;
    size_t l = n->data.scalar.length;
    return l == 0 || (l == 1 && s[0] == '~') ||
           (l == 4 && (!strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL")));
}

/* Printable, truncated, quoted copy of a scalar for messages. */
static const char *q(const yaml_node_t *n, char *buf, size_t cap)
{
    if (n->type != YAML_SCALAR_NODE) {
        snprintf(buf, cap, "%s", kind(n));
        return buf;
    }
    const unsigned char *s = n->data.scalar.value;
    size_t l = n->data.scalar.length, o = 0;
    buf[o++] = '"';
    for (size_t i = 0; i < l; i++) {
        int cont = (s[i] & 0xc0) == 0x80; /* never cut a UTF-8 sequence */
        if ((i >= 60 || o + 10 >= cap) && !cont) {
            o += (size_t)snprintf(buf + o, cap - o, "...");
            break;
        }
        if (s[i] < 0x20 || s[i] == 0x7f || s[i] == '"' || s[i] == '\\')
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", s[i]);
        else
            buf[o++] = (char)s[i];
    }
    buf[o++] = '"';
    buf[o] = 0;
    return buf;
}

static int visit(struct ctx *c, const yaml_node_t *n)
{
    if (c->abort)
        return -1;
    if (++c->nodes > c->max_nodes) {
        err(c, n, "configuration too large: more than %zu YAML nodes (alias expansion?)",
            c->max_nodes);
        c->abort = 1;
        return -1;
    }
    return 0;
}

/* ---- mapping pairs: merge keys, duplicates ------------------------------- */

struct kv {
    yaml_node_t *k, *v;
    const char *ks; /* NULL if the key is not a scalar */
    size_t kl;
    unsigned prio; /* 0 = written in this mapping; merged sources count up */
    size_t seq;
    int drop;
};

struct kvlist {
    struct kv *v;
    size_t n, cap;
};

static int kv_add(struct ctx *c, struct kvlist *l, yaml_node_t *k, yaml_node_t *v, unsigned prio)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        struct kv *p = realloc(l->v, nc * sizeof(*p));
        if (!p) {
            oom(c);
            return -1;
        }
        l->v = p;
        l->cap = nc;
    }
    struct kv *e = &l->v[l->n];
    *e = (struct kv){k, v, NULL, 0, prio, l->n, 0};
    if (k->type == YAML_SCALAR_NODE) {
        e->ks = (const char *)k->data.scalar.value;
        e->kl = k->data.scalar.length;
    }
    l->n++;
    return 0;
}

static int is_merge_key(const yaml_node_t *k)
{
    return k->type == YAML_SCALAR_NODE && k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           k->data.scalar.length == 2 && !memcmp(k->data.scalar.value, "<<", 2);
}

static int collect(struct ctx *c, yaml_node_t *map, struct kvlist *l, unsigned prio,
                   unsigned *counter, unsigned depth)
{
    if (depth > c->max_depth) {
        err(c, map, "merge keys ('<<') nested too deep");
        return -1;
    }
    yaml_node_pair_t *p;
    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        if (!k || !v || visit(c, k))
            return -1;
        if (is_merge_key(k))
            continue;
        if (kv_add(c, l, k, v, prio))
            return -1;
    }
    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(c, p->key), *v = node_at(c, p->value);
        if (!k || !v || !is_merge_key(k))
            continue;
        if (v->type == YAML_MAPPING_NODE) {
            if (visit(c, v) || collect(c, v, l, ++*counter, counter, depth + 1))
                return -1;
        } else if (v->type == YAML_SEQUENCE_NODE) {
            for (yaml_node_item_t *it = v->data.sequence.items.start;
                 it < v->data.sequence.items.top; it++) {
                yaml_node_t *m = node_at(c, *it);
                if (!m || visit(c, m))
                    return -1;
                if (m->type != YAML_MAPPING_NODE) {
                    err(c, m, "merge key '<<' expects a mapping or a list of mappings, got %s",
                        kind(m));
                    continue;
                }
                if (collect(c, m, l, ++*counter, counter, depth + 1))
                    return -1;
            }
        } else {
            err(c, v, "merge key '<<' expects a mapping or a list of mappings, got %s", kind(v));
        }
        if (c->abort)
            return -1;
    }
    return 0;
}

static int kv_cmp_key(const void *a, const void *b)
{
    const struct kv *x = *(const struct kv *const *)a, *y = *(const struct kv *const *)b;
    if (!x->ks || !y->ks) {
        if (x->ks != y->ks)
            return x->ks ? 1 : -1;
    } else {
        size_t m = x->kl < y->kl ? x->kl : y->kl;
        int r = memcmp(x->ks, y->ks, m);
        if (r)
            return r;
        if (x->kl != y->kl)
            return x->kl < y->kl ? -1 : 1;
    }
    if (x->prio != y->prio)
        return x->prio < y->prio ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int kv_cmp_order(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    if (x->prio != y->prio)
        return x->prio < y->prio ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The effective pairs of a mapping, in document order, merged keys after the
 * written ones; duplicate written keys are reported and dropped. */
static int get_pairs(struct ctx *c, yaml_node_t *map, struct kvlist *l)
{
    unsigned counter = 0;
    memset(l, 0, sizeof(*l));
    if (collect(c, map, l, 0, &counter, 0))
        return -1;
    if (l->n < 2)
        return 0;
    struct kv **idx = malloc(l->n * sizeof(*idx));
    if (!idx) {
        oom(c);
        return -1;
    }
    for (size_t i = 0; i < l->n; i++)
        idx[i] = &l->v[i];
    qsort(idx, l->n, sizeof(*idx), kv_cmp_key);
    for (size_t i = 0; i < l->n;) {
        struct kv *w = idx[i]; /* lowest prio, earliest: the winner of its run */
        size_t j = i + 1;
        for (; j < l->n; j++) {
            struct kv *d = idx[j];
            if (!w->ks || !d->ks || w->kl != d->kl || memcmp(w->ks, d->ks, w->kl))
                break;
            d->drop = 1;
            if (d->prio == 0) {
                char kb[96];
                err(c, d->k, "duplicate key %s (first at line %d)", q(d->k, kb, sizeof(kb)),
                    (int)w->k->start_mark.line + 1);
            }
        }
        i = j;
    }
    free(idx);
    size_t o = 0;
    for (size_t i = 0; i < l->n; i++)
        if (!l->v[i].drop)
            l->v[o++] = l->v[i];
    l->n = o;
    qsort(l->v, l->n, sizeof(*l->v), kv_cmp_order);
    return 0;
}

/* ---- scalars ----------------------------------------------------------- */

static const char *type_name(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
        return "int32";
    case PROTOBUF_C_TYPE_SINT32:
        return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32:
        return "sfixed32";
    case PROTOBUF_C_TYPE_INT64:
        return "int64";
    case PROTOBUF_C_TYPE_SINT64:
        return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64:
        return "sfixed64";
    case PROTOBUF_C_TYPE_UINT32:
        return "uint32";
    case PROTOBUF_C_TYPE_FIXED32:
        return "fixed32";
    case PROTOBUF_C_TYPE_UINT64:
        return "uint64";
    case PROTOBUF_C_TYPE_FIXED64:
        return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT:
        return "float";
    case PROTOBUF_C_TYPE_DOUBLE:
        return "double";
    case PROTOBUF_C_TYPE_BOOL:
        return "bool";
    case PROTOBUF_C_TYPE_ENUM:
        return "enum";
    case PROTOBUF_C_TYPE_STRING:
        return "string";
    case PROTOBUF_C_TYPE_BYTES:
        return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE:
        return "message";
    }
    return "?";
}

static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default: /* 32-bit ints and enums */
        return 4;
    }
}

/* JSON-like number: [+-]? (d+ (. d*)? | . d+) ([eE] [+-]? d+)? ; sets *integral
 * when it is a plain integer. */
static int number_syntax(const char *s, int *integral)
{
    const char *p = s;
    int digits = 0;
    *integral = 1;
    if (*p == '+' || *p == '-')
        p++;
    while (isdigit((unsigned char)*p))
        p++, digits++;
    if (*p == '.') {
        *integral = 0;
        p++;
        while (isdigit((unsigned char)*p))
            p++, digits++;
    }
    if (!digits)
        return 0;
    if (*p == 'e' || *p == 'E') {
        *integral = 0;
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!isdigit((unsigned char)*p))
            return 0;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == 0;
}

/* Integer text -> value. 0 ok, -1 not an integer, -2 out of range. Plain
 * integers are exact; integral floats ("1e3", "2.0") are accepted up to 2^53. */
static int parse_i64(const char *s, int64_t *out)
{
    int integral;
    if (!number_syntax(s, &integral))
        return -1;
    if (integral) {
        errno = 0;
        char *end;
        long long v = strtoll(s, &end, 10);
        if (errno == ERANGE)
            return -2;
        *out = v;
        return 0;
    }
    double d = strtod(s, NULL);
    if (!isfinite(d) || d != floor(d))
        return isfinite(d) ? -1 : -2;
    if (fabs(d) > 9007199254740992.0)
        return -2;
    *out = (int64_t)d;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    int integral;
    if (!number_syntax(s, &integral))
        return -1;
    if (integral) {
        const char *p = s;
        if (*p == '+')
            p++;
        if (*p == '-') { /* "-0" is fine, anything else negative is not */
            for (p++; *p == '0'; p++)
                ;
            if (*p)
                return -2;
            *out = 0;
            return 0;
        }
        errno = 0;
        unsigned long long v = strtoull(p, NULL, 10);
        if (errno == ERANGE)
            return -2;
        *out = v;
        return 0;
    }
    double d = strtod(s, NULL);
    if (!isfinite(d) || d != floor(d))
        return isfinite(d) ? -1 : -2;
    if (d < 0 || d > 9007199254740992.0)
        return -2;
    *out = (uint64_t)d;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    static const struct {
        const char *s;
        double v;
    } special[] = {
        {"NaN", NAN},        {".nan", NAN},        {".NaN", NAN},       {".NAN", NAN},
        {"Infinity", INFINITY}, {"-Infinity", -INFINITY}, {".inf", INFINITY}, {".Inf", INFINITY},
        {".INF", INFINITY},  {"+.inf", INFINITY},  {"+.Inf", INFINITY}, {"+.INF", INFINITY},
        {"-.inf", -INFINITY}, {"-.Inf", -INFINITY}, {"-.INF", -INFINITY},
    };
    for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++)
        if (!strcmp(s, special[i].s)) {
            *out = special[i].v;
            return 0;
        }
    int integral;
    if (!number_syntax(s, &integral))
        return -1;
    double d = strtod(s, NULL);
    if (!isfinite(d))
        return -2;
    *out = d;
    return 0;
}

static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+' || ch == '-')
        return 62;
    if (ch == '/' || ch == '_')
        return 63;
    return -1;
}

/* Standard or URL-safe base64, padding optional. -1 on bad input. */
static int b64_decode(const char *s, size_t l, uint8_t **out, size_t *olen)
{
    size_t pad = 0;
    while (l > 0 && s[l - 1] == '=' && pad < 2)
        l--, pad++;
    if (pad && (l + pad) % 4)
        return -1;
    if (l % 4 == 1)
        return -1;
    size_t n = l / 4 * 3 + (l % 4 ? l % 4 - 1 : 0);
    uint8_t *d = malloc(n ? n : 1);
    if (!d)
        return -2;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < l; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) {
            free(d);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            d[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (!n) {
        free(d);
        d = NULL;
    }
    *out = d;
    *olen = o;
    return 0;
}

static const char *enum_names(const ProtobufCEnumDescriptor *ed, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (unsigned i = 0; i < ed->n_values; i++) {
        if (i == 8 && ed->n_values > 10) {
            snprintf(buf + o, cap - o, ", ... (%u more)", ed->n_values - i);
            break;
        }
        int w = snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", ed->values[i].name);
        if (w < 0 || (size_t)w >= cap - o)
            break;
        o += (size_t)w;
    }
    return buf;
}

/* Parses scalar node n as type t into dst. Strings/bytes are malloc'ed. */
static int parse_scalar(struct ctx *c, ProtobufCType t, const void *tdesc, yaml_node_t *n,
                        void *dst)
{
    char qb[128];
    if (n->type != YAML_SCALAR_NODE) {
        if (t == PROTOBUF_C_TYPE_ENUM)
            err(c, n, "expected a value of enum %s, got %s",
                ((const ProtobufCEnumDescriptor *)tdesc)->name, kind(n));
        else if (t == PROTOBUF_C_TYPE_STRING)
            err(c, n, "expected a string, got %s", kind(n));
        else
            err(c, n, "expected a %s value, got %s", type_name(t), kind(n));
        return -1;
    }
    const char *s = (const char *)n->data.scalar.value;
    size_t l = n->data.scalar.length;
    if (strlen(s) != l && t != PROTOBUF_C_TYPE_BYTES) {
        err(c, n, "value contains a NUL character");
        return -1;
    }
    int r;
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
        int64_t v = 0;
        r = parse_i64(s, &v);
        int is32 = elem_size(t) == 4;
        if (r == 0 && is32 && (v < INT32_MIN || v > INT32_MAX))
            r = -2;
        if (r == -1) {
            err(c, n, "expected an integer (%s), got %s", type_name(t), q(n, qb, sizeof(qb)));
            return -1;
        }
        if (r == -2) {
            err(c, n, "integer %s out of range for %s", q(n, qb, sizeof(qb)), type_name(t));
            return -1;
        }
        if (is32)
            *(int32_t *)dst = (int32_t)v;
        else
            *(int64_t *)dst = v;
        return 0;
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v = 0;
        r = parse_u64(s, &v);
        int is32 = elem_size(t) == 4;
        if (r == 0 && is32 && v > UINT32_MAX)
            r = -2;
        if (r == -1) {
            err(c, n, "expected a non-negative integer (%s), got %s", type_name(t),
                q(n, qb, sizeof(qb)));
            return -1;
        }
        if (r == -2) {
            err(c, n, "integer %s out of range for %s", q(n, qb, sizeof(qb)), type_name(t));
            return -1;
        }
        if (is32)
            *(uint32_t *)dst = (uint32_t)v;
        else
            *(uint64_t *)dst = v;
        return 0;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v = 0;
        r = parse_double(s, &v);
        if (r == 0 && t == PROTOBUF_C_TYPE_FLOAT && isfinite(v) && fabs(v) > FLT_MAX)
            r = -2;
        if (r == -1) {
            err(c, n, "expected a number (%s), got %s", type_name(t), q(n, qb, sizeof(qb)));
            return -1;
        }
        if (r == -2) {
            err(c, n, "number %s out of range for %s", q(n, qb, sizeof(qb)), type_name(t));
            return -1;
        }
        if (t == PROTOBUF_C_TYPE_FLOAT)
            *(float *)dst = (float)v;
        else
            *(double *)dst = v;
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (!strcmp(s, "true"))
            *(protobuf_c_boolean *)dst = 1;
        else if (!strcmp(s, "false"))
            *(protobuf_c_boolean *)dst = 0;
        else {
            err(c, n, "expected true or false, got %s", q(n, qb, sizeof(qb)));
            return -1;
        }
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = tdesc;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
        if (ev) {
            *(int *)dst = ev->value;
            return 0;
        }
        int64_t v;
        int integral;
        if (number_syntax(s, &integral) && integral && parse_i64(s, &v) == 0 &&
            v >= INT32_MIN && v <= INT32_MAX) {
            *(int *)dst = (int)v;
            return 0;
        }
        char nb[512];
        err(c, n, "unknown value %s for enum %s; expected one of: %s", q(n, qb, sizeof(qb)),
            ed->name, enum_names(ed, nb, sizeof(nb)));
        return -1;
    }
    case PROTOBUF_C_TYPE_STRING: {
        char *d = malloc(l + 1);
        if (!d) {
            oom(c);
            return -1;
        }
        memcpy(d, s, l + 1);
        *(char **)dst = d;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        uint8_t *d = NULL;
        size_t dl = 0;
        r = b64_decode(s, l, &d, &dl);
        if (r == -2) {
            oom(c);
            return -1;
        }
        if (r) {
            err(c, n, "expected base64 bytes, got %s", q(n, qb, sizeof(qb)));
            return -1;
        }
        ((ProtobufCBinaryData *)dst)->data = d;
        ((ProtobufCBinaryData *)dst)->len = dl;
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        break;
    }
    return -1;
}

/* ---- well-known types ------------------------------------------------- */

enum wkt {
    WKT_NONE,
    WKT_ANY,
    WKT_DURATION,
    WKT_TIMESTAMP,
    WKT_WRAPPER,
    WKT_STRUCT,
    WKT_VALUE,
    WKT_LIST,
};

static const ProtobufCMessageDescriptor *const wrappers[] = {
    &google__protobuf__double_value__descriptor, &google__protobuf__float_value__descriptor,
    &google__protobuf__int64_value__descriptor,  &google__protobuf__uint64_value__descriptor,
    &google__protobuf__int32_value__descriptor,  &google__protobuf__uint32_value__descriptor,
    &google__protobuf__bool_value__descriptor,   &google__protobuf__string_value__descriptor,
    &google__protobuf__bytes_value__descriptor,
};

static enum wkt wkt_of(const ProtobufCMessageDescriptor *d)
{
    if (d == &google__protobuf__any__descriptor)
        return WKT_ANY;
    if (d == &google__protobuf__duration__descriptor)
        return WKT_DURATION;
    if (d == &google__protobuf__timestamp__descriptor)
        return WKT_TIMESTAMP;
    if (d == &google__protobuf__struct__descriptor)
        return WKT_STRUCT;
    if (d == &google__protobuf__value__descriptor)
        return WKT_VALUE;
    if (d == &google__protobuf__list_value__descriptor)
        return WKT_LIST;
    for (size_t i = 0; i < sizeof(wrappers) / sizeof(wrappers[0]); i++)
        if (d == wrappers[i])
            return WKT_WRAPPER;
    return WKT_NONE;
}

static const ProtobufCMessageDescriptor *wkt_lookup(const char *name)
{
    static const ProtobufCMessageDescriptor *const all[] = {
        &google__protobuf__any__descriptor,       &google__protobuf__duration__descriptor,
        &google__protobuf__timestamp__descriptor, &google__protobuf__empty__descriptor,
        &google__protobuf__struct__descriptor,    &google__protobuf__value__descriptor,
        &google__protobuf__list_value__descriptor,
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (!strcmp(all[i]->name, name))
            return all[i];
    for (size_t i = 0; i < sizeof(wrappers) / sizeof(wrappers[0]); i++)
        if (!strcmp(wrappers[i]->name, name))
            return wrappers[i];
    return NULL;
}

static ProtobufCMessage *new_msg(struct ctx *c, const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = malloc(d->sizeof_message);
    if (!m) {
        oom(c);
        return NULL;
    }
    protobuf_c_message_init(d, m);
    return m;
}

/* "[-]S[.fffffffff]s" -> seconds, nanos (same sign). */
static int parse_duration(const char *s, int64_t *sec, int32_t *nanos, int *range)
{
    const char *p = s;
    int neg = 0;
    *range = 0;
    if (*p == '-')
        neg = 1, p++;
    if (!isdigit((unsigned char)*p))
        return -1;
    int64_t v = 0;
    for (; isdigit((unsigned char)*p); p++) {
        v = v * 10 + (*p - '0');
        if (v > MAX_DURATION_SECONDS) {
            *range = 1;
            return -1;
        }
    }
    int32_t ns = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        for (; isdigit((unsigned char)*p); p++, nd++) {
            if (nd >= 9)
                return -1;
            ns = ns * 10 + (*p - '0');
        }
        if (!nd)
            return -1;
        for (; nd < 9; nd++)
            ns *= 10;
    }
    if (p[0] != 's' || p[1] != 0)
        return -1;
    *sec = neg ? -v : v;
    *nanos = neg ? -ns : ns;
    return 0;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int digits(const char *p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 0;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM) */
static int parse_timestamp(const char *s, int64_t *sec, int32_t *nanos)
{
    int Y, M, D, h, mi, se;
    size_t l = strlen(s);
    if (l < 20 || digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) || s[7] != '-' ||
        digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) ||
        s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' || digits(s + 17, 2, &se))
        return -1;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (Y < 1 || M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || mi > 59 || se > 59)
        return -1;
    if (M == 2 && D == 29 && !((Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0))
        return -1;
    const char *p = s + 19;
    int32_t ns = 0;
    if (*p == '.') {
        int nd = 0;
        for (p++; isdigit((unsigned char)*p); p++, nd++) {
            if (nd >= 9)
                return -1;
            ns = ns * 10 + (*p - '0');
        }
        if (!nd)
            return -1;
        for (; nd < 9; nd++)
            ns *= 10;
    }
    int64_t off = 0;
    if ((*p == 'Z' || *p == 'z') && p[1] == 0) {
        off = 0;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        off = (oh * 3600 + om * 60) * (*p == '-' ? -1 : 1);
    } else {
        return -1;
    }
    int64_t t = days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + mi * 60 + se -
                off;
    if (t < -62135596800LL || t > 253402300799LL)
        return -1;
    *sec = t;
    *nanos = ns;
    return 0;
}

static ProtobufCMessage *parse_message(struct ctx *c, const ProtobufCMessageDescriptor *d,
                                       yaml_node_t *n, unsigned depth);

static int is_ident(const char *s, size_t l)
{
    if (!l)
        return 0;
    for (size_t i = 0; i < l; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

static Google__Protobuf__Value *parse_value(struct ctx *c, yaml_node_t *n, unsigned depth);

static Google__Protobuf__Struct *parse_struct(struct ctx *c, yaml_node_t *n, unsigned depth)
{
    if (n->type != YAML_MAPPING_NODE) {
        err(c, n, "expected a mapping (google.protobuf.Struct), got %s", kind(n));
        return NULL;
    }
    Google__Protobuf__Struct *st =
        (Google__Protobuf__Struct *)new_msg(c, &google__protobuf__struct__descriptor);
    if (!st)
        return NULL;
    struct kvlist kl;
    if (get_pairs(c, n, &kl) == 0 && kl.n) {
        st->fields = calloc(kl.n, sizeof(*st->fields));
        if (!st->fields)
            oom(c);
        for (size_t i = 0; st->fields && i < kl.n && !c->abort; i++) {
            struct kv *e = &kl.v[i];
            if (!e->ks) {
                err(c, e->k, "mapping keys must be strings, got %s", kind(e->k));
                continue;
            }
            if (strlen(e->ks) != e->kl) {
                err(c, e->k, "key contains a NUL character");
                continue;
            }
            size_t old = is_ident(e->ks, e->kl) ? path_push_field(c, e->ks)
                                                : path_push_key(c, e->ks, e->kl);
            record(c, e->k);
            Google__Protobuf__Struct__FieldsEntry *fe =
                (Google__Protobuf__Struct__FieldsEntry *)new_msg(
                    c, &google__protobuf__struct__fields_entry__descriptor);
            if (fe) {
                st->fields[st->n_fields++] = fe;
                fe->key = strdup(e->ks);
                if (!fe->key) {
                    fe->key = (char *)protobuf_c_empty_string;
                    oom(c);
                } else {
                    fe->value = parse_value(c, e->v, depth + 1);
                }
            }
            path_pop(c, old);
        }
    }
    free(kl.v);
    return st;
}

static Google__Protobuf__ListValue *parse_list(struct ctx *c, yaml_node_t *n, unsigned depth)
{
    if (n->type != YAML_SEQUENCE_NODE) {
        err(c, n, "expected a list (google.protobuf.ListValue), got %s", kind(n));
        return NULL;
    }
    Google__Protobuf__ListValue *lv =
        (Google__Protobuf__ListValue *)new_msg(c, &google__protobuf__list_value__descriptor);
    if (!lv)
        return NULL;
    size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (!cnt)
        return lv;
    lv->values = calloc(cnt, sizeof(*lv->values));
    if (!lv->values) {
        oom(c);
        return lv;
    }
    for (size_t i = 0; i < cnt && !c->abort; i++) {
        yaml_node_t *it = node_at(c, n->data.sequence.items.start[i]);
        if (!it)
            break;
        size_t old = path_push_index(c, i);
        record(c, it);
        Google__Protobuf__Value *v = parse_value(c, it, depth + 1);
        if (v)
            lv->values[lv->n_values++] = v;
        path_pop(c, old);
    }
    return lv;
}

static Google__Protobuf__Value *parse_value(struct ctx *c, yaml_node_t *n, unsigned depth)
{
    if (visit(c, n))
        return NULL;
    if (depth > c->max_depth) {
        err(c, n, "nesting too deep (limit %u)", c->max_depth);
        return NULL;
    }
    Google__Protobuf__Value *v =
        (Google__Protobuf__Value *)new_msg(c, &google__protobuf__value__descriptor);
    if (!v)
        return NULL;
    if (is_null(n)) {
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
    } else if (n->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)n->data.scalar.value;
        int plain = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE, integral;
        if (plain && (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE") ||
                      !strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))) {
            v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
            v->bool_value = s[0] == 't' || s[0] == 'T';
        } else if (plain && number_syntax(s, &integral) && isfinite(strtod(s, NULL))) {
            v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
            v->number_value = strtod(s, NULL);
        } else {
            char *d = malloc(n->data.scalar.length + 1);
            if (!d) {
                oom(c);
            } else {
                memcpy(d, s, n->data.scalar.length + 1);
                v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
                v->string_value = d;
            }
        }
    } else if (n->type == YAML_MAPPING_NODE) {
        Google__Protobuf__Struct *st = parse_struct(c, n, depth);
        if (st) {
            v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
            v->struct_value = st;
        }
    } else {
        Google__Protobuf__ListValue *lv = parse_list(c, n, depth);
        if (lv) {
            v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
            v->list_value = lv;
        }
    }
    return v;
}

/* ---- messages ---------------------------------------------------------- */

/* protoc's json_name: drop '_' and upper-case the following character. */
static int json_name_eq(const char *name, const char *key, size_t kl)
{
    size_t j = 0;
    int up = 0;
    for (const char *p = name; *p; p++) {
        if (*p == '_') {
            up = 1;
            continue;
        }
        char ch = up ? (char)toupper((unsigned char)*p) : *p;
        up = 0;
        if (j >= kl || key[j] != ch)
            return 0;
        j++;
    }
    return j == kl;
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d,
                                                  const char *k, size_t kl)
{
    if (strlen(k) != kl)
        return NULL;
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, k);
    if (f)
        return f;
    for (unsigned i = 0; i < d->n_fields; i++)
        if (json_name_eq(d->fields[i].name, k, kl))
            return &d->fields[i];
    return NULL;
}

static unsigned edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned row[66];
    if (la > 64 || lb > 64)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = (unsigned)j;
    for (size_t i = 1; i <= la; i++) {
        unsigned prev = row[0];
        row[0] = (unsigned)i;
        for (size_t j = 1; j <= lb; j++) {
            unsigned cur = row[j];
            unsigned best = prev + (tolower((unsigned char)a[i - 1]) !=
                                    tolower((unsigned char)b[j - 1]));
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

static const char *suggest(const ProtobufCMessageDescriptor *d, const char *k)
{
    const char *best = NULL;
    unsigned bd = 3;
    size_t kl = strlen(k);
    for (unsigned i = 0; i < d->n_fields; i++) {
        unsigned e = edit_distance(k, d->fields[i].name);
        if (e < bd && e <= kl / 3 + 1) {
            bd = e;
            best = d->fields[i].name;
        }
    }
    return best;
}

static int is_map_field(const ProtobufCMessageDescriptor *parent,
                        const ProtobufCFieldDescriptor *f)
{
    /* protobuf-c keeps no map_entry option: a map field is a repeated message
     * whose type is the nested "<CamelField>Entry" with key = 1, value = 2. */
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return 0;
    const ProtobufCMessageDescriptor *e = f->descriptor;
    if (!e || e->n_fields != 2 || e->fields[0].id != 1 || e->fields[1].id != 2 ||
        strcmp(e->fields[0].name, "key") || strcmp(e->fields[1].name, "value"))
        return 0;
    size_t pl = strlen(parent->name);
    if (strncmp(e->name, parent->name, pl) || e->name[pl] != '.')
        return 0;
    const char *sn = e->name + pl + 1, *fn = f->name;
    int up = 1;
    for (; *fn; fn++) {
        if (*fn == '_') {
            up = 1;
            continue;
        }
        char ch = up ? (char)toupper((unsigned char)*fn) : *fn;
        up = 0;
        if (*sn++ != ch)
            return 0;
    }
    return !strcmp(sn, "Entry");
}

static int is_value_type(const ProtobufCFieldDescriptor *f)
{
    return f->type == PROTOBUF_C_TYPE_MESSAGE && f->descriptor == &google__protobuf__value__descriptor;
}

/* Parses n as the field's element type into dst. For messages returns 0 whenever
 * a message was stored (even one with errors inside), so the caller keeps it
 * attached and it gets freed. */
static int store_value(struct ctx *c, const ProtobufCFieldDescriptor *f, yaml_node_t *n,
                       void *dst, unsigned depth)
{
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *m = parse_message(c, f->descriptor, n, depth + 1);
        if (!m)
            return -1;
        *(ProtobufCMessage **)dst = m;
        return 0;
    }
    if (visit(c, n))
        return -1;
    return parse_scalar(c, f->type, f->descriptor, n, dst);
}

static void set_repeated(struct ctx *c, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                         yaml_node_t *n, unsigned depth)
{
    if (n->type != YAML_SEQUENCE_NODE) {
        err(c, n, "expected a list, got %s", kind(n));
        return;
    }
    if (visit(c, n))
        return;
    if (depth + 1 > c->max_depth) {
        err(c, n, "nesting too deep (limit %u)", c->max_depth);
        return;
    }
    size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (!cnt)
        return;
    size_t es = elem_size(f->type);
    char *arr = calloc(cnt, es);
    if (!arr) {
        oom(c);
        return;
    }
    size_t *np = (size_t *)((char *)m + f->quantifier_offset);
    *(void **)((char *)m + f->offset) = arr;
    *np = 0;
    for (size_t i = 0; i < cnt && !c->abort; i++) {
        yaml_node_t *it = node_at(c, n->data.sequence.items.start[i]);
        if (!it)
            break;
        size_t old = path_push_index(c, i);
        record(c, it);
        if (is_null(it) && !is_value_type(f))
            err(c, it, "null is not allowed as a list item");
        else if (store_value(c, f, it, arr + *np * es, depth + 1) == 0)
            (*np)++;
        path_pop(c, old);
    }
}

static void set_map(struct ctx *c, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                    yaml_node_t *n, unsigned depth)
{
    if (n->type != YAML_MAPPING_NODE) {
        err(c, n, "expected a mapping, got %s", kind(n));
        return;
    }
    if (visit(c, n))
        return;
    if (depth + 1 > c->max_depth) {
        err(c, n, "nesting too deep (limit %u)", c->max_depth);
        return;
    }
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    struct kvlist kl;
    if (get_pairs(c, n, &kl) || !kl.n) {
        free(kl.v);
        return;
    }
    ProtobufCMessage **arr = calloc(kl.n, sizeof(*arr));
    if (!arr) {
        oom(c);
        free(kl.v);
        return;
    }
    size_t *np = (size_t *)((char *)m + f->quantifier_offset);
    *(void **)((char *)m + f->offset) = arr;
    *np = 0;
    for (size_t i = 0; i < kl.n && !c->abort; i++) {
        struct kv *e = &kl.v[i];
        if (!e->ks) {
            err(c, e->k, "map keys must be scalars, got %s", kind(e->k));
            continue;
        }
        size_t old = path_push_key(c, e->ks, e->kl);
        record(c, e->k);
        ProtobufCMessage *ent = new_msg(c, ed);
        if (ent) {
            arr[(*np)++] = ent;
            parse_scalar(c, kf->type, kf->descriptor, e->k, (char *)ent + kf->offset);
            if (is_null(e->v) && !is_value_type(vf))
                err(c, e->v, "null is not allowed as a map value");
            else
                store_value(c, vf, e->v, (char *)ent + vf->offset, depth + 1);
        }
        path_pop(c, old);
    }
    free(kl.v);
}

static void set_field(struct ctx *c, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                      yaml_node_t *n, unsigned depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (is_null(n) && !is_value_type(f))
        return; /* null = unset */
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        if (is_map_field(d, f))
            set_map(c, m, f, n, depth);
        else
            set_repeated(c, m, f, n, depth);
        return;
    }
    uint32_t *cs = NULL;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        cs = (uint32_t *)((char *)m + f->quantifier_offset);
        if (*cs && *cs != f->id) {
            const ProtobufCFieldDescriptor *o = protobuf_c_message_descriptor_get_field(d, *cs);
            err(c, n, "'%s' and '%s' cannot both be set (they are alternatives of one oneof)",
                o ? o->name : "?", f->name);
            return;
        }
    }
    if (store_value(c, f, n, (char *)m + f->offset, depth) != 0)
        return;
    if (cs)
        *cs = f->id;
    else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
             f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *)((char *)m + f->quantifier_offset) = 1;
}

/* Fills a new message of type d from the pairs of a mapping; `skip` names one
 * key to ignore ("@type" inside an Any). */
static ProtobufCMessage *parse_fields(struct ctx *c, const ProtobufCMessageDescriptor *d,
                                      struct kvlist *kl, const char *skip, unsigned depth)
{
    ProtobufCMessage *m = new_msg(c, d);
    if (!m)
        return NULL;
    const yaml_node_t **seen = calloc(d->n_fields ? d->n_fields : 1, sizeof(*seen));
    if (!seen) {
        oom(c);
        return m;
    }
    for (size_t i = 0; i < kl->n && !c->abort; i++) {
        struct kv *e = &kl->v[i];
        char kb[128];
        if (!e->ks) {
            err(c, e->k, "mapping keys must be field names, got %s", kind(e->k));
            continue;
        }
        if (skip && !strcmp(e->ks, skip))
            continue;
        const ProtobufCFieldDescriptor *f = find_field(d, e->ks, e->kl);
        if (!f) {
            const char *s = strlen(e->ks) == e->kl ? suggest(d, e->ks) : NULL;
            q(e->k, kb, sizeof(kb));
            /* 'name' rather than "name" reads better for field names */
            kb[0] = '\'';
            kb[strlen(kb) - 1] = '\'';
            if (s)
                err(c, e->k, "unknown field %s in %s (did you mean '%s'?)", kb, d->name, s);
            else
                err(c, e->k, "unknown field %s in %s", kb, d->name);
            continue;
        }
        size_t old = path_push_field(c, f->name);
        record(c, e->k);
        size_t fi = (size_t)(f - d->fields);
        if (seen[fi] && e->prio > 0) {
            /* a merged key ('<<') spelled differently than the written one */
        } else if (seen[fi]) {
            err(c, e->k, "field '%s' given twice (first at line %d)", f->name,
                (int)seen[fi]->start_mark.line + 1);
        } else {
            seen[fi] = e->k;
            set_field(c, m, f, e->v, depth);
        }
        path_pop(c, old);
    }
    free(seen);
    return m;
}

static int special_json(const ProtobufCMessageDescriptor *d)
{
    return wkt_of(d) != WKT_NONE || d == &google__protobuf__timestamp__descriptor;
}

static ProtobufCMessage *parse_any(struct ctx *c, yaml_node_t *n, unsigned depth)
{
    if (n->type != YAML_MAPPING_NODE) {
        err(c, n, "expected a mapping with \"@type\" (google.protobuf.Any), got %s", kind(n));
        return NULL;
    }
    struct kvlist kl;
    ProtobufCMessage *inner = NULL, *res = NULL;
    if (get_pairs(c, n, &kl))
        goto out;
    struct kv *te = NULL, *ve = NULL;
    for (size_t i = 0; i < kl.n; i++) {
        if (kl.v[i].ks && kl.v[i].kl == 5 && !memcmp(kl.v[i].ks, "@type", 5))
            te = &kl.v[i];
        else if (kl.v[i].ks && kl.v[i].kl == 5 && !memcmp(kl.v[i].ks, "value", 5))
            ve = &kl.v[i];
    }
    char qb[128];
    if (!te) {
        err(c, n, "missing \"@type\" in google.protobuf.Any");
        goto out;
    }
    if (te->v->type != YAML_SCALAR_NODE || strlen((const char *)te->v->data.scalar.value) !=
                                               te->v->data.scalar.length) {
        err(c, te->v, "\"@type\" must be a type URL string, got %s", kind(te->v));
        goto out;
    }
    const char *url = (const char *)te->v->data.scalar.value;
    const char *slash = strrchr(url, '/');
    if (!slash || !slash[1]) {
        err(c, te->v, "invalid type URL %s (expected \"type.googleapis.com/<message name>\")",
            q(te->v, qb, sizeof(qb)));
        goto out;
    }
    const ProtobufCMessageDescriptor *td = c->lookup ? c->lookup(slash + 1) : NULL;
    if (!td)
        td = wkt_lookup(slash + 1);
    if (!td) {
        err(c, te->v, "unknown type %s in \"@type\"", q(te->v, qb, sizeof(qb)));
        goto out;
    }
    unsigned before = c->nerr;
    if (special_json(td)) {
        for (size_t i = 0; i < kl.n; i++) {
            struct kv *e = &kl.v[i];
            if (e != te && e != ve)
                err(c, e->k, "unknown field %s in google.protobuf.Any holding %s (only "
                             "\"@type\" and \"value\")",
                    q(e->k, qb, sizeof(qb)), td->name);
        }
        if (!ve) {
            err(c, n, "missing \"value\" in google.protobuf.Any holding %s", td->name);
            goto out;
        }
        size_t old = path_push_field(c, "value");
        record(c, ve->k);
        inner = parse_message(c, td, ve->v, depth + 1);
        path_pop(c, old);
    } else {
        inner = parse_fields(c, td, &kl, "@type", depth + 1);
    }
    if (!inner || c->nerr != before)
        goto out;
    size_t sz = protobuf_c_message_get_packed_size(inner);
    uint8_t *buf = malloc(sz ? sz : 1);
    char *u = strdup(url);
    Google__Protobuf__Any *any =
        (Google__Protobuf__Any *)new_msg(c, &google__protobuf__any__descriptor);
    if (!buf || !u || !any) {
        free(buf);
        free(u);
        free(any);
        if (!c->oom)
            oom(c);
        goto out;
    }
    protobuf_c_message_pack(inner, buf);
    any->type_url = u;
    if (sz) {
        any->value.data = buf;
        any->value.len = sz;
    } else {
        free(buf);
    }
    res = &any->base;
out:
    if (inner)
        protobuf_c_message_free_unpacked(inner, NULL);
    free(kl.v);
    return res;
}

static ProtobufCMessage *parse_message(struct ctx *c, const ProtobufCMessageDescriptor *d,
                                       yaml_node_t *n, unsigned depth)
{
    char qb[128];
    if (!d)
        return NULL;
    enum wkt w = wkt_of(d);
    if (w == WKT_VALUE)
        return (ProtobufCMessage *)parse_value(c, n, depth);
    if (visit(c, n))
        return NULL;
    if (depth > c->max_depth) {
        err(c, n, "nesting too deep (limit %u)", c->max_depth);
        return NULL;
    }
    switch (w) {
    case WKT_ANY:
        return parse_any(c, n, depth);
    case WKT_STRUCT:
        return (ProtobufCMessage *)parse_struct(c, n, depth);
    case WKT_LIST:
        return (ProtobufCMessage *)parse_list(c, n, depth);
    case WKT_DURATION:
    case WKT_TIMESTAMP: {
        int64_t s = 0;
        int32_t ns = 0;
        int range = 0, bad;
        const char *txt = n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : "";
        if (n->type == YAML_SCALAR_NODE && strlen(txt) != n->data.scalar.length)
            txt = "";
        if (w == WKT_DURATION)
            bad = parse_duration(txt, &s, &ns, &range);
        else
            bad = parse_timestamp(txt, &s, &ns);
        if (bad) {
            if (range)
                err(c, n, "duration %s out of range (at most %llds)", q(n, qb, sizeof(qb)),
                    (long long)MAX_DURATION_SECONDS);
            else if (w == WKT_DURATION)
                err(c, n, "expected a duration like \"1.5s\", got %s", q(n, qb, sizeof(qb)));
            else
                err(c, n, "expected an RFC 3339 timestamp like \"2024-01-31T12:00:00Z\", got %s",
                    q(n, qb, sizeof(qb)));
            return NULL;
        }
        /* Duration and Timestamp share the layout {seconds, nanos} */
        Google__Protobuf__Duration *du = (Google__Protobuf__Duration *)new_msg(c, d);
        if (du) {
            du->seconds = s;
            du->nanos = ns;
        }
        return (ProtobufCMessage *)du;
    }
    case WKT_WRAPPER: {
        const ProtobufCFieldDescriptor *vf = &d->fields[0];
        if (n->type != YAML_SCALAR_NODE) {
            err(c, n, "expected a %s value (%s), got %s", type_name(vf->type), d->name,
                kind(n));
            return NULL;
        }
        ProtobufCMessage *m = new_msg(c, d);
        if (m && parse_scalar(c, vf->type, vf->descriptor, n, (char *)m + vf->offset)) {
            protobuf_c_message_free_unpacked(m, NULL);
            m = NULL;
        }
        return m;
    }
    default:
        break;
    }
    if (n->type != YAML_MAPPING_NODE) {
        if (n->type == YAML_SCALAR_NODE)
            err(c, n, "expected a mapping (%s), got %s", d->name, q(n, qb, sizeof(qb)));
        else
            err(c, n, "expected a mapping (%s), got %s", d->name, kind(n));
        return NULL;
    }
    struct kvlist kl;
    ProtobufCMessage *m = NULL;
    if (get_pairs(c, n, &kl) == 0)
        m = parse_fields(c, d, &kl, NULL, depth);
    free(kl.v);
    return m;
}

/* ---- entry point -------------------------------------------------------- */

static void yaml_error(struct ctx *c, yaml_parser_t *p)
{
    const char *prob = p->problem ? p->problem : "invalid YAML";
    if (p->error == YAML_MEMORY_ERROR) {
        oom(c);
        return;
    }
    yaml_mark_t m = p->problem_mark;
    if (p->error == YAML_READER_ERROR) /* reader errors carry a byte offset only */
        sk_cfgerrs_add_at(c->errs, 1, 1, "", "invalid YAML: %s (at byte %zu)", prob,
                          p->problem_offset);
    else if (p->context)
        sk_cfgerrs_add_at(c->errs, (int)m.line + 1, (int)m.column + 1, "",
                          "invalid YAML: %s (%s at line %d)", prob, p->context,
                          (int)p->context_mark.line + 1);
    else
        sk_cfgerrs_add_at(c->errs, (int)m.line + 1, (int)m.column + 1, "", "invalid YAML: %s",
                          prob);
    c->nerr++;
}

static void compose_err(struct ctx *c, const yaml_mark_t *m, const char *msg)
{
    sk_cfgerrs_add_at(c->errs, (int)m->line + 1, (int)m->column + 1, "", "%s", msg);
    c->nerr++;
}

struct anchor {
    char *name;
    int node;
};

/* Builds the node graph from libyaml events ourselves rather than with
 * yaml_parser_load: we stop as soon as the nesting passes the depth limit
 * (libyaml's scanner costs O(depth) per token, so a deep document would
 * otherwise cost O(n^2)), we reject a second document at its first event, and
 * an anchor becomes usable only once its node is complete, so aliases can
 * never form a cycle. */
static int compose(struct ctx *c, const char *buf, size_t len, yaml_document_t *doc)
{
    yaml_parser_t p;
    yaml_event_t ev;
    struct anchor *anc = NULL;
    size_t nanc = 0, capanc = 0;
    int stack[MAX_MAX_DEPTH + 2], keyof[MAX_MAX_DEPTH + 2];
    char *open_anchor[MAX_MAX_DEPTH + 2];
    unsigned sp = 0, limit = c->max_depth + 2; /* the walker reports the exact path */
    int docs = 0, rc = -1, done = 0;

    memset(doc, 0, sizeof(*doc)); /* safe to yaml_document_delete() whatever happens */
    if (!yaml_document_initialize(doc, NULL, NULL, NULL, 1, 1)) {
        memset(doc, 0, sizeof(*doc));
        oom(c);
        return -1;
    }
    if (!yaml_parser_initialize(&p)) {
        oom(c);
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    while (!done) {
        if (!yaml_parser_parse(&p, &ev)) {
            yaml_error(c, &p);
            break;
        }
        int node = 0, fail = 0;
        const yaml_char_t *anchor = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            rc = 0;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                compose_err(c, &ev.start_mark,
                            "more than one YAML document (only one configuration document is "
                            "allowed)");
                fail = 1;
            }
            break;
        case YAML_ALIAS_EVENT: {
            for (size_t i = nanc; i-- > 0;)
                if (!strcmp(anc[i].name, (const char *)ev.data.alias.anchor)) {
                    node = anc[i].node;
                    break;
                }
            if (!node) {
                compose_err(c, &ev.start_mark,
                            "invalid YAML: unknown or recursive alias (an alias must follow "
                            "its complete anchored node)");
                fail = 1;
            }
            break;
        }
        case YAML_SCALAR_EVENT:
            if (ev.data.scalar.length > 0x7fffffff) {
                compose_err(c, &ev.start_mark, "YAML scalar too long");
                fail = 1;
                break;
            }
            node = yaml_document_add_scalar(doc, NULL, ev.data.scalar.value,
                                            (int)ev.data.scalar.length, ev.data.scalar.style);
            if (!node) { /* libyaml re-checks UTF-8 here */
                compose_err(c, &ev.start_mark, "invalid YAML scalar (bad UTF-8 or out of memory)");
                fail = 1;
                break;
            }
            anchor = ev.data.scalar.anchor;
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            if (sp >= limit) {
                char m[64];
                snprintf(m, sizeof(m), "nesting too deep (limit %u)", c->max_depth);
                compose_err(c, &ev.start_mark, m);
                fail = 1;
                break;
            }
            int n = ev.type == YAML_SEQUENCE_START_EVENT
                        ? yaml_document_add_sequence(doc, NULL, ev.data.sequence_start.style)
                        : yaml_document_add_mapping(doc, NULL, ev.data.mapping_start.style);
            if (!n) {
                oom(c);
                fail = 1;
                break;
            }
            doc->nodes.start[n - 1].start_mark = ev.start_mark;
            const yaml_char_t *a = ev.type == YAML_SEQUENCE_START_EVENT
                                       ? ev.data.sequence_start.anchor
                                       : ev.data.mapping_start.anchor;
            open_anchor[sp] = a ? strdup((const char *)a) : NULL;
            if (a && !open_anchor[sp]) {
                oom(c);
                fail = 1;
                break;
            }
            keyof[sp] = 0;
            stack[sp++] = n;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (sp == 0) { /* cannot happen with a well-behaved parser */
                fail = 1;
                break;
            }
            node = stack[--sp];
            anchor = (const yaml_char_t *)open_anchor[sp];
            break;
        default:
            break;
        }
        if (!fail && node) {
            if (ev.type == YAML_SCALAR_EVENT)
                doc->nodes.start[node - 1].start_mark = ev.start_mark;
            if (anchor) {
                if (nanc == capanc) {
                    size_t nc = capanc ? capanc * 2 : 16;
                    struct anchor *na = realloc(anc, nc * sizeof(*na));
                    if (!na)
                        fail = 1;
                    else
                        anc = na, capanc = nc;
                }
                char *nm = fail ? NULL : strdup((const char *)anchor);
                if (!nm) {
                    oom(c);
                    fail = 1;
                } else {
                    anc[nanc++] = (struct anchor){nm, node};
                }
            }
            if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT)
                free(open_anchor[sp]);
            if (!fail && sp > 0) {
                int parent = stack[sp - 1];
                int ok = 1;
                if (doc->nodes.start[parent - 1].type == YAML_SEQUENCE_NODE)
                    ok = yaml_document_append_sequence_item(doc, parent, node);
                else if (!keyof[sp - 1])
                    keyof[sp - 1] = node;
                else {
                    ok = yaml_document_append_mapping_pair(doc, parent, keyof[sp - 1], node);
                    keyof[sp - 1] = 0;
                }
                if (!ok) {
                    oom(c);
                    fail = 1;
                }
            }
        }
        yaml_event_delete(&ev);
        if (fail)
            break;
    }
    while (sp > 0)
        free(open_anchor[--sp]);
    for (size_t i = 0; i < nanc; i++)
        free(anc[i].name);
    free(anc);
    yaml_parser_delete(&p);
    return rc;
}

int sk_yaml_pb_parse_opts(const char *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                          sk_pb_type_lookup_fn lookup, const struct sk_yaml_pb_opts *opts,
                          ProtobufCMessage **out, struct sk_cfgerrs *errs)
{
    struct ctx c;
    memset(&c, 0, sizeof(c));
    c.errs = errs;
    c.lookup = lookup;
    c.max_depth = opts && opts->max_depth ? opts->max_depth : DEF_MAX_DEPTH;
    if (c.max_depth > MAX_MAX_DEPTH)
        c.max_depth = MAX_MAX_DEPTH;
    c.max_nodes = opts && opts->max_nodes ? opts->max_nodes : DEF_MAX_NODES;
    c.max_errors = opts && opts->max_errors ? opts->max_errors : DEF_MAX_ERRORS;
    *out = NULL;
    c.path = calloc(1, 128);
    if (!c.path) {
        sk_cfgerrs_add_at(errs, 0, 0, "", "out of memory");
        return SK_ERR_NOMEM;
    }
    c.pcap = 128;

    yaml_document_t doc;
    ProtobufCMessage *m = NULL;
    int have_doc = 1;
    if (compose(&c, buf, len, &doc) || c.nerr)
        goto done;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || is_null(root)) {
        sk_cfgerrs_add_at(errs, root ? (int)root->start_mark.line + 1 : 0,
                          root ? (int)root->start_mark.column + 1 : 0, "",
                          "empty configuration");
        c.nerr++;
        goto done;
    }

    c.doc = &doc;
    record(&c, root);
    m = parse_message(&c, desc, root, 0);
    if (!m && !c.nerr) /* cannot happen; keep the contract anyway */
        err(&c, root, "could not parse %s", desc ? desc->name : "(no type)");

done:
    if (have_doc)
        yaml_document_delete(&doc);
    free(c.path);
    if (c.nerr && m && !c.oom && opts && opts->keep_partial) {
        *out = m; /* the caller validates the rest and frees it */
        return SK_ERR_CONFIG;
    }
    if (c.nerr || !m) {
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
        if (!c.nerr)
            sk_cfgerrs_add_at(errs, 0, 0, "", "configuration rejected");
        return c.oom ? SK_ERR_NOMEM : SK_ERR_CONFIG;
    }
    *out = m;
    return 0;
}

int sk_yaml_pb_parse(const char *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                     sk_pb_type_lookup_fn lookup, ProtobufCMessage **out,
                     struct sk_cfgerrs *errs)
{
    return sk_yaml_pb_parse_opts(buf, len, desc, lookup, NULL, out, errs);
}
