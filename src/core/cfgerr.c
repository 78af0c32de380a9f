#include "skiff/cfgerr.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void sk_cfgerrs_init(struct sk_cfgerrs *e, const char *file)
{
    memset(e, 0, sizeof(*e));
    e->file = strdup(file ? file : "<config>");
}

void sk_cfgerrs_free(struct sk_cfgerrs *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->v[i].path);
        free(e->v[i].msg);
    }
    for (size_t i = 0; i < e->npos; i++)
        free(e->pos[i].path);
    free(e->v);
    free(e->pos);
    free(e->file);
    memset(e, 0, sizeof(*e));
}

void sk_cfgerrs_record_pos(struct sk_cfgerrs *e, const char *path, int line, int col)
{
    if (e->npos == e->pos_cap) {
        size_t nc = e->pos_cap ? e->pos_cap * 2 : 64;
        struct sk_pathpos *p = realloc(e->pos, nc * sizeof(*p));
        if (!p)
            return;
        e->pos = p;
        e->pos_cap = nc;
    }
    char *dup = strdup(path ? path : "");
    if (!dup)
        return;
    e->pos[e->npos++] = (struct sk_pathpos){dup, line, col};
}

/* Longest recorded path that is a prefix of `path` at a segment boundary. */
static void lookup_pos(const struct sk_cfgerrs *e, const char *path, int *line, int *col)
{
    size_t best = 0;
    int found = 0;
    for (size_t i = 0; i < e->npos; i++) {
        size_t l = strlen(e->pos[i].path);
        if (strncmp(e->pos[i].path, path, l) != 0)
            continue;
        char c = path[l];
        if (c != 0 && c != '.' && c != '[')
            continue;
        if (!found || l >= best) {
            best = l;
            *line = e->pos[i].line;
            *col = e->pos[i].col;
            found = 1;
        }
    }
}

static void vadd(struct sk_cfgerrs *e, int line, int col, const char *path, const char *fmt,
                 va_list ap)
{
    if (e->n == e->cap) {
        size_t nc = e->cap ? e->cap * 2 : 8;
        struct sk_cfgerr *v = realloc(e->v, nc * sizeof(*v));
        if (!v)
            return;
        e->v = v;
        e->cap = nc;
    }
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (!path)
        path = "";
    if (line == 0)
        lookup_pos(e, path, &line, &col);
    e->v[e->n++] = (struct sk_cfgerr){line, col, strdup(path), strdup(msg)};
}

void sk_cfgerrs_add_at(struct sk_cfgerrs *e, int line, int col, const char *path, const char *fmt,
                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    vadd(e, line, col, path, fmt, ap);
    va_end(ap);
}

void sk_cfgerrs_add(struct sk_cfgerrs *e, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vadd(e, 0, 0, path, fmt, ap);
    va_end(ap);
}

void sk_cfgerrs_print(const struct sk_cfgerrs *e, FILE *f)
{
    for (size_t i = 0; i < e->n; i++) {
        const struct sk_cfgerr *r = &e->v[i];
        if (r->line > 0)
            fprintf(f, "%s:%d:%d: ", e->file, r->line, r->col);
        else
            fprintf(f, "%s: ", e->file);
        if (r->path && r->path[0])
            fprintf(f, "%s: ", r->path);
        fprintf(f, "%s\n", r->msg ? r->msg : "(no message)");
    }
}

char *sk_cfgerrs_join(const struct sk_cfgerrs *e)
{
    size_t total = 1;
    for (size_t i = 0; i < e->n; i++)
        total += strlen(e->v[i].path ? e->v[i].path : "") + strlen(e->v[i].msg ? e->v[i].msg : "") + 4;
    char *s = malloc(total);
    if (!s)
        return NULL;
    s[0] = 0;
    for (size_t i = 0; i < e->n; i++) {
        if (i)
            strcat(s, "; ");
        if (e->v[i].path && e->v[i].path[0]) {
            strcat(s, e->v[i].path);
            strcat(s, ": ");
        }
        strcat(s, e->v[i].msg ? e->v[i].msg : "");
    }
    return s;
}
