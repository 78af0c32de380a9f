/* The one explicit table of HTTP filter implementations. */
#include <string.h>

#include "skiff/fault.h"
#include "skiff/filter.h"
#include "skiff/rbac.h"

static const struct sk_http_filter_vt *const registry[] = {
    &sk_fault_filter,
    &sk_rbac_filter,
    NULL,
};

const struct sk_http_filter_vt *sk_filter_lookup(const char *type_name)
{
    for (size_t i = 0; registry[i]; i++)
        if (strcmp(registry[i]->type_name, type_name) == 0)
            return registry[i];
    return NULL;
}

void sk_filters_stats(struct sk_buf *out, bool prometheus)
{
    sk_fault_stats(out, prometheus);
    sk_rbac_stats(out, prometheus);
}
