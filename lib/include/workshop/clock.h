/*
 * Monotonic time and an injectable clock.
 *
 * Every policy in libworkshop reads time through a struct wk_clock, so tests
 * drive time by hand with a manual clock instead of sleeping. Times are
 * nanoseconds on the monotonic clock (wk_time); intervals are nanoseconds
 * (wk_duration). Both are signed 64-bit, which covers about 292 years.
 *
 * Thread safety: wk_clock_now() may be called from any thread. A manual clock
 * may be advanced from one thread while others read it.
 */
#ifndef WORKSHOP_CLOCK_H
#define WORKSHOP_CLOCK_H

#include <stdint.h>

/* A point in time: nanoseconds on a monotonic clock. */
typedef int64_t wk_time;
/* An interval: nanoseconds. */
typedef int64_t wk_duration;

#define WK_NSEC_PER_MSEC INT64_C(1000000)
#define WK_NSEC_PER_SEC INT64_C(1000000000)
#define WK_MSEC(ms) ((wk_duration)(ms) * WK_NSEC_PER_MSEC)
#define WK_SEC(s) ((wk_duration)(s) * WK_NSEC_PER_SEC)
/* The far future: "no deadline". */
#define WK_TIME_NEVER INT64_MAX

/* A clock: now(arg) returns the current monotonic time. */
struct wk_clock {
    wk_time (*now)(void *arg);
    void *arg;
};

/* The process's CLOCK_MONOTONIC. */
extern const struct wk_clock wk_clock_monotonic;

/* Reads clock; a NULL clock reads wk_clock_monotonic. */
wk_time wk_clock_now(const struct wk_clock *clock);

/*
 * A clock that only moves when told to, for tests. Initialise it with
 * wk_manual_clock_init() and pass &manual->clock wherever a clock is taken.
 */
struct wk_manual_clock {
    struct wk_clock clock;
    _Atomic int64_t now;
};

void wk_manual_clock_init(struct wk_manual_clock *manual, wk_time start);
void wk_manual_clock_set(struct wk_manual_clock *manual, wk_time now);
void wk_manual_clock_advance(struct wk_manual_clock *manual, wk_duration by);

#endif /* WORKSHOP_CLOCK_H */
