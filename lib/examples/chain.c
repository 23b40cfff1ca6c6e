/*
 * The promise chain example of the Go library, in C: task one, then task
 * two, on a pool of 3 threads, read with get() and a deadline.
 *
 * Task one outputs 1 and task two adds 1 to what it receives, so the final
 * value 2 shows that both ran, in order, and that a value flows down the
 * chain. Task one's value is freed by the promise once task two's output
 * replaces it. The program exits with status 1 when an outcome differs.
 */
#include <stdio.h>
#include <stdlib.h>

#include "workshop/error.h"
#include "workshop/pool.h"
#include "workshop/promise.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "chain example: check failed: %s\n", #cond);       \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/*
 * The Go example waits 100 ms; a second leaves room for slow sanitizer
 * builds without changing what the example shows.
 */
#define GET_TIMEOUT WK_SEC(1)

/* Outputs a new int, last + 1 (0 when there is no last value). */
static int
count_up(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
         struct wk_value *out)
{
    int *n = malloc(sizeof(*n));

    (void)ctx;
    if (n == NULL)
        return WK_ERR_NOMEM;
    *n = (last->ptr != NULL ? *(int *)last->ptr : 0) + 1;
    printf("do task %s\n", (const char *)arg);
    *out = (struct wk_value){.ptr = n, .free = free};
    return WK_OK;
}

int
main(void)
{
    struct wk_pool *pool = wk_pool_new(3, 16);

    CHECK(pool != NULL);

    struct wk_promise_opts opts = {.pool = pool};
    static char name_one[] = "one", name_two[] = "two";
    struct wk_step one = {.run = count_up, .arg = name_one};
    struct wk_step two = {.run = count_up, .arg = name_two};
    struct wk_promise *p = wk_promise_new(&opts, &one);

    CHECK(p != NULL);
    CHECK(wk_promise_then(p, &two) == WK_OK);
    CHECK(wk_promise_start(p) == WK_OK);

    const struct wk_value *value = NULL;
    int err = wk_promise_get(p, wk_clock_now(NULL) + GET_TIMEOUT, &value);

    printf("get: %s\n", wk_strerror(err));
    CHECK(err == WK_OK);
    CHECK(*(int *)value->ptr == 2);
    printf("value: %d\n", *(int *)value->ptr);

    wk_promise_free(&p);
    wk_pool_destroy(&pool);
    return 0;
}
