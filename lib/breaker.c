/*
 * The circuit breaker: one atomic state word and a ring of bucket counters.
 *
 * The state word packs the state, a generation that grows by one on every
 * transition, and in half-open state the number of probes admitted and the
 * number that succeeded. Every transition, and every probe admission, is one
 * compare-and-swap on that word, so exactly one thread wins each transition
 * (and reports it) and exactly half_open_requests probes get in.
 *
 * A permit remembers the state word it was admitted under. after() records an
 * outcome only while the generation is unchanged, so calls that straddle a
 * transition neither trip a breaker that has just closed nor count as probes.
 *
 * Bucket i of the ring counts the events of bucket number n (now divided by
 * the bucket width) with n % buckets == i, tagged with 2n. Beside the ring,
 * two packed window totals (calls and failed calls, calls and slow calls)
 * let every outcome be checked against the trip rules with one
 * fetch-and-add. The first writer of a new bucket number claims the bucket
 * by setting its tag odd, empties it and every expired bucket (taking their
 * counts off the totals), and only then publishes the even tag. Writers
 * that see an odd tag spin for those few stores. Readers never wait: they
 * check the tag before and after reading the counters.
 *
 * The time at which an open breaker turns half-open is published after the
 * transition to open, tagged with the generation. Until the tag matches,
 * readers treat the breaker as freshly opened.
 */
#include "workshop/breaker.h"

#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "workshop/error.h"
#include "workshop/ratelimit.h"

/* --- the state word ---------------------------------------------------- */

#define STATE_BITS      2
#define GEN_BITS        30
#define GEN_SHIFT       STATE_BITS
#define GEN_MASK        ((UINT64_C(1) << GEN_BITS) - 1)
#define ADMITTED_SHIFT  32
#define SUCCEEDED_SHIFT 48
#define COUNT_MASK      UINT64_C(0xffff)

_Static_assert(WK_BREAKER_MAX_HALF_OPEN_REQUESTS <= COUNT_MASK,
               "probe counts must fit their 16 bits of the state word");

static enum wk_breaker_state
word_state(uint64_t w)
{
    return (enum wk_breaker_state)(w & 3);
}

static uint64_t
word_gen(uint64_t w)
{
    return (w >> GEN_SHIFT) & GEN_MASK;
}

static uint32_t
word_admitted(uint64_t w)
{
    return (uint32_t)((w >> ADMITTED_SHIFT) & COUNT_MASK);
}

static uint32_t
word_succeeded(uint64_t w)
{
    return (uint32_t)((w >> SUCCEEDED_SHIFT) & COUNT_MASK);
}

static uint64_t
make_word(enum wk_breaker_state state, uint64_t gen, uint32_t admitted,
          uint32_t succeeded)
{
    return (uint64_t)state | (gen & GEN_MASK) << GEN_SHIFT |
           (uint64_t)admitted << ADMITTED_SHIFT |
           (uint64_t)succeeded << SUCCEEDED_SHIFT;
}

/* True when a and b are the same state of the same generation. */
static bool
same_phase(uint64_t a, uint64_t b)
{
    uint64_t mask = (GEN_MASK << GEN_SHIFT) | 3;

    return (a & mask) == (b & mask);
}

/* --- the breaker ------------------------------------------------------- */

enum counter {
    C_SUCCESS,
    C_FAILURE,
    C_TIMEOUT,
    C_SLOW,
    C_REJECTED,
    C_COUNT,
};

/* A tag no bucket number produces: the bucket is empty. */
#define TAG_EMPTY INT64_C(-2)

struct bucket {
    _Atomic int64_t tag; /* 2n for bucket number n; odd while being drained */
    _Atomic uint64_t count[C_COUNT];
};

enum outcome {
    OUTCOME_SUCCESS,
    OUTCOME_FAILURE,
    OUTCOME_TIMEOUT,
    OUTCOME_IGNORED,
};

struct wk_breaker {
    _Alignas(64) _Atomic uint64_t state;
    _Atomic int64_t open_until;
    _Atomic uint64_t open_gen; /* the generation open_until belongs to */
    /* Window totals packed by pack(): calls and failed (failures plus
     * timeouts), and calls and slow calls. */
    _Alignas(64) _Atomic uint64_t window_failed;
    _Atomic uint64_t window_slow;
    _Atomic uint64_t consecutive;
    struct wk_token_bucket failure_bucket;
    _Atomic uint64_t rejections_total;
    _Atomic uint64_t transitions_total;

    /* Read-only after creation. */
    _Alignas(64) enum wk_breaker_trip trip;
    bool track_failed; /* window_failed is kept (error-percent rule) */
    bool track_slow;   /* window_slow is kept (slow_call_ms set) */
    wk_duration bucket_width;
    uint32_t bucket_count;
    uint32_t min_requests;
    uint32_t error_percent;
    uint32_t consecutive_failures;
    wk_duration slow_call;
    uint32_t slow_percent;
    wk_duration open_for;
    uint32_t half_open_requests;
    wk_breaker_transition_fn *on_transition;
    void *on_transition_arg;
    char *name;
    struct bucket *buckets;
};

/* --- buckets ----------------------------------------------------------- */

/*
 * Packs a call count and a part of it (failed or slow calls) into one word,
 * so one fetch-and-add updates both and returns both.
 * NOTE: each half wraps past 2^32 calls in one window (over 400 million
 * calls a second with a 10 s window).
 */
static uint64_t
pack(uint64_t calls, uint64_t part)
{
    return calls + (part << 32);
}

static uint64_t
packed_calls(uint64_t v)
{
    return v & UINT32_MAX;
}

static uint64_t
packed_part(uint64_t v)
{
    return v >> 32;
}

/*
 * Waits a moment for another thread to finish a few stores. Yields the CPU
 * now and then, in case that thread was preempted halfway.
 */
static void
spin_wait(unsigned *spins)
{
    if (++*spins % 64 == 0)
        sched_yield();
}

static int64_t
bucket_number(const struct wk_breaker *b, wk_time now)
{
    return (now > 0 ? now : 0) / b->bucket_width;
}

/* Adds one outcome to the window totals; returns them with it included. */
static void
add_to_totals(struct wk_breaker *b, bool failed, bool slow,
              uint64_t *failed_totals, uint64_t *slow_totals)
{
    if (b->track_failed) {
        uint64_t add = pack(1, failed);

        *failed_totals = atomic_fetch_add_explicit(&b->window_failed, add,
                                                   memory_order_relaxed) +
                         add;
    }
    if (b->track_slow) {
        uint64_t add = pack(1, slow);

        *slow_totals = atomic_fetch_add_explicit(&b->window_slow, add,
                                                 memory_order_relaxed) +
                       add;
    }
}

/*
 * Claims bk, whose tag was seen, empties its counters and takes them off the
 * window totals, then tags it next. Other threads spin while it is claimed.
 * Returns false when another thread changed the tag first.
 */
static bool
drain_begin(struct wk_breaker *b, struct bucket *bk, int64_t seen)
{
    if (!atomic_compare_exchange_strong_explicit(&bk->tag, &seen, seen + 1,
                                                 memory_order_acquire,
                                                 memory_order_relaxed))
        return false;

    uint64_t v[C_COUNT];

    for (int c = 0; c < C_COUNT; c++)
        v[c] = atomic_exchange_explicit(&bk->count[c], 0, memory_order_relaxed);

    uint64_t calls = v[C_SUCCESS] + v[C_FAILURE] + v[C_TIMEOUT];

    if (b->track_failed)
        atomic_fetch_sub_explicit(&b->window_failed,
                                  pack(calls, v[C_FAILURE] + v[C_TIMEOUT]),
                                  memory_order_relaxed);
    if (b->track_slow)
        atomic_fetch_sub_explicit(&b->window_slow, pack(calls, v[C_SLOW]),
                                  memory_order_relaxed);
    return true;
}

static void
drain_end(struct bucket *bk, int64_t next)
{
    atomic_store_explicit(&bk->tag, next, memory_order_release);
}

/*
 * Empties every bucket tagged with a number older than the window ending
 * with bucket number n, or leftovers of a reset. Buckets other threads are
 * draining are theirs to finish.
 */
static void
sweep_expired(struct wk_breaker *b, int64_t n)
{
    for (uint32_t i = 0; i < b->bucket_count; i++) {
        struct bucket *bk = &b->buckets[i];
        int64_t tag = atomic_load_explicit(&bk->tag, memory_order_acquire);

        if ((tag & 1) || (tag != TAG_EMPTY && tag / 2 > n - b->bucket_count))
            continue;
        if (drain_begin(b, bk, tag))
            drain_end(bk, TAG_EMPTY);
    }
}

/*
 * Returns the bucket that counts events at now. The first caller of a new
 * bucket number claims the bucket, empties it and every expired bucket, and
 * only then publishes it, so the window totals never include an expired
 * bucket once the bucket for now is visible. A caller whose now lags behind
 * another thread's gets the newer bucket if its own was reused.
 */
static struct bucket *
bucket_at(struct wk_breaker *b, wk_time now)
{
    int64_t n = bucket_number(b, now);
    struct bucket *bk = &b->buckets[n % b->bucket_count];
    int64_t want = 2 * n;
    unsigned spins = 0;

    for (;;) {
        int64_t tag = atomic_load_explicit(&bk->tag, memory_order_acquire);

        if (tag >= want && (tag & 1) == 0)
            return bk;
        if (tag & 1) {
            spin_wait(&spins); /* another thread is draining it */
            continue;
        }
        if (drain_begin(b, bk, tag)) {
            sweep_expired(b, n);
            drain_end(bk, want);
            return bk;
        }
    }
}

static void
count_event(struct bucket *bk, enum counter c)
{
    atomic_fetch_add_explicit(&bk->count[c], 1, memory_order_relaxed);
}

static void
counts_add(struct wk_breaker_counts *sum, const uint64_t c[C_COUNT])
{
    sum->successes += c[C_SUCCESS];
    sum->failures += c[C_FAILURE];
    sum->timeouts += c[C_TIMEOUT];
    sum->slow_calls += c[C_SLOW];
    sum->rejections += c[C_REJECTED];
}

/*
 * Reads the counts of bucket number n into c. Returns false, leaving c
 * zeroed, when the bucket is tagged with another number or was drained
 * meanwhile.
 */
static bool
read_bucket(const struct wk_breaker *b, int64_t n, uint64_t c[C_COUNT])
{
    memset(c, 0, C_COUNT * sizeof(c[0]));
    if (n < 0)
        return false; /* before time 0: a window that starts near boot */

    struct bucket *bk = &b->buckets[n % b->bucket_count];
    int64_t tag = atomic_load_explicit(&bk->tag, memory_order_acquire);

    if (tag != 2 * n)
        return false;
    for (int i = 0; i < C_COUNT; i++)
        c[i] = atomic_load_explicit(&bk->count[i], memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&bk->tag, memory_order_relaxed) != tag) {
        memset(c, 0, C_COUNT * sizeof(c[0]));
        return false;
    }
    return true;
}

/* Sums the window that ends with the bucket containing now. */
static void
window_counts(const struct wk_breaker *b, wk_time now,
              struct wk_breaker_counts *sum)
{
    int64_t last = bucket_number(b, now);
    uint64_t c[C_COUNT];

    memset(sum, 0, sizeof(*sum));
    for (int64_t n = last - b->bucket_count + 1; n <= last; n++) {
        if (read_bucket(b, n, c))
            counts_add(sum, c);
    }
}

/* Empties every bucket and so the window totals. */
static void
window_reset(struct wk_breaker *b)
{
    for (uint32_t i = 0; i < b->bucket_count; i++) {
        struct bucket *bk = &b->buckets[i];
        unsigned spins = 0;

        for (;;) {
            int64_t tag = atomic_load_explicit(&bk->tag, memory_order_acquire);

            if ((tag & 1) == 0 && drain_begin(b, bk, tag)) {
                drain_end(bk, TAG_EMPTY);
                break;
            }
            spin_wait(&spins);
        }
    }
}

/* --- transitions ------------------------------------------------------- */

static void
report(struct wk_breaker *b, uint64_t from, uint64_t to,
       enum wk_breaker_reason reason, wk_time now,
       const struct wk_breaker_counts *window)
{
    atomic_fetch_add_explicit(&b->transitions_total, 1, memory_order_relaxed);
    if (b->on_transition == NULL)
        return;

    struct wk_breaker_transition t = {
        .key = b->name,
        .from = word_state(from),
        .to = word_state(to),
        .reason = reason,
        .at = now,
        .generation = word_gen(to),
        .consecutive_failures =
            atomic_load_explicit(&b->consecutive, memory_order_relaxed),
        .open_for = word_state(to) == WK_BREAKER_OPEN ? b->open_for : 0,
    };

    if (window != NULL)
        t.window = *window;
    b->on_transition(b->on_transition_arg, &t);
}

/*
 * Moves the breaker from the state word seen to open. Returns false when
 * another thread changed the state first.
 */
static bool
open_from(struct wk_breaker *b, uint64_t seen, enum wk_breaker_reason reason,
          wk_time now, const struct wk_breaker_counts *window)
{
    uint64_t gen = word_gen(seen) + 1;
    uint64_t next = make_word(WK_BREAKER_OPEN, gen, 0, 0);

    if (!atomic_compare_exchange_strong_explicit(
            &b->state, &seen, next, memory_order_acq_rel, memory_order_relaxed))
        return false;
    atomic_store_explicit(&b->open_until, now + b->open_for,
                          memory_order_relaxed);
    atomic_store_explicit(&b->open_gen, gen & GEN_MASK, memory_order_release);
    report(b, seen, next, reason, now, window);
    return true;
}

/*
 * Returns when the breaker, open in generation gen, turns half-open. While
 * the thread that opened it has not yet published the time, that is a full
 * open period from now.
 */
static wk_time
open_until(const struct wk_breaker *b, uint64_t gen, wk_time now)
{
    if (atomic_load_explicit(&b->open_gen, memory_order_acquire) != gen)
        return now + b->open_for;
    return atomic_load_explicit(&b->open_until, memory_order_relaxed);
}

/* Clears what a closed breaker decides on, so it closes with a clean slate. */
static void
clear_evidence(struct wk_breaker *b)
{
    window_reset(b);
    atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
    wk_token_bucket_fill(&b->failure_bucket);
}

/* --- admission --------------------------------------------------------- */

static void
reject(struct wk_breaker *b, wk_time now, struct wk_breaker_permit *permit,
       wk_duration retry_after)
{
    count_event(bucket_at(b, now), C_REJECTED);
    atomic_fetch_add_explicit(&b->rejections_total, 1, memory_order_relaxed);
    permit->retry_after = retry_after;
}

/* Turns an elapsed open breaker half-open and takes the first probe. */
static bool
half_open_from(struct wk_breaker *b, uint64_t *seen, wk_time now)
{
    uint64_t next = make_word(WK_BREAKER_HALF_OPEN, word_gen(*seen) + 1, 1, 0);
    uint64_t from = *seen;

    if (!atomic_compare_exchange_weak_explicit(
            &b->state, seen, next, memory_order_acq_rel, memory_order_acquire))
        return false;
    report(b, from, next, WK_BREAKER_REASON_OPEN_ELAPSED, now, NULL);
    *seen = next;
    return true;
}

int
wk_breaker_before(struct wk_breaker *breaker, wk_time now,
                  struct wk_breaker_permit *permit)
{
    uint64_t w = atomic_load_explicit(&breaker->state, memory_order_acquire);

    permit->retry_after = 0;
    for (;;) {
        switch (word_state(w)) {
        case WK_BREAKER_CLOSED:
            permit->state = w;
            return WK_OK;
        case WK_BREAKER_OPEN: {
            wk_time until = open_until(breaker, word_gen(w), now);

            if (now < until) {
                reject(breaker, now, permit, until - now);
                return WK_ERR_BREAKER_OPEN;
            }
            if (half_open_from(breaker, &w, now)) {
                permit->state = w;
                return WK_OK;
            }
            break; /* w was reloaded: look again */
        }
        case WK_BREAKER_HALF_OPEN: {
            if (word_admitted(w) >= breaker->half_open_requests) {
                reject(breaker, now, permit, 0);
                return WK_ERR_BREAKER_OPEN;
            }

            uint64_t next = w + (UINT64_C(1) << ADMITTED_SHIFT);

            if (atomic_compare_exchange_weak_explicit(&breaker->state, &w, next,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire)) {
                permit->state = next;
                return WK_OK;
            }
            break;
        }
        }
    }
}

/* --- outcomes ---------------------------------------------------------- */

static enum outcome
classify(int err)
{
    switch (err) {
    case WK_OK:
        return OUTCOME_SUCCESS;
    case WK_ERR_TIMED_OUT:
        return OUTCOME_TIMEOUT;
    case WK_ERR_BREAKER_OPEN:
    case WK_ERR_RATE_LIMITED:
    case WK_ERR_BULKHEAD_FULL:
    case WK_ERR_REJECTED:
    case WK_ERR_CANCELLED:
        return OUTCOME_IGNORED;
    default:
        return OUTCOME_FAILURE;
    }
}

static enum counter
counter_of(enum outcome outcome)
{
    if (outcome == OUTCOME_SUCCESS)
        return C_SUCCESS;
    if (outcome == OUTCOME_TIMEOUT)
        return C_TIMEOUT;
    return C_FAILURE;
}

/* Gives back the probe slot of a probe whose outcome does not count. */
static void
release_probe(struct wk_breaker *b, uint64_t permit)
{
    uint64_t w = atomic_load_explicit(&b->state, memory_order_acquire);

    while (same_phase(w, permit) && word_admitted(w) > 0) {
        uint64_t next = w - (UINT64_C(1) << ADMITTED_SHIFT);

        if (atomic_compare_exchange_weak_explicit(&b->state, &w, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire))
            return;
    }
}

/*
 * Settles one probe: a failure reopens the breaker, the last of
 * half_open_requests successes closes it.
 */
static void
probe_done(struct wk_breaker *b, uint64_t permit, bool failed, wk_time now)
{
    uint64_t w = atomic_load_explicit(&b->state, memory_order_acquire);

    while (same_phase(w, permit)) {
        if (failed) {
            if (open_from(b, w, WK_BREAKER_REASON_PROBE_FAILED, now, NULL))
                return;
            w = atomic_load_explicit(&b->state, memory_order_acquire);
            continue;
        }

        uint32_t succeeded = word_succeeded(w) + 1;
        uint64_t next;

        if (succeeded < b->half_open_requests) {
            next = w + (UINT64_C(1) << SUCCEEDED_SHIFT);
        } else {
            /* Cleared first, so a closed breaker never counts old outcomes. */
            clear_evidence(b);
            next = make_word(WK_BREAKER_CLOSED, word_gen(w) + 1, 0, 0);
        }
        if (atomic_compare_exchange_weak_explicit(&b->state, &w, next,
                                                  memory_order_acq_rel,
                                                  memory_order_acquire)) {
            if (word_state(next) == WK_BREAKER_CLOSED)
                report(b, w, next, WK_BREAKER_REASON_PROBES_SUCCEEDED, now,
                       NULL);
            return;
        }
    }
}

static bool
share_reached(uint64_t part, uint64_t calls, uint32_t min_calls,
              uint32_t percent)
{
    return calls >= min_calls && part * 100 >= (uint64_t)percent * calls;
}

/* Trips the breaker from closed state seen, with the window as evidence. */
static void
trip(struct wk_breaker *b, uint64_t seen, enum wk_breaker_reason reason,
     wk_time now)
{
    struct wk_breaker_counts window;

    window_counts(b, now, &window);
    open_from(b, seen, reason, now, &window);
}

/*
 * Decides whether the breaker, closed in state seen, trips after an outcome
 * that left the window totals at failed_totals and slow_totals (packed).
 * consecutive is the current run of failures, 0 after a success.
 */
static void
check_trip(struct wk_breaker *b, uint64_t seen, bool failed,
           uint64_t failed_totals, uint64_t slow_totals, uint64_t consecutive,
           wk_time now)
{
    if (b->track_slow &&
        share_reached(packed_part(slow_totals), packed_calls(slow_totals),
                      b->min_requests, b->slow_percent)) {
        trip(b, seen, WK_BREAKER_REASON_SLOW_CALLS, now);
        return;
    }
    switch (b->trip) {
    case WK_BREAKER_TRIP_ERROR_PERCENT:
        /* Checked after successes too: the 20th call may tip the count. */
        if (share_reached(packed_part(failed_totals),
                          packed_calls(failed_totals), b->min_requests,
                          b->error_percent))
            trip(b, seen, WK_BREAKER_REASON_ERROR_PERCENT, now);
        break;
    case WK_BREAKER_TRIP_CONSECUTIVE:
        if (failed && consecutive >= b->consecutive_failures)
            trip(b, seen, WK_BREAKER_REASON_CONSECUTIVE_FAILURES, now);
        break;
    case WK_BREAKER_TRIP_FAILURE_RATE:
        if (failed &&
            wk_token_bucket_take(&b->failure_bucket, now, NULL) != WK_OK)
            trip(b, seen, WK_BREAKER_REASON_FAILURE_RATE, now);
        break;
    }
}

/* Counts a success in the run of consecutive failures: it ends the run. */
static void
end_failure_run(struct wk_breaker *b)
{
    /* Load first, so a healthy breaker does not write the shared line. */
    if (atomic_load_explicit(&b->consecutive, memory_order_relaxed) != 0)
        atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
}

void
wk_breaker_after(struct wk_breaker *breaker,
                 const struct wk_breaker_permit *permit, int err,
                 wk_duration latency, wk_time now)
{
    struct wk_breaker *b = breaker;
    enum outcome outcome = classify(err);
    bool probe = word_state(permit->state) == WK_BREAKER_HALF_OPEN;

    if (outcome == OUTCOME_IGNORED) {
        if (probe)
            release_probe(b, permit->state);
        return;
    }

    uint64_t w = atomic_load_explicit(&b->state, memory_order_acquire);

    if (!same_phase(w, permit->state))
        return; /* admitted before the latest transition */

    bool failed = outcome != OUTCOME_SUCCESS;
    bool slow = b->slow_call > 0 && latency >= b->slow_call;
    struct bucket *bk = bucket_at(b, now);
    uint64_t failed_totals = 0;
    uint64_t slow_totals = 0;

    /* Totals first, so a drain racing with us cannot take them below 0. */
    add_to_totals(b, failed, slow, &failed_totals, &slow_totals);
    count_event(bk, counter_of(outcome));
    if (slow)
        count_event(bk, C_SLOW);

    if (probe) {
        probe_done(b, permit->state, failed || slow, now);
        return;
    }

    uint64_t consecutive = 0;

    if (failed)
        consecutive = atomic_fetch_add_explicit(&b->consecutive, 1,
                                                memory_order_relaxed) +
                      1;
    else
        end_failure_run(b);
    check_trip(b, w, failed, failed_totals, slow_totals, consecutive, now);
}

/* --- snapshot ---------------------------------------------------------- */

void
wk_breaker_snapshot(struct wk_breaker *breaker, wk_time now,
                    struct wk_breaker_snapshot *snap)
{
    struct wk_breaker *b = breaker;
    uint64_t w = atomic_load_explicit(&b->state, memory_order_acquire);
    int64_t last = bucket_number(b, now);
    uint64_t c[C_COUNT];

    memset(snap, 0, sizeof(*snap));
    snap->state = word_state(w);
    snap->generation = word_gen(w);
    if (snap->state == WK_BREAKER_OPEN) {
        wk_time until = open_until(b, word_gen(w), now);

        snap->open_remaining = until > now ? until - now : 0;
    } else if (snap->state == WK_BREAKER_HALF_OPEN) {
        snap->probes_admitted = word_admitted(w);
    }
    snap->consecutive_failures =
        atomic_load_explicit(&b->consecutive, memory_order_relaxed);
    snap->bucket_count = b->bucket_count;
    snap->bucket_width = b->bucket_width;
    for (uint32_t i = 0; i < b->bucket_count; i++) {
        read_bucket(b, last - b->bucket_count + 1 + i, c);
        counts_add(&snap->buckets[i], c);
        counts_add(&snap->window, c);
    }
    snap->rejections_total =
        atomic_load_explicit(&b->rejections_total, memory_order_relaxed);
    snap->transitions_total =
        atomic_load_explicit(&b->transitions_total, memory_order_relaxed);
}

/* --- configuration and life cycle -------------------------------------- */

void
wk_breaker_config_init(struct wk_breaker_config *config)
{
    *config = (struct wk_breaker_config)WK_BREAKER_CONFIG_INIT;
}

static bool
in_range(uint32_t v, uint32_t min, uint32_t max)
{
    return v >= min && v <= max;
}

/* Returns the name of the first knob out of its range, or NULL. */
static const char *
first_invalid(const struct wk_breaker_config *c)
{
    if (c->trip != WK_BREAKER_TRIP_ERROR_PERCENT &&
        c->trip != WK_BREAKER_TRIP_CONSECUTIVE &&
        c->trip != WK_BREAKER_TRIP_FAILURE_RATE)
        return "trip";
    if (!in_range(c->window_ms, WK_BREAKER_MIN_WINDOW_MS,
                  WK_BREAKER_MAX_WINDOW_MS))
        return "window_ms";
    if (!in_range(c->buckets, WK_BREAKER_MIN_BUCKETS, WK_BREAKER_MAX_BUCKETS))
        return "buckets";
    if (c->window_ms % c->buckets != 0)
        return "window_ms";
    if (!in_range(c->min_requests, WK_BREAKER_MIN_MIN_REQUESTS,
                  WK_BREAKER_MAX_MIN_REQUESTS))
        return "min_requests";
    if (!in_range(c->error_percent, WK_BREAKER_MIN_ERROR_PERCENT,
                  WK_BREAKER_MAX_ERROR_PERCENT))
        return "error_percent";
    if (!in_range(c->consecutive_failures, WK_BREAKER_MIN_CONSECUTIVE_FAILURES,
                  WK_BREAKER_MAX_CONSECUTIVE_FAILURES))
        return "consecutive_failures";
    if (!(c->failures_per_second >= WK_BREAKER_MIN_FAILURES_PER_SECOND &&
          c->failures_per_second <= WK_BREAKER_MAX_FAILURES_PER_SECOND))
        return "failures_per_second";
    if (!in_range(c->burst, WK_BREAKER_MIN_BURST, WK_BREAKER_MAX_BURST))
        return "burst";
    if (!in_range(c->slow_call_ms, WK_BREAKER_MIN_SLOW_CALL_MS,
                  WK_BREAKER_MAX_SLOW_CALL_MS))
        return "slow_call_ms";
    if (!in_range(c->slow_percent, WK_BREAKER_MIN_SLOW_PERCENT,
                  WK_BREAKER_MAX_SLOW_PERCENT))
        return "slow_percent";
    if (!in_range(c->open_ms, WK_BREAKER_MIN_OPEN_MS, WK_BREAKER_MAX_OPEN_MS))
        return "open_ms";
    if (!in_range(c->half_open_requests, WK_BREAKER_MIN_HALF_OPEN_REQUESTS,
                  WK_BREAKER_MAX_HALF_OPEN_REQUESTS))
        return "half_open_requests";
    return NULL;
}

int
wk_breaker_config_check(const struct wk_breaker_config *config,
                        const char **field)
{
    const char *bad = first_invalid(config);

    if (field != NULL)
        *field = bad;
    return bad == NULL ? WK_OK : WK_ERR_INVALID;
}

static char *
copy_name(const char *name)
{
    size_t len = name != NULL ? strnlen(name, WK_BREAKER_MAX_NAME_BYTES) : 0;
    char *copy = malloc(len + 1);

    if (copy != NULL) {
        if (len > 0)
            memcpy(copy, name, len);
        copy[len] = '\0';
    }
    return copy;
}

static void
apply_config(struct wk_breaker *b, const struct wk_breaker_config *c)
{
    b->trip = c->trip;
    b->track_failed = c->trip == WK_BREAKER_TRIP_ERROR_PERCENT;
    b->track_slow = c->slow_call_ms > 0;
    b->bucket_count = c->buckets;
    b->bucket_width = WK_MSEC(c->window_ms) / c->buckets;
    b->min_requests = c->min_requests;
    b->error_percent = c->error_percent;
    b->consecutive_failures = c->consecutive_failures;
    b->slow_call = WK_MSEC(c->slow_call_ms);
    b->slow_percent = c->slow_percent;
    b->open_for = WK_MSEC(c->open_ms);
    b->half_open_requests = c->half_open_requests;
    b->on_transition = c->on_transition;
    b->on_transition_arg = c->on_transition_arg;
}

int
wk_breaker_new(const struct wk_breaker_config *config, struct wk_breaker **out)
{
    int err = wk_breaker_config_check(config, NULL);
    struct wk_breaker *b = NULL;

    *out = NULL;
    if (err != WK_OK)
        goto out;
    err = WK_ERR_NOMEM;
    b = aligned_alloc(64, (sizeof(*b) + 63) / 64 * 64);
    if (b == NULL)
        goto out;
    memset(b, 0, sizeof(*b));
    apply_config(b, config);
    b->name = copy_name(config->name);
    b->buckets = calloc(config->buckets, sizeof(*b->buckets));
    if (b->name == NULL || b->buckets == NULL)
        goto out;
    err = wk_token_bucket_init(&b->failure_bucket, config->failures_per_second,
                               config->burst);
    if (err != WK_OK)
        goto out;
    window_reset(b);
    atomic_init(&b->open_gen, UINT64_MAX);
    *out = b;
    b = NULL;
out:
    wk_breaker_destroy(&b);
    return err;
}

void
wk_breaker_destroy(struct wk_breaker **breaker)
{
    struct wk_breaker *b = breaker != NULL ? *breaker : NULL;

    if (b == NULL)
        return;
    free(b->buckets);
    free(b->name);
    free(b);
    *breaker = NULL;
}

/* --- names and middleware ---------------------------------------------- */

const char *
wk_breaker_state_name(enum wk_breaker_state state)
{
    switch (state) {
    case WK_BREAKER_CLOSED:
        return "closed";
    case WK_BREAKER_OPEN:
        return "open";
    case WK_BREAKER_HALF_OPEN:
        return "half-open";
    }
    return "unknown";
}

const char *
wk_breaker_reason_name(enum wk_breaker_reason reason)
{
    switch (reason) {
    case WK_BREAKER_REASON_ERROR_PERCENT:
        return "error percent";
    case WK_BREAKER_REASON_CONSECUTIVE_FAILURES:
        return "consecutive failures";
    case WK_BREAKER_REASON_FAILURE_RATE:
        return "failure rate";
    case WK_BREAKER_REASON_SLOW_CALLS:
        return "slow calls";
    case WK_BREAKER_REASON_OPEN_ELAPSED:
        return "open period elapsed";
    case WK_BREAKER_REASON_PROBES_SUCCEEDED:
        return "probes succeeded";
    case WK_BREAKER_REASON_PROBE_FAILED:
        return "probe failed";
    }
    return "unknown";
}

/*
 * The middleware's token carries the permit's state word. The state and the
 * generation sit in its low 32 bits, which is all after() compares, so a
 * 32-bit pointer is wide enough.
 */
static int
mw_before(void *self, const char *key, wk_time now, void **token)
{
    struct wk_breaker_permit permit;
    int err = wk_breaker_before(self, now, &permit);

    (void)key;
    if (err == WK_OK)
        *token = (void *)(uintptr_t)permit.state;
    return err;
}

static void
mw_after(void *self, const char *key, void *token, int err, wk_duration latency,
         wk_time now)
{
    struct wk_breaker_permit permit = {.state = (uintptr_t)token};

    (void)key;
    wk_breaker_after(self, &permit, err, latency, now);
}

static const struct wk_middleware_ops breaker_ops = {
    .name = "breaker",
    .before = mw_before,
    .after = mw_after,
};

struct wk_middleware
wk_breaker_middleware(struct wk_breaker *breaker)
{
    return (struct wk_middleware){.ops = &breaker_ops, .self = breaker};
}
