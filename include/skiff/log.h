/* Logging: one line per event to stderr, "<time> <level> [<component>] msg".
 * Thread-safe (single write(2) per line). Callable from any callback. */
#ifndef SKIFF_LOG_H
#define SKIFF_LOG_H

enum sk_log_level { SK_LOG_DEBUG = 0, SK_LOG_INFO = 1, SK_LOG_WARN = 2, SK_LOG_ERROR = 3 };

extern int sk_log_level;

void sk_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int sk_log_level_parse(const char *name); /* -1 if unknown */

#define SK_LOG(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) >= sk_log_level)                                                                 \
            sk_log((lvl), __VA_ARGS__);                                                            \
    } while (0)
#define sk_debug(...) SK_LOG(SK_LOG_DEBUG, __VA_ARGS__)
#define sk_info(...) SK_LOG(SK_LOG_INFO, __VA_ARGS__)
#define sk_warn(...) SK_LOG(SK_LOG_WARN, __VA_ARGS__)
#define sk_error(...) SK_LOG(SK_LOG_ERROR, __VA_ARGS__)

#endif
