/* The one explicit table of HTTP filter implementations. */
#include <string.h>

#include "skiff/filter.h"

/* Filters register here as they land (fault, rbac). */
static const struct sk_http_filter_vt *const registry[] = {
    NULL,
};

const struct sk_http_filter_vt *sk_filter_lookup(const char *type_name)
{
    for (size_t i = 0; registry[i]; i++)
        if (strcmp(registry[i]->type_name, type_name) == 0)
            return registry[i];
    return NULL;
}
