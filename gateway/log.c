/*
 * The stderr logger.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static _Atomic int max_level = GW_LOG_INFO;

static const char *const level_names[] = {
    [GW_LOG_ERROR] = "error",
    [GW_LOG_WARN] = "warn",
    [GW_LOG_INFO] = "info",
    [GW_LOG_DEBUG] = "debug",
};

void
gw_log_set_level(enum gw_log_level level)
{
    atomic_store(&max_level, (int)level);
}

bool
gw_log_enabled(enum gw_log_level level)
{
    return (int)level <= atomic_load_explicit(&max_level, memory_order_relaxed);
}

void
gw_log_write(enum gw_log_level level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level]);
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);

    size_t len = (size_t)n;
    if (m > 0)
        len += (size_t)m < sizeof(line) - (size_t)n - 1
                   ? (size_t)m
                   : sizeof(line) - (size_t)n - 2; /* cut long lines */
    line[len++] = '\n';

    /* One write per line keeps concurrent lines whole; a short write to
     * stderr is not retried because there is nowhere to report it. */
    ssize_t written = write(STDERR_FILENO, line, len);
    (void)written;
}
