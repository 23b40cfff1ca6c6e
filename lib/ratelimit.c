/*
 * Token buckets and the rate limiter.
 *
 * A bucket is one "theoretical arrival time" (tat): the time at which the
 * bucket would be full again. Taking a token moves tat one interval later,
 * starting from now when tat lies in the past. The take fails when that
 * would put tat more than a full bucket (capacity) ahead of now. The shared
 * bucket updates tat with compare-and-swap; a keyed bucket updates a plain
 * tat under its shard's lock.
 *
 * The key table is split into shards, each with its own mutex, hash chains
 * and LRU list, so threads serving different clients rarely meet on a lock.
 * Keys are hashed with SipHash-2-4 under a random per-limiter key, so a
 * client cannot choose keys that pile up in one chain.
 */
#include "workshop/ratelimit.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "workshop/error.h"

/* --- token bucket ------------------------------------------------------ */

/*
 * Computes the take of one token from a bucket at tat. Returns true and sets
 * *next to the new tat, or returns false and sets *wait.
 */
static bool
gcra_take(int64_t tat, wk_time now, wk_duration interval, wk_duration capacity,
          int64_t *next, wk_duration *wait)
{
    int64_t base = tat > now ? tat : now;
    int64_t after = base + interval;

    if (after - now > capacity) {
        *wait = after - capacity - now;
        return false;
    }
    *next = after;
    return true;
}

static bool
valid_rate(double rate)
{
    return rate >= WK_RATELIMIT_MIN_RATE && rate <= WK_RATELIMIT_MAX_RATE;
}

static bool
valid_burst(uint32_t burst)
{
    return burst >= WK_RATELIMIT_MIN_BURST && burst <= WK_RATELIMIT_MAX_BURST;
}

int
wk_token_bucket_init(struct wk_token_bucket *bucket, double rate,
                     uint32_t burst)
{
    if (!valid_rate(rate) || !valid_burst(burst))
        return WK_ERR_INVALID;

    /* Rounded to the nearest nanosecond: at most 0.05 % off at 1e6/s. */
    wk_duration interval = (wk_duration)((double)WK_NSEC_PER_SEC / rate + 0.5);

    bucket->interval = interval > 0 ? interval : 1;
    bucket->capacity = bucket->interval * (wk_duration)burst;
    atomic_init(&bucket->tat, INT64_MIN);
    return WK_OK;
}

int
wk_token_bucket_take(struct wk_token_bucket *bucket, wk_time now,
                     wk_duration *wait)
{
    int64_t tat = atomic_load_explicit(&bucket->tat, memory_order_relaxed);
    int64_t next;
    wk_duration w;

    for (;;) {
        if (!gcra_take(tat, now, bucket->interval, bucket->capacity, &next,
                       &w)) {
            if (wait != NULL)
                *wait = w;
            return WK_ERR_RATE_LIMITED;
        }
        if (atomic_compare_exchange_weak_explicit(&bucket->tat, &tat, next,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
            return WK_OK;
    }
}

static uint32_t
tokens_at(int64_t tat, wk_time now, wk_duration interval, wk_duration capacity)
{
    int64_t ahead = tat > now ? tat - now : 0;

    if (ahead >= capacity)
        return 0;
    return (uint32_t)((capacity - ahead) / interval);
}

uint32_t
wk_token_bucket_tokens(const struct wk_token_bucket *bucket, wk_time now)
{
    /* The load does not modify the bucket; the cast drops const for C11. */
    int64_t tat = atomic_load_explicit((_Atomic int64_t *)&bucket->tat,
                                       memory_order_relaxed);

    return tokens_at(tat, now, bucket->interval, bucket->capacity);
}

void
wk_token_bucket_fill(struct wk_token_bucket *bucket)
{
    atomic_store_explicit(&bucket->tat, INT64_MIN, memory_order_relaxed);
}

/* --- SipHash-2-4 ------------------------------------------------------- */

static uint64_t
rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static void
sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl(v[0], 32);
    v[2] += v[3];
    v[3] = rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl(v[2], 32);
}

static uint64_t
load_le64(const unsigned char *p, size_t n)
{
    uint64_t x = 0;

    for (size_t i = 0; i < n; i++)
        x |= (uint64_t)p[i] << (8 * i);
    return x;
}

static void
sip_absorb(uint64_t v[4], uint64_t m)
{
    v[3] ^= m;
    sip_round(v);
    sip_round(v);
    v[0] ^= m;
}

/* SipHash-2-4 of data[0..len) under the 128-bit key (k0, k1). */
static uint64_t
siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v[4] = {
        k0 ^ UINT64_C(0x736f6d6570736575),
        k1 ^ UINT64_C(0x646f72616e646f6d),
        k0 ^ UINT64_C(0x6c7967656e657261),
        k1 ^ UINT64_C(0x7465646279746573),
    };
    size_t whole = len - len % 8;

    for (size_t i = 0; i < whole; i += 8)
        sip_absorb(v, load_le64(p + i, 8));
    sip_absorb(v, load_le64(p + whole, len % 8) | (uint64_t)len << 56);
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++)
        sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* --- key table --------------------------------------------------------- */

/* Small tables get one shard, so their LRU order is exact. */
#define MAX_SHARDS         16
#define KEYS_PER_SHARD_MIN 64
/* Idle keys dropped from an LRU tail per new key, as a bound on the work. */
#define EXPIRE_PER_INSERT 2

struct entry {
    struct entry *chain; /* next entry in the same hash slot */
    struct entry *newer; /* LRU neighbours; the shard's newest has none */
    struct entry *older;
    uint64_t hash;
    int64_t tat;
    wk_time last_used;
    size_t key_len;
    char key[];
};

struct shard {
    _Alignas(64) pthread_mutex_t mu;
    struct entry **slots;
    size_t mask; /* slot count - 1; the count is a power of two */
    struct entry *newest;
    struct entry *oldest;
    size_t count;
    size_t capacity;
};

struct wk_ratelimit {
    struct wk_token_bucket shared;
    wk_duration idle;
    struct shard *shards;
    size_t shard_count;
    uint64_t hash_k0;
    uint64_t hash_k1;
    _Alignas(64) _Atomic uint64_t rejections;
    _Atomic uint64_t keys;
    _Atomic uint64_t evictions;
    _Atomic uint64_t expirations;
};

static bool
entry_matches(const struct entry *e, uint64_t hash, const char *key, size_t len)
{
    return e->hash == hash && e->key_len == len &&
           memcmp(e->key, key, len) == 0;
}

static struct entry *
find_locked(struct shard *s, uint64_t hash, const char *key, size_t len)
{
    struct entry *e = s->slots[hash & s->mask];

    while (e != NULL && !entry_matches(e, hash, key, len))
        e = e->chain;
    return e;
}

static void
lru_unlink(struct shard *s, struct entry *e)
{
    if (e->newer != NULL)
        e->newer->older = e->older;
    else
        s->newest = e->older;
    if (e->older != NULL)
        e->older->newer = e->newer;
    else
        s->oldest = e->newer;
    e->newer = NULL;
    e->older = NULL;
}

static void
lru_push_newest(struct shard *s, struct entry *e)
{
    e->older = s->newest;
    e->newer = NULL;
    if (s->newest != NULL)
        s->newest->newer = e;
    else
        s->oldest = e;
    s->newest = e;
}

/* Unlinks e from its chain and the LRU list and frees it. */
static void
remove_locked(struct wk_ratelimit *rl, struct shard *s, struct entry *e)
{
    struct entry **link = &s->slots[e->hash & s->mask];

    while (*link != e)
        link = &(*link)->chain;
    *link = e->chain;
    lru_unlink(s, e);
    s->count--;
    atomic_fetch_sub_explicit(&rl->keys, 1, memory_order_relaxed);
    free(e);
}

/* An entry is idle once unused for rl->idle and its bucket is full again. */
static bool
idle_at(const struct wk_ratelimit *rl, const struct entry *e, wk_time now)
{
    return now - e->last_used >= rl->idle && e->tat <= now;
}

/*
 * Drops idle entries from the old end of the LRU list, at most limit of
 * them. Entries unused for long enough whose bucket is still refilling are
 * skipped. Returns how many were dropped.
 */
static size_t
expire_locked(struct wk_ratelimit *rl, struct shard *s, wk_time now,
              size_t limit)
{
    size_t dropped = 0;
    struct entry *e = s->oldest;

    while (e != NULL && dropped < limit && now - e->last_used >= rl->idle) {
        struct entry *newer = e->newer;

        if (idle_at(rl, e, now)) {
            remove_locked(rl, s, e);
            dropped++;
        }
        e = newer;
    }
    if (dropped > 0)
        atomic_fetch_add_explicit(&rl->expirations, dropped,
                                  memory_order_relaxed);
    return dropped;
}

/* Adds an entry for key with a full bucket. Returns NULL when out of memory. */
static struct entry *
insert_locked(struct wk_ratelimit *rl, struct shard *s, uint64_t hash,
              const char *key, size_t len, wk_time now)
{
    expire_locked(rl, s, now, EXPIRE_PER_INSERT);
    if (s->count >= s->capacity) {
        remove_locked(rl, s, s->oldest);
        atomic_fetch_add_explicit(&rl->evictions, 1, memory_order_relaxed);
    }

    struct entry *e = malloc(sizeof(*e) + len);

    if (e == NULL)
        return NULL;
    e->hash = hash;
    e->tat = INT64_MIN;
    e->last_used = now;
    e->key_len = len;
    memcpy(e->key, key, len);
    e->chain = s->slots[hash & s->mask];
    s->slots[hash & s->mask] = e;
    lru_push_newest(s, e);
    s->count++;
    atomic_fetch_add_explicit(&rl->keys, 1, memory_order_relaxed);
    return e;
}

static int
take_keyed(struct wk_ratelimit *rl, const char *key, wk_time now,
           wk_duration *wait)
{
    size_t len = strnlen(key, WK_RATELIMIT_MAX_KEY_BYTES + 1);

    if (len > WK_RATELIMIT_MAX_KEY_BYTES)
        return WK_ERR_INVALID;

    uint64_t hash = siphash24(rl->hash_k0, rl->hash_k1, key, len);
    struct shard *s = &rl->shards[(hash >> 32) % rl->shard_count];
    int err = WK_ERR_RATE_LIMITED;
    wk_duration w = 0;

    pthread_mutex_lock(&s->mu);
    struct entry *e = find_locked(s, hash, key, len);

    if (e == NULL) {
        e = insert_locked(rl, s, hash, key, len, now);
    } else if (s->newest != e) {
        lru_unlink(s, e);
        lru_push_newest(s, e);
    }
    if (e == NULL) {
        err = WK_ERR_NOMEM;
    } else {
        e->last_used = now;
        if (gcra_take(e->tat, now, rl->shared.interval, rl->shared.capacity,
                      &e->tat, &w))
            err = WK_OK;
    }
    pthread_mutex_unlock(&s->mu);

    if (err == WK_ERR_RATE_LIMITED && wait != NULL)
        *wait = w;
    return err;
}

int
wk_ratelimit_take(struct wk_ratelimit *limiter, const char *key, wk_time now,
                  wk_duration *wait)
{
    int err;

    if (key == NULL || limiter->shard_count == 0)
        err = wk_token_bucket_take(&limiter->shared, now, wait);
    else
        err = take_keyed(limiter, key, now, wait);
    if (err == WK_ERR_RATE_LIMITED)
        atomic_fetch_add_explicit(&limiter->rejections, 1,
                                  memory_order_relaxed);
    return err;
}

size_t
wk_ratelimit_expire(struct wk_ratelimit *limiter, wk_time now)
{
    size_t dropped = 0;

    for (size_t i = 0; i < limiter->shard_count; i++) {
        struct shard *s = &limiter->shards[i];

        pthread_mutex_lock(&s->mu);
        dropped += expire_locked(limiter, s, now, SIZE_MAX);
        pthread_mutex_unlock(&s->mu);
    }
    return dropped;
}

/* --- life cycle -------------------------------------------------------- */

void
wk_ratelimit_config_init(struct wk_ratelimit_config *config)
{
    *config = (struct wk_ratelimit_config)WK_RATELIMIT_CONFIG_INIT;
}

int
wk_ratelimit_config_check(const struct wk_ratelimit_config *config,
                          const char **field)
{
    const char *bad = NULL;

    if (!valid_rate(config->rate))
        bad = "rate";
    else if (!valid_burst(config->burst))
        bad = "burst";
    else if (config->max_keys > WK_RATELIMIT_MAX_MAX_KEYS)
        bad = "max_keys";
    else if (config->idle_ms < WK_RATELIMIT_MIN_IDLE_MS ||
             config->idle_ms > WK_RATELIMIT_MAX_IDLE_MS)
        bad = "idle_ms";
    if (field != NULL)
        *field = bad;
    return bad == NULL ? WK_OK : WK_ERR_INVALID;
}

static void
seed_hash(struct wk_ratelimit *rl)
{
    uint64_t k[2];

    if (getrandom(k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)) {
        /*
         * No entropy yet (early boot): fall back to values that at least
         * differ between processes and limiters.
         */
        k[0] = (uint64_t)wk_clock_now(NULL) ^ (uint64_t)(uintptr_t)rl;
        k[1] = (uint64_t)(uintptr_t)&k ^ UINT64_C(0x9e3779b97f4a7c15);
    }
    rl->hash_k0 = k[0];
    rl->hash_k1 = k[1];
}

static size_t
next_pow2(size_t n)
{
    size_t p = 1;

    while (p < n)
        p *= 2;
    return p;
}

/* Sizes and allocates the shards for max_keys keys in all. */
static int
init_shards(struct wk_ratelimit *rl, uint32_t max_keys)
{
    size_t count = max_keys / KEYS_PER_SHARD_MIN;

    if (count < 1)
        count = 1;
    if (count > MAX_SHARDS)
        count = MAX_SHARDS;
    rl->shards = aligned_alloc(64, count * sizeof(struct shard));
    if (rl->shards == NULL)
        return WK_ERR_NOMEM;
    memset(rl->shards, 0, count * sizeof(struct shard));
    rl->shard_count = count;

    for (size_t i = 0; i < count; i++) {
        struct shard *s = &rl->shards[i];

        s->capacity = max_keys / count + (i < max_keys % count ? 1 : 0);
        /* Two keys per slot on average once the shard is full. */
        size_t slots = next_pow2(s->capacity / 2 + 1);

        s->slots = calloc(slots, sizeof(*s->slots));
        if (s->slots == NULL)
            return WK_ERR_NOMEM;
        s->mask = slots - 1;
        pthread_mutex_init(&s->mu, NULL);
    }
    return WK_OK;
}

int
wk_ratelimit_new(const struct wk_ratelimit_config *config,
                 struct wk_ratelimit **out)
{
    int err = wk_ratelimit_config_check(config, NULL);
    struct wk_ratelimit *rl = NULL;

    *out = NULL;
    if (err != WK_OK)
        goto out;
    err = WK_ERR_NOMEM;
    rl = aligned_alloc(64, (sizeof(*rl) + 63) / 64 * 64);
    if (rl == NULL)
        goto out;
    memset(rl, 0, sizeof(*rl));
    err = wk_token_bucket_init(&rl->shared, config->rate, config->burst);
    if (err != WK_OK)
        goto out;
    rl->idle = WK_MSEC(config->idle_ms);
    seed_hash(rl);
    if (config->max_keys > 0) {
        err = init_shards(rl, config->max_keys);
        if (err != WK_OK)
            goto out;
    }
    *out = rl;
    rl = NULL;
    err = WK_OK;
out:
    wk_ratelimit_destroy(&rl);
    return err;
}

void
wk_ratelimit_destroy(struct wk_ratelimit **limiter)
{
    struct wk_ratelimit *rl = limiter != NULL ? *limiter : NULL;

    if (rl == NULL)
        return;
    for (size_t i = 0; i < rl->shard_count; i++) {
        struct shard *s = &rl->shards[i];

        while (s->oldest != NULL) {
            struct entry *e = s->oldest;

            lru_unlink(s, e);
            free(e);
        }
        /* Shards after a failed allocation have neither slots nor mutex. */
        if (s->slots != NULL)
            pthread_mutex_destroy(&s->mu);
        free(s->slots);
    }
    free(rl->shards);
    free(rl);
    *limiter = NULL;
}

/* --- snapshot and middleware ------------------------------------------- */

void
wk_ratelimit_snapshot(struct wk_ratelimit *limiter, wk_time now,
                      struct wk_ratelimit_snapshot *snap)
{
    snap->tokens = wk_token_bucket_tokens(&limiter->shared, now);
    snap->rejections =
        atomic_load_explicit(&limiter->rejections, memory_order_relaxed);
    snap->keys = atomic_load_explicit(&limiter->keys, memory_order_relaxed);
    snap->evictions =
        atomic_load_explicit(&limiter->evictions, memory_order_relaxed);
    snap->expirations =
        atomic_load_explicit(&limiter->expirations, memory_order_relaxed);
}

static int
mw_before(void *self, const char *key, wk_time now, void **token)
{
    (void)token;
    return wk_ratelimit_take(self, key, now, NULL);
}

static const struct wk_middleware_ops ratelimit_ops = {
    .name = "ratelimit",
    .before = mw_before,
};

struct wk_middleware
wk_ratelimit_middleware(struct wk_ratelimit *limiter)
{
    return (struct wk_middleware){.ops = &ratelimit_ops, .self = limiter};
}
