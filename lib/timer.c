/*
 * The timer queue: a binary min-heap of timer pointers under one mutex,
 * ordered by (deadline, seq).
 *
 * Each timer stores its heap index, so cancelling is O(log n). The heap
 * array grows by doubling and never shrinks. wk_timer_run_due() unlinks all
 * due timers under the lock into a list threaded through the timers
 * themselves, then runs the callbacks without the lock. A timer on that list
 * is "firing": it is no longer in the heap, but it cannot be cancelled or
 * re-armed until the queue has let go of it just before its callback.
 */
#include "workshop/timer.h"

#include <pthread.h>
#include <stdlib.h>

#include "workshop/error.h"

#define INITIAL_CAPACITY 16
/* The slot of a firing timer: unlinked from the heap, callback not yet run. */
#define SLOT_FIRING SIZE_MAX

struct wk_timer_queue {
    pthread_mutex_t mu;
    struct wk_timer **heap;
    size_t count;
    size_t capacity;
    uint64_t next_seq;
    wk_timer_wake_fn *wake;
    void *wake_arg;
};

static bool
earlier(const struct wk_timer *a, const struct wk_timer *b)
{
    if (a->deadline != b->deadline)
        return a->deadline < b->deadline;
    return a->seq < b->seq;
}

static void
place(struct wk_timer_queue *q, size_t i, struct wk_timer *t)
{
    q->heap[i] = t;
    t->slot = i + 1;
}

static void
sift_up(struct wk_timer_queue *q, size_t i)
{
    struct wk_timer *t = q->heap[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;

        if (!earlier(t, q->heap[parent]))
            break;
        place(q, i, q->heap[parent]);
        i = parent;
    }
    place(q, i, t);
}

static void
sift_down(struct wk_timer_queue *q, size_t i)
{
    struct wk_timer *t = q->heap[i];

    for (;;) {
        size_t child = 2 * i + 1;

        if (child >= q->count)
            break;
        if (child + 1 < q->count && earlier(q->heap[child + 1], q->heap[child]))
            child++;
        if (!earlier(q->heap[child], t))
            break;
        place(q, i, q->heap[child]);
        i = child;
    }
    place(q, i, t);
}

/* Unlinks the timer at heap index i and leaves it idle. The caller has locked
 * mu. */
static void
remove_at_locked(struct wk_timer_queue *q, size_t i)
{
    struct wk_timer *t = q->heap[i];
    struct wk_timer *last = q->heap[--q->count];

    t->slot = 0;
    if (i == q->count)
        return;
    place(q, i, last);
    if (i > 0 && earlier(last, q->heap[(i - 1) / 2]))
        sift_up(q, i);
    else
        sift_down(q, i);
}

static bool
pending_here_locked(const struct wk_timer_queue *q, const struct wk_timer *t)
{
    return t->slot != 0 && t->slot <= q->count && q->heap[t->slot - 1] == t;
}

struct wk_timer_queue *
wk_timer_queue_new(wk_timer_wake_fn *wake, void *arg)
{
    struct wk_timer_queue *q = calloc(1, sizeof(*q));

    if (q == NULL)
        return NULL;
    q->heap = calloc(INITIAL_CAPACITY, sizeof(*q->heap));
    if (q->heap == NULL) {
        free(q);
        return NULL;
    }
    q->capacity = INITIAL_CAPACITY;
    q->wake = wake;
    q->wake_arg = arg;
    pthread_mutex_init(&q->mu, NULL);
    return q;
}

void
wk_timer_queue_destroy(struct wk_timer_queue **queue)
{
    struct wk_timer_queue *q = queue != NULL ? *queue : NULL;

    if (q == NULL)
        return;
    for (size_t i = 0; i < q->count; i++)
        q->heap[i]->slot = 0;
    pthread_mutex_destroy(&q->mu);
    free(q->heap);
    free(q);
    *queue = NULL;
}

static int
grow_locked(struct wk_timer_queue *q)
{
    if (q->capacity > SIZE_MAX / 2 / sizeof(*q->heap))
        return WK_ERR_NOMEM;

    size_t capacity = q->capacity * 2;
    struct wk_timer **heap = realloc(q->heap, capacity * sizeof(*heap));

    if (heap == NULL)
        return WK_ERR_NOMEM;
    q->heap = heap;
    q->capacity = capacity;
    return WK_OK;
}

int
wk_timer_add(struct wk_timer_queue *queue, struct wk_timer *timer,
             wk_time deadline, wk_timer_fn *fn, void *arg)
{
    int err = WK_ERR_INVALID;
    bool wake = false;

    if (fn == NULL)
        return WK_ERR_INVALID;
    pthread_mutex_lock(&queue->mu);
    if (timer->slot != 0)
        goto out;
    if (queue->count == queue->capacity) {
        err = grow_locked(queue);
        if (err != WK_OK)
            goto out;
    }
    timer->deadline = deadline;
    timer->seq = queue->next_seq++;
    timer->fn = fn;
    timer->arg = arg;
    timer->next = NULL;
    place(queue, queue->count++, timer);
    sift_up(queue, queue->count - 1);
    wake = queue->heap[0] == timer && queue->wake != NULL;
    err = WK_OK;
out:
    pthread_mutex_unlock(&queue->mu);
    if (wake)
        queue->wake(queue->wake_arg);
    return err;
}

bool
wk_timer_cancel(struct wk_timer_queue *queue, struct wk_timer *timer)
{
    bool cancelled = false;

    pthread_mutex_lock(&queue->mu);
    if (pending_here_locked(queue, timer)) {
        remove_at_locked(queue, timer->slot - 1);
        cancelled = true;
    }
    pthread_mutex_unlock(&queue->mu);
    return cancelled;
}

wk_time
wk_timer_next_deadline(struct wk_timer_queue *queue)
{
    wk_time next = WK_TIME_NEVER;

    pthread_mutex_lock(&queue->mu);
    if (queue->count > 0)
        next = queue->heap[0]->deadline;
    pthread_mutex_unlock(&queue->mu);
    return next;
}

/* Unlinks the due timers, earliest first, into a list. The caller has locked
 * mu. */
static struct wk_timer *
take_due_locked(struct wk_timer_queue *q, wk_time now)
{
    struct wk_timer *first = NULL;
    struct wk_timer **tail = &first;

    while (q->count > 0 && q->heap[0]->deadline <= now) {
        struct wk_timer *t = q->heap[0];

        remove_at_locked(q, 0);
        t->slot = SLOT_FIRING;
        t->next = NULL;
        *tail = t;
        tail = &t->next;
    }
    return first;
}

size_t
wk_timer_run_due(struct wk_timer_queue *queue, wk_time now)
{
    size_t ran = 0;

    pthread_mutex_lock(&queue->mu);
    struct wk_timer *t = take_due_locked(queue, now);
    pthread_mutex_unlock(&queue->mu);

    while (t != NULL) {
        /* Once idle, t may be re-armed or freed: read everything first. */
        struct wk_timer *next = t->next;
        wk_timer_fn *fn = t->fn;
        void *arg = t->arg;

        pthread_mutex_lock(&queue->mu);
        t->slot = 0;
        pthread_mutex_unlock(&queue->mu);
        fn(arg, now);
        ran++;
        t = next;
    }
    return ran;
}

size_t
wk_timer_count(struct wk_timer_queue *queue)
{
    pthread_mutex_lock(&queue->mu);
    size_t count = queue->count;
    pthread_mutex_unlock(&queue->mu);
    return count;
}
