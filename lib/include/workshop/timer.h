/*
 * A timer queue: a min-heap of deadlines with cancellable timers, driven by
 * an event loop. The queue has no thread of its own.
 *
 * The thread that owns the queue (the gateway's upstream loop, say) calls
 * wk_timer_next_deadline() to learn how long it may sleep, and calls
 * wk_timer_run_due() with the current time when it wakes. Due callbacks run
 * on that thread, in deadline order; timers with equal deadlines run in the
 * order they were added. Backoff delays and wait timeouts are timers, so no
 * thread ever sleeps to measure them.
 *
 * Timers are intrusive: the caller owns each struct wk_timer, usually inside
 * a larger object, and the queue only links it. Arming a timer allocates
 * nothing unless the heap has to grow.
 *
 * A timer's life: wk_timer_add() makes it pending. Then exactly one of two
 * things happens: wk_timer_cancel() returns true and the callback never runs,
 * or the callback runs once (and wk_timer_cancel() returns false). Until one
 * of these has happened the caller must keep the timer's memory alive. The
 * queue never touches a timer after calling its callback, so the callback may
 * free it.
 *
 * Thread safety: every function may be called from any thread, and callbacks
 * may add and cancel timers. The queue's lock is never held while a callback
 * or the wake hook runs. Functions that return int return WK_OK or a wk_err
 * code.
 */
#ifndef WORKSHOP_TIMER_H
#define WORKSHOP_TIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "workshop/clock.h"

/* A timer callback: runs once when the timer is due, with the loop's now. */
typedef void wk_timer_fn(void *arg, wk_time now);

/*
 * Called after wk_timer_add() made the earliest deadline earlier, so the
 * loop can wake and sleep less (curl_multi_wakeup(), an eventfd write).
 * Runs on the thread that added the timer.
 */
typedef void wk_timer_wake_fn(void *arg);

/*
 * A timer. The fields belong to the queue; a zeroed timer (or one set up
 * with WK_TIMER_INIT) is idle, and cancelling an idle timer is safe.
 */
struct wk_timer {
    wk_time deadline;
    uint64_t seq;          /* orders timers with equal deadlines */
    size_t slot;           /* heap index + 1 while pending, 0 otherwise */
    struct wk_timer *next; /* links the due timers of one run */
    wk_timer_fn *fn;
    void *arg;
};

#define WK_TIMER_INIT                                                          \
    {                                                                          \
        0                                                                      \
    }

struct wk_timer_queue;

/*
 * Creates an empty queue. wake may be NULL. Returns NULL when out of
 * memory. Release it with wk_timer_queue_destroy().
 */
struct wk_timer_queue *wk_timer_queue_new(wk_timer_wake_fn *wake, void *arg);

/*
 * Frees the queue and sets *queue to NULL. Timers still pending are dropped
 * without their callbacks and become idle. Must not run concurrently with
 * any other call on the queue. Safe on NULL.
 */
void wk_timer_queue_destroy(struct wk_timer_queue **queue);

/*
 * Arms timer to call fn(arg, now) once now >= deadline. Returns WK_OK,
 * WK_ERR_INVALID when timer is already pending (or firing) or fn is NULL,
 * or WK_ERR_NOMEM when the heap could not grow. On an error the timer stays
 * idle.
 */
int wk_timer_add(struct wk_timer_queue *queue, struct wk_timer *timer,
                 wk_time deadline, wk_timer_fn *fn, void *arg)
    __attribute__((warn_unused_result));

/*
 * Disarms timer. Returns true when it was pending in this queue, and then
 * its callback will never run. Returns false when it was idle, or when its
 * callback has run or is about to run.
 */
bool wk_timer_cancel(struct wk_timer_queue *queue, struct wk_timer *timer);

/* Returns the earliest pending deadline, or WK_TIME_NEVER when none. */
wk_time wk_timer_next_deadline(struct wk_timer_queue *queue);

/*
 * Runs the callbacks of every timer whose deadline is at or before now, and
 * returns how many ran. Timers that callbacks add with a deadline at or
 * before now run at the next call, so a timer that re-arms itself cannot
 * keep this call looping.
 */
size_t wk_timer_run_due(struct wk_timer_queue *queue, wk_time now);

/* Returns the number of pending timers. */
size_t wk_timer_count(struct wk_timer_queue *queue);

#endif /* WORKSHOP_TIMER_H */
