#include "skiff/stats.h"

const char *const sk_stat_names[SK_ST__COUNT] = {
#define SK_STAT_NAME(n) #n,
    SK_STATS_LIST(SK_STAT_NAME)
#undef SK_STAT_NAME
};
