/*
 * The stderr logger and the table that rate-limits repeated messages.
 *
 * The repeat table is a fixed array of slots found by hashing the key, with
 * a short linear probe. A mutex guards it, held only to look up and update
 * one slot and never while formatting or writing (except at flush).
 */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define REPEAT_SLOTS  256
#define REPEAT_PROBES 8

struct repeat_slot {
    char key[GW_LOG_KEY_MAX];
    bool used;
    enum gw_log_level level;
    wk_time last_written;
    uint64_t suppressed; /* repeats since last_written */
};

/* A count taken out of the table, to be written after the lock is let go. */
struct repeat_report {
    char key[GW_LOG_KEY_MAX];
    enum gw_log_level level;
    uint64_t suppressed;
};

static _Atomic int max_level = GW_LOG_INFO;
static _Atomic int output_fd = -1; /* -1: STDERR_FILENO */

static pthread_mutex_t repeat_lock = PTHREAD_MUTEX_INITIALIZER;
static struct repeat_slot repeat_slots[REPEAT_SLOTS];
static const struct wk_clock *repeat_clock;
static wk_duration repeat_interval = WK_MSEC(GW_LOG_REPEAT_INTERVAL_MS);

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

int
gw_log_fd(void)
{
    int fd = atomic_load_explicit(&output_fd, memory_order_relaxed);
    return fd >= 0 ? fd : STDERR_FILENO;
}

void
gw_log_set_fd(int fd)
{
    atomic_store(&output_fd, fd);
}

/* Writes "2026-12-04T16:42:09.123Z warn " into line. Returns its length. */
static size_t
line_prefix(char *line, size_t size, enum gw_log_level level)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level]);
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/*
 * Appends text to line at *len, writing control characters as \xHH, and
 * stops before *len would pass limit.
 */
static void
append_escaped(char *line, size_t *len, size_t limit, const char *text)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = *len;

    for (const unsigned char *c = (const unsigned char *)text; *c != '\0';
         c++) {
        if (*c >= 0x20 && *c != 0x7f) {
            if (n + 1 > limit)
                break;
            line[n++] = (char)*c;
            continue;
        }
        if (n + 4 > limit)
            break;
        line[n++] = '\\';
        line[n++] = 'x';
        line[n++] = hex[*c >> 4];
        line[n++] = hex[*c & 0xf];
    }
    *len = n;
}

/* Formats and writes one line: prefix, message, suffix (may be NULL). */
__attribute__((format(printf, 3, 0))) static void
write_line(enum gw_log_level level, const char *suffix, const char *fmt,
           va_list ap)
{
    char message[GW_LOG_LINE_MAX];
    char line[GW_LOG_LINE_MAX];
    size_t suffix_len = suffix != NULL ? strlen(suffix) : 0;

    if (vsnprintf(message, sizeof(message), fmt, ap) < 0)
        message[0] = '\0';
    size_t len = line_prefix(line, sizeof(line), level);
    if (suffix_len > sizeof(line) - len - 1)
        suffix_len = 0;
    append_escaped(line, &len, sizeof(line) - 1 - suffix_len, message);
    if (suffix_len > 0)
        memcpy(line + len, suffix, suffix_len);
    len += suffix_len;
    line[len++] = '\n';

    /* One write per line keeps concurrent lines whole; a short write to
     * stderr is not retried because there is nowhere to report it. */
    ssize_t written = write(gw_log_fd(), line, len);
    (void)written;
}

void
gw_log_write(enum gw_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    write_line(level, NULL, fmt, ap);
    va_end(ap);
}

/* --- repeated messages ------------------------------------------------ */

__attribute__((format(printf, 2, 3))) static void
write_plain(enum gw_log_level level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    write_line(level, NULL, fmt, ap);
    va_end(ap);
}

static void
write_report(const struct repeat_report *report)
{
    write_plain(report->level,
                "log: %llu repeats suppressed since the last line: %s",
                (unsigned long long)report->suppressed, report->key);
}

/* FNV-1a over the bytes of key that the table compares. */
static uint64_t
key_hash(const char *key)
{
    uint64_t h = UINT64_C(14695981039346656037);

    for (size_t i = 0; i < GW_LOG_KEY_MAX - 1 && key[i] != '\0'; i++) {
        h ^= (unsigned char)key[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

/*
 * Finds the slot of key, or claims one for it: a free slot, else the one
 * written longest ago among the probed slots. A claimed slot's pending
 * count goes into *evicted. Returns the slot and sets *fresh for a claim.
 * Caller holds repeat_lock.
 */
static struct repeat_slot *
find_slot_locked(const char *key, bool *fresh, struct repeat_report *evicted)
{
    uint64_t h = key_hash(key);
    struct repeat_slot *victim = NULL;

    for (size_t i = 0; i < REPEAT_PROBES; i++) {
        struct repeat_slot *s = &repeat_slots[(h + i) % REPEAT_SLOTS];
        if (s->used && strncmp(s->key, key, GW_LOG_KEY_MAX - 1) == 0) {
            *fresh = false;
            return s;
        }
        if (victim == NULL || (victim->used && !s->used) ||
            (victim->used && s->used && s->last_written < victim->last_written))
            victim = s;
    }
    if (victim->used && victim->suppressed > 0) {
        memcpy(evicted->key, victim->key, sizeof(evicted->key));
        evicted->level = victim->level;
        evicted->suppressed = victim->suppressed;
    }
    snprintf(victim->key, sizeof(victim->key), "%s", key);
    victim->used = true;
    victim->suppressed = 0;
    *fresh = true;
    return victim;
}

/*
 * Decides whether a message with key is written now. Returns true and sets
 * *suppressed to the repeats since the last line, or counts the repeat and
 * returns false.
 */
static bool
repeat_admit(enum gw_log_level level, const char *key, uint64_t *suppressed,
             struct repeat_report *evicted)
{
    bool fresh;
    bool admit = true;

    pthread_mutex_lock(&repeat_lock);
    wk_time now = wk_clock_now(repeat_clock);
    struct repeat_slot *s = find_slot_locked(key, &fresh, evicted);
    if (!fresh && now - s->last_written < repeat_interval) {
        s->suppressed++;
        admit = false;
    } else {
        *suppressed = s->suppressed;
        s->suppressed = 0;
        s->last_written = now;
        s->level = level;
    }
    pthread_mutex_unlock(&repeat_lock);
    return admit;
}

void
gw_log_limited_write(enum gw_log_level level, const char *key, const char *fmt,
                     ...)
{
    struct repeat_report evicted = {.suppressed = 0};
    uint64_t suppressed = 0;
    char suffix[64];
    va_list ap;

    bool admit = repeat_admit(level, key, &suppressed, &evicted);
    if (evicted.suppressed > 0)
        write_report(&evicted);
    if (!admit)
        return;
    suffix[0] = '\0';
    if (suppressed > 0)
        snprintf(suffix, sizeof(suffix), " (%llu repeats suppressed)",
                 (unsigned long long)suppressed);
    va_start(ap, fmt);
    write_line(level, suffix, fmt, ap);
    va_end(ap);
}

void
gw_log_flush_repeats(void)
{
    pthread_mutex_lock(&repeat_lock);
    for (size_t i = 0; i < REPEAT_SLOTS; i++) {
        struct repeat_slot *s = &repeat_slots[i];
        if (s->used && s->suppressed > 0) {
            struct repeat_report report = {.level = s->level,
                                           .suppressed = s->suppressed};
            memcpy(report.key, s->key, sizeof(report.key));
            /* Shutdown only: writing under the lock keeps this simple. */
            write_report(&report);
        }
        s->used = false;
        s->suppressed = 0;
    }
    pthread_mutex_unlock(&repeat_lock);
}

void
gw_log_set_repeat_timing(const struct wk_clock *clock, wk_duration interval)
{
    pthread_mutex_lock(&repeat_lock);
    repeat_clock = clock;
    repeat_interval =
        interval > 0 ? interval : WK_MSEC(GW_LOG_REPEAT_INTERVAL_MS);
    memset(repeat_slots, 0, sizeof(repeat_slots));
    pthread_mutex_unlock(&repeat_lock);
}
