/*
 * Logging to stderr, one line per message, each written with a single
 * write() of at most GW_LOG_LINE_MAX bytes, so lines from different threads
 * never interleave (writes to a pipe up to PIPE_BUF, 4096 bytes on Linux,
 * are atomic).
 *
 * A line reads "2026-12-04T16:42:09.123Z error upstream: connect failed
 * route=users". Messages are lowercase, name the object and the value, and
 * carry ids as key=value pairs at the end. Control characters in a message
 * are written as \xHH, so one message is always one line.
 *
 * Repeats of the same message, such as an upstream that fails on every
 * request, go through gw_log_limited(). It writes the first, and then at
 * most one line per interval per key, which carries the count of the
 * repeats that were not written.
 *
 * Thread safety: every function may be called from any thread, except the
 * test hooks at the end, which are for a single-threaded test's setup.
 */
#ifndef GATEWAY_LOG_H
#define GATEWAY_LOG_H

#include <stdbool.h>

#include "workshop/clock.h"

enum gw_log_level {
    GW_LOG_ERROR = 0,
    GW_LOG_WARN,
    GW_LOG_INFO,
    GW_LOG_DEBUG,
};

/* Maximum line length in bytes, newline included. Longer messages are cut. */
#define GW_LOG_LINE_MAX 4096
/* Default time between two lines of one gw_log_limited() key. */
#define GW_LOG_REPEAT_INTERVAL_MS 10000
/* Size of a gw_log_limited() key: keys are compared on their first
 * GW_LOG_KEY_MAX - 1 bytes. */
#define GW_LOG_KEY_MAX 96

/* Sets the highest level that is written; the default is GW_LOG_INFO. */
void gw_log_set_level(enum gw_log_level level);

/* Returns true when messages of level are written. */
bool gw_log_enabled(enum gw_log_level level);

/* Writes one line at level. Use the macros, which skip disabled levels. */
void gw_log_write(enum gw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Writes one line at level unless a line with the same key was written
 * less than the repeat interval ago, in which case the repeat is only
 * counted. The next line written for the key ends with " (N repeats
 * suppressed)". key names the kind of event, e.g. "upstream users connect
 * failed". It must not contain request data, whose variety would defeat
 * the limit. Up to 256 keys are tracked at once, and a key pushed out of
 * the table first logs its pending count.
 */
void gw_log_limited_write(enum gw_log_level level, const char *key,
                          const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Writes one line for each key with repeats not yet reported, such as
 * "log: 41 repeats suppressed since the last line: <key>", and clears the
 * table. Call it at shutdown so the last counts are not lost.
 */
void gw_log_flush_repeats(void);

/* Returns the file descriptor lines are written to (stderr by default). */
int gw_log_fd(void);

#define gw_log(level, ...)                                                     \
    do {                                                                       \
        if (gw_log_enabled(level))                                             \
            gw_log_write(level, __VA_ARGS__);                                  \
    } while (0)

#define gw_log_limited(level, key, ...)                                        \
    do {                                                                       \
        if (gw_log_enabled(level))                                             \
            gw_log_limited_write(level, key, __VA_ARGS__);                     \
    } while (0)

#define gw_log_error(...) gw_log(GW_LOG_ERROR, __VA_ARGS__)
#define gw_log_warn(...)  gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_log_info(...)  gw_log(GW_LOG_INFO, __VA_ARGS__)
#define gw_log_debug(...) gw_log(GW_LOG_DEBUG, __VA_ARGS__)

/* --- test hooks ------------------------------------------------------- */

/* Writes lines to fd instead of stderr; -1 restores stderr. */
void gw_log_set_fd(int fd);

/*
 * Times repeats with clock (NULL: CLOCK_MONOTONIC) and an interval of
 * interval nanoseconds (0: GW_LOG_REPEAT_INTERVAL_MS). Clears the table.
 */
void gw_log_set_repeat_timing(const struct wk_clock *clock,
                              wk_duration interval);

#endif /* GATEWAY_LOG_H */
