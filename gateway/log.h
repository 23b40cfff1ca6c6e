/*
 * Logging to stderr, one line per message, each written with a single
 * write() so lines from different threads never interleave.
 *
 * A line reads "2026-12-04T16:42:09.123Z error upstream: connect failed
 * route=users". Messages are lowercase, name the object and the value, and
 * carry ids as key=value pairs at the end.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef GATEWAY_LOG_H
#define GATEWAY_LOG_H

#include <stdbool.h>

enum gw_log_level {
    GW_LOG_ERROR = 0,
    GW_LOG_WARN,
    GW_LOG_INFO,
    GW_LOG_DEBUG,
};

/* Sets the highest level that is written; the default is GW_LOG_INFO. */
void gw_log_set_level(enum gw_log_level level);

/* Returns true when messages of level are written. */
bool gw_log_enabled(enum gw_log_level level);

/* Writes one line at level. Use the macros, which skip disabled levels. */
void gw_log_write(enum gw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define gw_log(level, ...)                                                     \
    do {                                                                       \
        if (gw_log_enabled(level))                                             \
            gw_log_write(level, __VA_ARGS__);                                  \
    } while (0)

#define gw_log_error(...) gw_log(GW_LOG_ERROR, __VA_ARGS__)
#define gw_log_warn(...) gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_log_info(...) gw_log(GW_LOG_INFO, __VA_ARGS__)
#define gw_log_debug(...) gw_log(GW_LOG_DEBUG, __VA_ARGS__)

#endif /* GATEWAY_LOG_H */
