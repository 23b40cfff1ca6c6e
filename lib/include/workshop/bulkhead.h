/*
 * A bulkhead: at most max_concurrent calls at once, with an optional bounded
 * wait for a slot.
 *
 * Three ways in:
 *   - wk_bulkhead_try_acquire() takes a free slot or fails at once with
 *     WK_ERR_BULKHEAD_FULL; it never waits;
 *   - wk_bulkhead_acquire_async() takes a free slot, or queues a waiter (at
 *     most max_wait of them) whose callback runs when a released slot is
 *     handed to it, or with WK_ERR_BULKHEAD_FULL when max_wait_ms passes
 *     first (a timer on the caller's timer queue); no thread waits;
 *   - the middleware's before() blocks its thread in the queue for up to
 *     max_wait_ms, for library users who run calls on their own threads.
 * Every admitted call gives its slot back with wk_bulkhead_release(), which
 * hands it straight to the oldest waiter when there is one.
 *
 * Taking and releasing a slot when nobody waits is one atomic operation
 * each; the queue has a mutex that only waiters and the releases that serve
 * them take.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef WORKSHOP_BULKHEAD_H
#define WORKSHOP_BULKHEAD_H

#include <stdbool.h>
#include <stdint.h>

#include "workshop/clock.h"
#include "workshop/middleware.h"
#include "workshop/timer.h"

/*
 * Knobs and their ranges. The gateway's config validation uses the same
 * constants.
 *
 * max_concurrent: calls admitted at once. Default 64, range [1, 1000000].
 * max_wait: waiters queued at once; 0 means a full bulkhead rejects at
 *   once. Default 0, range [0, 1000000].
 * max_wait_ms: milliseconds a waiter waits before it is rejected; used only
 *   when max_wait > 0. Default 1000, range [1, 3600000].
 */
#define WK_BULKHEAD_DEFAULT_MAX_CONCURRENT 64
#define WK_BULKHEAD_MIN_MAX_CONCURRENT     1
#define WK_BULKHEAD_MAX_MAX_CONCURRENT     1000000
#define WK_BULKHEAD_DEFAULT_MAX_WAIT       0
#define WK_BULKHEAD_MIN_MAX_WAIT           0
#define WK_BULKHEAD_MAX_MAX_WAIT           1000000
#define WK_BULKHEAD_DEFAULT_MAX_WAIT_MS    1000
#define WK_BULKHEAD_MIN_MAX_WAIT_MS        1
#define WK_BULKHEAD_MAX_MAX_WAIT_MS        3600000

struct wk_bulkhead_config {
    uint32_t max_concurrent;
    uint32_t max_wait;
    uint32_t max_wait_ms;
};

#define WK_BULKHEAD_CONFIG_INIT                                                \
    {                                                                          \
        .max_concurrent = WK_BULKHEAD_DEFAULT_MAX_CONCURRENT,                  \
        .max_wait = WK_BULKHEAD_DEFAULT_MAX_WAIT,                              \
        .max_wait_ms = WK_BULKHEAD_DEFAULT_MAX_WAIT_MS,                        \
    }

/* Fills config with the defaults. */
void wk_bulkhead_config_init(struct wk_bulkhead_config *config);

/*
 * Checks every knob against its range. Returns WK_OK, or WK_ERR_INVALID and
 * sets *field (if not NULL) to the name of the first invalid knob.
 */
int wk_bulkhead_config_check(const struct wk_bulkhead_config *config,
                             const char **field);

struct wk_bulkhead;

/*
 * Creates a bulkhead. Returns WK_OK and sets *out, WK_ERR_INVALID when the
 * config fails wk_bulkhead_config_check(), or WK_ERR_NOMEM. The caller owns
 * it and frees it with wk_bulkhead_destroy().
 */
int wk_bulkhead_new(const struct wk_bulkhead_config *config,
                    struct wk_bulkhead **out)
    __attribute__((warn_unused_result));

/*
 * Frees the bulkhead and sets *bulkhead to NULL. No waiter may still be
 * queued. Safe on NULL.
 */
void wk_bulkhead_destroy(struct wk_bulkhead **bulkhead);

/* Takes a slot. Returns WK_OK, or WK_ERR_BULKHEAD_FULL without waiting. */
int wk_bulkhead_try_acquire(struct wk_bulkhead *bulkhead)
    __attribute__((warn_unused_result));

/*
 * Gives back the slot of an admitted call. When waiters are queued, the
 * slot goes to the oldest, whose callback runs on this thread before this
 * call returns (or on the timer thread if its timeout fired at the same
 * moment).
 */
void wk_bulkhead_release(struct wk_bulkhead *bulkhead);

/*
 * The end of a wait: err is WK_OK when the waiter now holds a slot (and must
 * release it), WK_ERR_BULKHEAD_FULL when max_wait_ms passed first, or
 * WK_ERR_CANCELLED after wk_bulkhead_cancel_wait().
 */
typedef void wk_bulkhead_admit_fn(void *arg, int err);

/*
 * A queued waiter. The caller owns its memory and keeps it valid from a
 * wk_bulkhead_acquire_async() that queued it until its callback has been
 * called. The bulkhead never touches it after calling the callback. The
 * fields are private.
 */
struct wk_bulkhead_waiter {
    struct wk_bulkhead_waiter *next;
    struct wk_bulkhead_waiter *prev;
    struct wk_bulkhead *bulkhead;
    struct wk_timer_queue *timers;
    struct wk_timer timer;
    wk_bulkhead_admit_fn *fn;
    void *arg;
    int state;
};

/*
 * Takes a slot, or queues waiter. Returns:
 *   - WK_OK with *queued false: a slot was free and is now the caller's;
 *     fn will not be called;
 *   - WK_OK with *queued true: the waiter is queued and fn(arg, err) will
 *     be called exactly once, from wk_bulkhead_release(), from the timer
 *     when max_wait_ms has passed since now, or from
 *     wk_bulkhead_cancel_wait();
 *   - WK_ERR_BULKHEAD_FULL: no slot and no room in the queue (or max_wait
 *     is 0); fn will not be called;
 *   - WK_ERR_NOMEM: the timeout timer could not be armed; nothing queued.
 * timers runs the timeout and must outlive the wait. With timers NULL the
 * waiter has no timeout: it waits until a slot frees or it is cancelled.
 */
int wk_bulkhead_acquire_async(struct wk_bulkhead *bulkhead,
                              struct wk_bulkhead_waiter *waiter,
                              struct wk_timer_queue *timers, wk_time now,
                              wk_bulkhead_admit_fn *fn, void *arg, bool *queued)
    __attribute__((warn_unused_result));

/*
 * Withdraws a queued waiter, for a caller that no longer needs the slot (a
 * client that went away). If the waiter is still queued its callback runs
 * with WK_ERR_CANCELLED, on this thread or on the timer thread if its
 * timeout fired at the same moment. If its callback already ran or is due
 * with another result, nothing changes; a callback that got WK_OK must still
 * release its slot.
 */
void wk_bulkhead_cancel_wait(struct wk_bulkhead *bulkhead,
                             struct wk_bulkhead_waiter *waiter);

struct wk_bulkhead_snapshot {
    uint32_t in_flight;  /* slots taken now */
    uint32_t waiting;    /* waiters queued now */
    uint64_t rejections; /* since creation, including wait timeouts */
    uint64_t timeouts;   /* waiters rejected when max_wait_ms passed */
};

/* Fills snap. Reads atomics only and never blocks callers. */
void wk_bulkhead_snapshot(struct wk_bulkhead *bulkhead,
                          struct wk_bulkhead_snapshot *snap);

/*
 * Returns a middleware over bulkhead. before() takes a slot; when none is
 * free and max_wait > 0 it blocks the calling thread in the queue for up to
 * max_wait_ms (measured on CLOCK_MONOTONIC, whatever clock now came from).
 * after() releases the slot. The middleware borrows bulkhead, which must
 * outlive it.
 */
struct wk_middleware wk_bulkhead_middleware(struct wk_bulkhead *bulkhead);

#endif /* WORKSHOP_BULKHEAD_H */
