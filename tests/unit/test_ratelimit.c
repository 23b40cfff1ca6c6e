/*
 * Rate limiter tests: token bucket scenarios on a manual clock, the keyed
 * table's bounds, eviction and expiry, config checks, the middleware, and
 * threads racing on one bucket with a frozen clock.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workshop/error.h"
#include "workshop/ratelimit.h"

#define T0 WK_SEC(1000)

/* --- token bucket scenarios --------------------------------------------- */

struct take {
    wk_duration at;   /* since T0 */
    int count;        /* takes at that time */
    int admitted;     /* how many of them must be admitted */
    wk_duration wait; /* the wait of the last rejection; -1: don't check */
};

struct bucket_case {
    const char *name;
    double rate;
    uint32_t burst;
    struct take takes[6];
};

static const struct bucket_case bucket_cases[] = {
    {"a full bucket admits burst calls, then rejects",
     10,
     5,
     {{0, 6, 5, WK_MSEC(100)}}},
    {"a token comes back after 1/rate",
     10,
     5,
     {{0, 6, 5, WK_MSEC(100)},
      {WK_MSEC(99), 1, 0, WK_MSEC(1)},
      {WK_MSEC(100), 2, 1, WK_MSEC(100)}}},
    {"an idle bucket never holds more than burst",
     10,
     5,
     {{0, 1, 1, -1}, {WK_SEC(60), 6, 5, WK_MSEC(100)}}},
    {"a rate under one per second waits whole seconds",
     0.5,
     1,
     {{0, 2, 1, WK_SEC(2)}, {WK_SEC(2), 2, 1, WK_SEC(2)}}},
    {"burst 1 admits one call per interval",
     1000,
     1,
     {{0, 3, 1, WK_MSEC(1)}, {WK_MSEC(1), 3, 1, WK_MSEC(1)}}},
    {"half an interval later the wait is half as long",
     4,
     2,
     {{0, 3, 2, WK_MSEC(250)}, {WK_MSEC(125), 1, 0, WK_MSEC(125)}}},
};

static void
test_bucket_scenarios(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bucket_cases) / sizeof(bucket_cases[0]);
         i++) {
        const struct bucket_case *bc = &bucket_cases[i];
        struct wk_token_bucket bucket;

        assert_int_equal(wk_token_bucket_init(&bucket, bc->rate, bc->burst),
                         WK_OK);
        for (const struct take *t = bc->takes; t->count > 0; t++) {
            int admitted = 0;
            wk_duration wait = -1;

            for (int k = 0; k < t->count; k++) {
                if (wk_token_bucket_take(&bucket, T0 + t->at, &wait) == WK_OK)
                    admitted++;
            }
            if (admitted != t->admitted)
                fail_msg("%s: %d of %d admitted at +%lld ns, expected %d",
                         bc->name, admitted, t->count, (long long)t->at,
                         t->admitted);
            if (t->wait >= 0 && wait != t->wait)
                fail_msg("%s: wait %lld ns, expected %lld", bc->name,
                         (long long)wait, (long long)t->wait);
        }
    }
}

static void
test_bucket_tokens_and_fill(void **state)
{
    struct wk_token_bucket bucket;

    (void)state;
    assert_int_equal(wk_token_bucket_init(&bucket, 10, 5), WK_OK);
    assert_int_equal(wk_token_bucket_tokens(&bucket, T0), 5);
    for (int i = 0; i < 3; i++)
        assert_int_equal(wk_token_bucket_take(&bucket, T0, NULL), WK_OK);
    assert_int_equal(wk_token_bucket_tokens(&bucket, T0), 2);
    assert_int_equal(wk_token_bucket_tokens(&bucket, T0 + WK_MSEC(199)), 3);
    assert_int_equal(wk_token_bucket_tokens(&bucket, T0 + WK_MSEC(200)), 4);
    assert_int_equal(wk_token_bucket_tokens(&bucket, T0 + WK_SEC(9)), 5);
    wk_token_bucket_fill(&bucket);
    assert_int_equal(wk_token_bucket_tokens(&bucket, T0), 5);
}

static void
test_bucket_rejects_bad_rates(void **state)
{
    struct wk_token_bucket bucket;

    (void)state;
    assert_int_equal(wk_token_bucket_init(&bucket, 0, 5), WK_ERR_INVALID);
    assert_int_equal(wk_token_bucket_init(&bucket, -1, 5), WK_ERR_INVALID);
    assert_int_equal(wk_token_bucket_init(&bucket, 0.0 / 0.0, 5),
                     WK_ERR_INVALID);
    assert_int_equal(wk_token_bucket_init(&bucket, 10, 0), WK_ERR_INVALID);
    assert_int_equal(
        wk_token_bucket_init(&bucket, WK_RATELIMIT_MAX_RATE * 2, 1),
        WK_ERR_INVALID);
    assert_int_equal(wk_token_bucket_init(&bucket, WK_RATELIMIT_MAX_RATE,
                                          WK_RATELIMIT_MAX_BURST),
                     WK_OK);
    assert_int_equal(wk_token_bucket_init(&bucket, WK_RATELIMIT_MIN_RATE,
                                          WK_RATELIMIT_MAX_BURST),
                     WK_OK);
}

static void
test_retry_after_seconds(void **state)
{
    static const struct {
        wk_duration wait;
        int64_t seconds;
    } cases[] = {
        {0, 0},
        {-5, 0},
        {1, 1},
        {WK_MSEC(100), 1},
        {WK_SEC(1), 1},
        {WK_SEC(1) + 1, 2},
        {WK_MSEC(2500), 3},
        {WK_SEC(60), 60},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (wk_retry_after_seconds(cases[i].wait) != cases[i].seconds)
            fail_msg("a wait of %lld ns gave %lld s, expected %lld",
                     (long long)cases[i].wait,
                     (long long)wk_retry_after_seconds(cases[i].wait),
                     (long long)cases[i].seconds);
    }
}

/* --- the limiter ---------------------------------------------------------- */

static struct wk_ratelimit *
new_limiter(double rate, uint32_t burst, uint32_t max_keys, uint32_t idle_ms)
{
    struct wk_ratelimit_config config = WK_RATELIMIT_CONFIG_INIT;
    struct wk_ratelimit *rl = NULL;

    config.rate = rate;
    config.burst = burst;
    config.max_keys = max_keys;
    config.idle_ms = idle_ms;
    assert_int_equal(wk_ratelimit_new(&config, &rl), WK_OK);
    return rl;
}

static int
admitted_of(struct wk_ratelimit *rl, const char *key, int n, wk_time now)
{
    int admitted = 0;

    for (int i = 0; i < n; i++) {
        if (wk_ratelimit_take(rl, key, now, NULL) == WK_OK)
            admitted++;
    }
    return admitted;
}

static void
test_unkeyed_shares_one_bucket(void **state)
{
    struct wk_ratelimit *rl = new_limiter(10, 3, 0, 60000);
    struct wk_ratelimit_snapshot snap;
    wk_duration wait = 0;

    (void)state;
    assert_int_equal(admitted_of(rl, "a", 2, T0), 2);
    assert_int_equal(admitted_of(rl, "b", 2, T0), 1);
    assert_int_equal(wk_ratelimit_take(rl, NULL, T0, &wait),
                     WK_ERR_RATE_LIMITED);
    assert_int_equal(wait, WK_MSEC(100));
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_int_equal(snap.tokens, 0);
    assert_int_equal(snap.rejections, 2);
    assert_int_equal(snap.keys, 0);
    wk_ratelimit_snapshot(rl, T0 + WK_SEC(1), &snap);
    assert_int_equal(snap.tokens, 3);
    wk_ratelimit_destroy(&rl);
    assert_null(rl);
}

static void
test_keys_have_own_buckets(void **state)
{
    struct wk_ratelimit *rl = new_limiter(10, 3, 100, 60000);
    struct wk_ratelimit_snapshot snap;
    wk_duration wait = 0;

    (void)state;
    assert_int_equal(admitted_of(rl, "10.0.0.1", 5, T0), 3);
    assert_int_equal(admitted_of(rl, "10.0.0.2", 5, T0), 3);
    assert_int_equal(wk_ratelimit_take(rl, "10.0.0.1", T0, &wait),
                     WK_ERR_RATE_LIMITED);
    assert_int_equal(wait, WK_MSEC(100));
    assert_int_equal(admitted_of(rl, "10.0.0.1", 2, T0 + WK_MSEC(100)), 1);
    /* The shared bucket is separate from the keyed ones. */
    assert_int_equal(admitted_of(rl, NULL, 5, T0), 3);
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_int_equal(snap.keys, 2);
    assert_int_equal(snap.rejections, 2 + 2 + 1 + 1 + 2);
    wk_ratelimit_destroy(&rl);
}

static void
test_key_length_limit(void **state)
{
    struct wk_ratelimit *rl = new_limiter(10, 3, 100, 60000);
    char key[WK_RATELIMIT_MAX_KEY_BYTES + 2];

    (void)state;
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    assert_int_equal(wk_ratelimit_take(rl, key, T0, NULL), WK_ERR_INVALID);
    key[WK_RATELIMIT_MAX_KEY_BYTES] = '\0';
    assert_int_equal(wk_ratelimit_take(rl, key, T0, NULL), WK_OK);
    /* The empty key is a key like any other. */
    assert_int_equal(wk_ratelimit_take(rl, "", T0, NULL), WK_OK);
    wk_ratelimit_destroy(&rl);
}

/*
 * With three keys allowed, a flood of new keys evicts the least recently
 * used one each time; a key in use keeps its (empty) bucket.
 */
static void
test_full_table_evicts_least_recent(void **state)
{
    struct wk_ratelimit *rl = new_limiter(1, 2, 3, 60000);
    struct wk_ratelimit_snapshot snap;
    char key[16];

    (void)state;
    assert_int_equal(admitted_of(rl, "abuser", 3, T0), 2);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "new-%d", i);
        assert_int_equal(admitted_of(rl, key, 1, T0), 1);
        assert_int_equal(admitted_of(rl, "abuser", 1, T0), 0);
        wk_ratelimit_snapshot(rl, T0, &snap);
        assert_true(snap.keys <= 3);
    }
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_int_equal(snap.keys, 3);
    assert_int_equal(snap.evictions, 48);
    assert_int_equal(snap.expirations, 0);

    /* new-0 was evicted long ago: it starts again with a full bucket. */
    assert_int_equal(admitted_of(rl, "new-0", 3, T0), 2);
    wk_ratelimit_destroy(&rl);
}

static void
test_idle_keys_expire(void **state)
{
    struct wk_ratelimit *rl = new_limiter(10, 2, 100, 1000);
    struct wk_ratelimit_snapshot snap;

    (void)state;
    assert_int_equal(admitted_of(rl, "a", 1, T0), 1);
    assert_int_equal(admitted_of(rl, "b", 1, T0 + WK_MSEC(500)), 1);
    assert_int_equal(wk_ratelimit_expire(rl, T0 + WK_MSEC(999)), 0);
    assert_int_equal(wk_ratelimit_expire(rl, T0 + WK_MSEC(1000)), 1);
    assert_int_equal(wk_ratelimit_expire(rl, T0 + WK_MSEC(1500)), 1);
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_int_equal(snap.keys, 0);
    assert_int_equal(snap.expirations, 2);
    wk_ratelimit_destroy(&rl);
}

/* A key idle for idle_ms whose bucket is still refilling must stay. */
static void
test_refilling_key_does_not_expire(void **state)
{
    struct wk_ratelimit *rl = new_limiter(0.1, 2, 100, 1000);

    (void)state;
    assert_int_equal(admitted_of(rl, "slow", 3, T0), 2);
    assert_int_equal(wk_ratelimit_expire(rl, T0 + WK_SEC(5)), 0);
    assert_int_equal(admitted_of(rl, "slow", 1, T0 + WK_SEC(5)), 0);
    /* Two tokens at 10 s each: full again 20 s after the first takes. */
    assert_int_equal(wk_ratelimit_expire(rl, T0 + WK_SEC(20) - 1), 0);
    assert_int_equal(wk_ratelimit_expire(rl, T0 + WK_SEC(20)), 1);
    wk_ratelimit_destroy(&rl);
}

/* A new key in a full table drops idle keys before evicting a live one. */
static void
test_new_key_prefers_expiry(void **state)
{
    struct wk_ratelimit *rl = new_limiter(10, 2, 2, 1000);
    struct wk_ratelimit_snapshot snap;

    (void)state;
    assert_int_equal(admitted_of(rl, "a", 1, T0), 1);
    assert_int_equal(admitted_of(rl, "b", 1, T0), 1);
    assert_int_equal(admitted_of(rl, "c", 1, T0 + WK_SEC(2)), 1);
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_int_equal(snap.keys, 1);
    assert_int_equal(snap.expirations, 2);
    assert_int_equal(snap.evictions, 0);
    wk_ratelimit_destroy(&rl);
}

/* --- configuration and middleware --------------------------------------- */

struct config_case {
    const char *name;
    struct wk_ratelimit_config config;
    const char *field;
};

static const struct config_case config_cases[] = {
    {"the defaults are valid", WK_RATELIMIT_CONFIG_INIT, NULL},
    {"rate 0", {.rate = 0, .burst = 1, .idle_ms = 60000}, "rate"},
    {"rate over the maximum",
     {.rate = 2e6, .burst = 1, .idle_ms = 60000},
     "rate"},
    {"burst 0", {.rate = 1, .burst = 0, .idle_ms = 60000}, "burst"},
    {"too many keys",
     {.rate = 1, .burst = 1, .max_keys = 20000000, .idle_ms = 60000},
     "max_keys"},
    {"idle_ms under a second",
     {.rate = 1, .burst = 1, .max_keys = 10, .idle_ms = 999},
     "idle_ms"},
    {"every maximum is valid",
     {.rate = WK_RATELIMIT_MAX_RATE,
      .burst = WK_RATELIMIT_MAX_BURST,
      .max_keys = 100000,
      .idle_ms = WK_RATELIMIT_MAX_IDLE_MS},
     NULL},
};

static void
test_config_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(config_cases) / sizeof(config_cases[0]);
         i++) {
        const struct config_case *cc = &config_cases[i];
        const char *field = "unset";
        struct wk_ratelimit *rl = NULL;
        int err = wk_ratelimit_config_check(&cc->config, &field);

        if (cc->field == NULL) {
            if (err != WK_OK || field != NULL)
                fail_msg("%s: rejected (%s)", cc->name, field);
            assert_int_equal(wk_ratelimit_new(&cc->config, &rl), WK_OK);
            wk_ratelimit_destroy(&rl);
            continue;
        }
        if (err != WK_ERR_INVALID || field == NULL ||
            strcmp(field, cc->field) != 0)
            fail_msg("%s: got field %s, expected %s", cc->name,
                     field != NULL ? field : "none", cc->field);
        assert_int_equal(wk_ratelimit_new(&cc->config, &rl), WK_ERR_INVALID);
        assert_null(rl);
    }
}

static void
test_middleware(void **state)
{
    struct wk_ratelimit *rl = new_limiter(1, 2, 10, 60000);
    struct wk_middleware mw = wk_ratelimit_middleware(rl);
    void *token;

    (void)state;
    assert_string_equal(mw.ops->name, "ratelimit");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(wk_middleware_before_all(&mw, 1, "route", T0, &token),
                         WK_OK);
        wk_middleware_after_all(&mw, 1, "route", &token, WK_OK, T0, T0);
    }
    assert_int_equal(wk_middleware_before_all(&mw, 1, "route", T0, &token),
                     WK_ERR_RATE_LIMITED);
    /* The event key picks the bucket. */
    assert_int_equal(wk_middleware_before_all(&mw, 1, "other", T0, &token),
                     WK_OK);
    wk_ratelimit_destroy(&rl);
}

/* --- threads ------------------------------------------------------------ */

#define THREADS          8
#define TAKES_PER_THREAD 2000
#define RACE_BURST       5000

struct race {
    struct wk_ratelimit *rl;
    const char *key; /* NULL: shared bucket; "": a distinct key per take */
    pthread_barrier_t start;
    _Atomic int admitted;
};

static void *
race_takes(void *arg)
{
    struct race *race = arg;
    char key[32];
    int admitted = 0;

    pthread_barrier_wait(&race->start);
    for (int i = 0; i < TAKES_PER_THREAD; i++) {
        const char *k = race->key;

        if (k != NULL && k[0] == '\0') {
            snprintf(key, sizeof(key), "%p-%d", (void *)key, i);
            k = key;
        }
        if (wk_ratelimit_take(race->rl, k, T0, NULL) == WK_OK)
            admitted++;
    }
    atomic_fetch_add(&race->admitted, admitted);
    return NULL;
}

static int
run_race(struct wk_ratelimit *rl, const char *key)
{
    struct race race = {.rl = rl, .key = key};
    pthread_t threads[THREADS];

    pthread_barrier_init(&race.start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, race_takes, &race);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&race.start);
    return atomic_load(&race.admitted);
}

/*
 * Eight threads take 16000 tokens in all from a bucket of 5000 with the
 * clock frozen. The bucket admits burst exactly; the requirement allows one
 * either way.
 */
static void
test_threads_admit_burst(void **state)
{
    struct wk_ratelimit *rl = new_limiter(100, RACE_BURST, 0, 60000);
    struct wk_ratelimit_snapshot snap;
    int admitted = run_race(rl, NULL);

    (void)state;
    assert_in_range(admitted, RACE_BURST - 1, RACE_BURST + 1);
    assert_int_equal(admitted, RACE_BURST);
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_int_equal(snap.rejections, THREADS * TAKES_PER_THREAD - RACE_BURST);
    wk_ratelimit_destroy(&rl);
}

static void
test_threads_admit_burst_per_key(void **state)
{
    struct wk_ratelimit *rl = new_limiter(100, RACE_BURST, 1000, 60000);
    int admitted = run_race(rl, "10.1.2.3");

    (void)state;
    assert_int_equal(admitted, RACE_BURST);
    wk_ratelimit_destroy(&rl);
}

/* A flood of distinct keys from many threads never grows past max_keys. */
static void
test_threads_key_flood_is_bounded(void **state)
{
    struct wk_ratelimit *rl = new_limiter(100, 10, 2048, 60000);
    struct wk_ratelimit_snapshot snap;
    int admitted = run_race(rl, "");

    (void)state;
    assert_int_equal(admitted, THREADS * TAKES_PER_THREAD);
    wk_ratelimit_snapshot(rl, T0, &snap);
    assert_true(snap.keys <= 2048);
    assert_int_equal(snap.keys + snap.evictions, THREADS * TAKES_PER_THREAD);
    wk_ratelimit_destroy(&rl);
}

struct churn {
    struct wk_ratelimit *rl;
    struct wk_manual_clock clock;
    _Atomic bool stop;
};

/* Takes tokens for 300 client keys, moving the clock 10 ms per 100 takes. */
static void *
churn_keys(void *arg)
{
    struct churn *c = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;
    char key[32];

    for (int i = 0; i < 20000; i++) {
        if (i % 100 == 0)
            wk_manual_clock_advance(&c->clock, WK_MSEC(10));
        snprintf(key, sizeof(key), "client-%d", rand_r(&seed) % 300);
        wk_ratelimit_take(c->rl, key, wk_clock_now(&c->clock.clock), NULL);
    }
    return NULL;
}

static void *
expire_keys(void *arg)
{
    struct churn *c = arg;

    while (!atomic_load(&c->stop))
        wk_ratelimit_expire(c->rl, wk_clock_now(&c->clock.clock));
    return NULL;
}

/*
 * Threads take, evict and expire keys all at once in a table smaller than
 * the key set. The key count must stay within max_keys and, once every key
 * has expired, come back to exactly 0.
 */
static void
test_threads_take_while_expiring(void **state)
{
    struct churn c = {.rl = new_limiter(100, 5, 256, 1000)};
    struct wk_ratelimit_snapshot snap;
    pthread_t takers[3], expirer;

    (void)state;
    wk_manual_clock_init(&c.clock, T0);
    pthread_create(&expirer, NULL, expire_keys, &c);
    for (int i = 0; i < 3; i++)
        pthread_create(&takers[i], NULL, churn_keys, &c);
    for (int i = 0; i < 3; i++)
        pthread_join(takers[i], NULL);
    atomic_store(&c.stop, true);
    pthread_join(expirer, NULL);

    wk_ratelimit_snapshot(c.rl, T0, &snap);
    assert_true(snap.keys <= 256);
    assert_true(snap.evictions > 0);

    wk_time later = wk_clock_now(&c.clock.clock) + WK_SEC(60);

    assert_int_equal(wk_ratelimit_expire(c.rl, later), snap.keys);
    wk_ratelimit_snapshot(c.rl, later, &snap);
    assert_int_equal(snap.keys, 0);
    wk_ratelimit_destroy(&c.rl);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_scenarios),
        cmocka_unit_test(test_bucket_tokens_and_fill),
        cmocka_unit_test(test_bucket_rejects_bad_rates),
        cmocka_unit_test(test_retry_after_seconds),
        cmocka_unit_test(test_unkeyed_shares_one_bucket),
        cmocka_unit_test(test_keys_have_own_buckets),
        cmocka_unit_test(test_key_length_limit),
        cmocka_unit_test(test_full_table_evicts_least_recent),
        cmocka_unit_test(test_idle_keys_expire),
        cmocka_unit_test(test_refilling_key_does_not_expire),
        cmocka_unit_test(test_new_key_prefers_expiry),
        cmocka_unit_test(test_config_check),
        cmocka_unit_test(test_middleware),
        cmocka_unit_test(test_threads_admit_burst),
        cmocka_unit_test(test_threads_admit_burst_per_key),
        cmocka_unit_test(test_threads_key_flood_is_bounded),
        cmocka_unit_test(test_threads_take_while_expiring),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
