/*
 * Formatting access log lines.
 */
#include "access_log.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

void
gw_access_log_write(enum gw_access_log format, const struct gw_access_entry *e)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;

    if (format == GW_ACCESS_LOG_OFF)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    /* TODO: the JSON format; both formats write text for now. */
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ access %s \"%s %s\" "
                     "route=%s status=%u upstream_status=%ld attempts=%u "
                     "duration_ms=%.3f fallback=%s error=%s request_id=%llu\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, e->client,
                     e->method, e->target, e->route != NULL ? e->route : "-",
                     e->status, e->upstream_status, e->attempts,
                     (double)e->duration_ns / 1e6,
                     e->fallback != NULL ? e->fallback : "-",
                     e->error != NULL ? e->error : "-",
                     (unsigned long long)e->request_id);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    ssize_t written = write(STDERR_FILENO, line, len);
    (void)written;
}
