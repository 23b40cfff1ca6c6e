/*
 * The monotonic clock and the manual clock used by tests.
 */
#include "workshop/clock.h"

#include <stdatomic.h>
#include <time.h>

static wk_time
monotonic_now(void *arg)
{
    struct timespec ts;

    (void)arg;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (wk_time)ts.tv_sec * WK_NSEC_PER_SEC + ts.tv_nsec;
}

const struct wk_clock wk_clock_monotonic = {.now = monotonic_now};

wk_time
wk_clock_now(const struct wk_clock *clock)
{
    if (clock == NULL || clock->now == NULL)
        return monotonic_now(NULL);
    return clock->now(clock->arg);
}

static wk_time
manual_now(void *arg)
{
    struct wk_manual_clock *manual = arg;

    return atomic_load_explicit(&manual->now, memory_order_acquire);
}

void
wk_manual_clock_init(struct wk_manual_clock *manual, wk_time start)
{
    manual->clock.now = manual_now;
    manual->clock.arg = manual;
    atomic_init(&manual->now, start);
}

void
wk_manual_clock_set(struct wk_manual_clock *manual, wk_time now)
{
    atomic_store_explicit(&manual->now, now, memory_order_release);
}

void
wk_manual_clock_advance(struct wk_manual_clock *manual, wk_duration by)
{
    atomic_fetch_add_explicit(&manual->now, by, memory_order_acq_rel);
}
