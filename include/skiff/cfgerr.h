/* Config error list shared by the YAML loader, the translator and xDS.
 *
 * Every error carries a field path in proto JSON names, e.g.
 *   static_resources.clusters[2].load_assignment.endpoints[0]
 *   static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config
 * (repeated fields: name[i]; map entries: name["key"]; an Any's fields continue
 * under the Any's own field name, without an "@type" segment).
 *
 * The YAML loader records the source position of every node it reads under its
 * path (sk_cfgerrs_record_pos). An error added later by path only (e.g. by the
 * translator: "unknown cluster") gets the position of the longest recorded
 * prefix of its path, so every error reads "file:line:col: path: message".
 */
#ifndef SKIFF_CFGERR_H
#define SKIFF_CFGERR_H

#include <stddef.h>
#include <stdio.h>

struct sk_cfgerr {
    int line, col; /* 1-based; 0 = unknown */
    char *path;
    char *msg;
};

struct sk_pathpos {
    char *path;
    int line, col;
};

struct sk_cfgerrs {
    char *file; /* source name for messages ("<xds>" for xDS) */
    struct sk_cfgerr *v;
    size_t n, cap;
    struct sk_pathpos *pos;
    size_t npos, pos_cap;
};

void sk_cfgerrs_init(struct sk_cfgerrs *e, const char *file);
void sk_cfgerrs_free(struct sk_cfgerrs *e);
/* Add an error at an explicit position (line/col 0 = look up by path). */
void sk_cfgerrs_add_at(struct sk_cfgerrs *e, int line, int col, const char *path, const char *fmt,
                       ...) __attribute__((format(printf, 5, 6)));
/* Add an error; position looked up from the recorded path table. */
void sk_cfgerrs_add(struct sk_cfgerrs *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void sk_cfgerrs_record_pos(struct sk_cfgerrs *e, const char *path, int line, int col);
/* "file:line:col: path: msg" one per line. */
void sk_cfgerrs_print(const struct sk_cfgerrs *e, FILE *f);
/* All errors joined by "; " in a malloc'd string (for xDS NACK error_detail). */
char *sk_cfgerrs_join(const struct sk_cfgerrs *e);

#endif
