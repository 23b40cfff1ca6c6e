/*
 * The stale cache: a hash table of entries on a least-recently-used list.
 */
#include "stale.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 1024

struct entry {
    struct entry *hash_next;
    struct entry *lru_prev; /* towards the most recently used */
    struct entry *lru_next; /* towards the least recently used */
    char *key;
    uint64_t hash;
    unsigned status;
    struct gw_header_list headers;
    char *body;
    size_t body_len;
    size_t bytes;
    wk_time stored_at;
};

struct gw_stale_cache {
    pthread_mutex_t lock;
    struct entry *table[BUCKETS];
    struct entry *lru_head; /* most recently used */
    struct entry *lru_tail; /* least recently used */
    size_t bytes;
    size_t entries;
    size_t max_bytes;
};

static uint64_t
hash_key(const char *key)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */

    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 1099511628211u;
    }
    return h;
}

struct gw_stale_cache *
gw_stale_new(size_t max_bytes)
{
    struct gw_stale_cache *cache = calloc(1, sizeof(*cache));

    if (cache == NULL)
        return NULL;
    pthread_mutex_init(&cache->lock, NULL);
    cache->max_bytes = max_bytes;
    return cache;
}

static void
entry_free(struct entry *e)
{
    free(e->key);
    gw_header_list_clear(&e->headers);
    free(e->body);
    free(e);
}

static void
lru_unlink(struct gw_stale_cache *c, struct entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void
lru_push_front(struct gw_stale_cache *c, struct entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = c->lru_head;
    if (c->lru_head != NULL)
        c->lru_head->lru_prev = e;
    c->lru_head = e;
    if (c->lru_tail == NULL)
        c->lru_tail = e;
}

/* Removes e from the table and the list and frees it; lock held. */
static void
remove_locked(struct gw_stale_cache *c, struct entry *e)
{
    struct entry **p = &c->table[e->hash % BUCKETS];

    while (*p != e)
        p = &(*p)->hash_next;
    *p = e->hash_next;
    lru_unlink(c, e);
    c->bytes -= e->bytes;
    c->entries--;
    entry_free(e);
}

static struct entry *
find_locked(struct gw_stale_cache *c, const char *key, uint64_t hash)
{
    for (struct entry *e = c->table[hash % BUCKETS]; e != NULL;
         e = e->hash_next) {
        if (e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

void
gw_stale_free(struct gw_stale_cache **cachep)
{
    struct gw_stale_cache *c = *cachep;

    if (c == NULL)
        return;
    while (c->lru_head != NULL)
        remove_locked(c, c->lru_head);
    pthread_mutex_destroy(&c->lock);
    free(c);
    *cachep = NULL;
}

/* Builds a new entry holding copies of the response. */
static struct entry *
entry_new(const char *key, unsigned status,
          const struct gw_header_list *headers, const char *body,
          size_t body_len, wk_time now)
{
    struct entry *e = calloc(1, sizeof(*e));

    if (e == NULL)
        return NULL;
    e->key = strdup(key);
    e->body = malloc(body_len > 0 ? body_len : 1);
    if (e->key == NULL || e->body == NULL) {
        entry_free(e);
        return NULL;
    }
    memcpy(e->body, body, body_len);
    e->body_len = body_len;
    e->bytes = sizeof(*e) + strlen(key) + body_len;
    for (size_t i = 0; i < headers->count; i++) {
        const struct gw_header *h = &headers->items[i];
        if (gw_header_list_add(&e->headers, h->name, strlen(h->name), h->value,
                               strlen(h->value)) != 0) {
            entry_free(e);
            return NULL;
        }
        e->bytes += strlen(h->name) + strlen(h->value) + 2;
    }
    e->hash = hash_key(key);
    e->status = status;
    e->stored_at = now;
    return e;
}

int
gw_stale_put(struct gw_stale_cache *c, const char *key, unsigned status,
             const struct gw_header_list *headers, const char *body,
             size_t body_len, wk_time now)
{
    if (body_len > c->max_bytes)
        return -1;
    struct entry *e = entry_new(key, status, headers, body, body_len, now);
    if (e == NULL)
        return -1;
    if (e->bytes > c->max_bytes) {
        entry_free(e);
        return -1;
    }

    pthread_mutex_lock(&c->lock);
    struct entry *old = find_locked(c, key, e->hash);
    if (old != NULL)
        remove_locked(c, old);
    while (c->bytes + e->bytes > c->max_bytes && c->lru_tail != NULL)
        remove_locked(c, c->lru_tail);
    e->hash_next = c->table[e->hash % BUCKETS];
    c->table[e->hash % BUCKETS] = e;
    lru_push_front(c, e);
    c->bytes += e->bytes;
    c->entries++;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static int
copy_entry(const struct entry *e, struct gw_stale_copy *out)
{
    memset(out, 0, sizeof(*out));
    out->body = malloc(e->body_len > 0 ? e->body_len : 1);
    if (out->body == NULL)
        return -1;
    memcpy(out->body, e->body, e->body_len);
    out->body_len = e->body_len;
    for (size_t i = 0; i < e->headers.count; i++) {
        const struct gw_header *h = &e->headers.items[i];
        if (gw_header_list_add(&out->headers, h->name, strlen(h->name),
                               h->value, strlen(h->value)) != 0) {
            gw_stale_copy_free(out);
            return -1;
        }
    }
    out->status = e->status;
    out->stored_at = e->stored_at;
    return 0;
}

bool
gw_stale_get(struct gw_stale_cache *c, const char *key, wk_duration max_age,
             wk_time now, struct gw_stale_copy *out)
{
    bool found = false;
    uint64_t hash = hash_key(key);

    pthread_mutex_lock(&c->lock);
    struct entry *e = find_locked(c, key, hash);
    if (e != NULL && now - e->stored_at > max_age) {
        remove_locked(c, e); /* too old to serve again */
        e = NULL;
    }
    if (e != NULL && copy_entry(e, out) == 0) {
        lru_unlink(c, e);
        lru_push_front(c, e);
        found = true;
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

void
gw_stale_copy_free(struct gw_stale_copy *copy)
{
    gw_header_list_clear(&copy->headers);
    free(copy->body);
    copy->body = NULL;
    copy->body_len = 0;
}

void
gw_stale_usage(struct gw_stale_cache *c, size_t *bytes, size_t *entries)
{
    pthread_mutex_lock(&c->lock);
    *bytes = c->bytes;
    *entries = c->entries;
    pthread_mutex_unlock(&c->lock);
}
