/*
 * A request's upstream call: admission (rate limiter, then breaker, then
 * bulkhead), upstream attempts with the retry policy, and the fallback chain.
 *
 * The whole call after admission is one asynchronous promise step: it
 * settles once the call has a final result, and the settle resumes the
 * suspended connection. Attempts and the retry backoff timers run on the
 * upstream loop thread; nothing here blocks a thread.
 *
 * The breaker counts every attempt: an attempt takes a permit before it starts
 * and reports its outcome when it ends. The limiter and the bulkhead see the
 * request once.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "metrics.h"
#include "request.h"
#include "route.h"
#include "workshop/error.h"
#include "workshop/ratelimit.h"
#include "workshop/retry.h"

/* Room for the upstream head beyond max_header_bytes' own value. */
#define UPSTREAM_HEAD_MIN (64 * 1024)

static void call_finish(struct request *r);
enum call_start_kind {
    START_ATTEMPT,   /* admitted: the first attempt */
    START_BULKHEAD,  /* wait for a bulkhead slot */
    START_ALTERNATE, /* rejected: a fallback upstream */
};
static enum MHD_Result prepare_and_go(struct request *r, const char *version,
                                      enum call_start_kind kind, wk_time now);
static void attempt_submit(struct request *r);

/* --- building the upstream request ---------------------------------------- */

struct header_collector {
    struct gw_request_header *items;
    size_t count;
    size_t capacity;
};

static enum MHD_Result
collect_header(void *arg, enum MHD_ValueKind kind, const char *name,
               size_t name_size, const char *value, size_t value_size)
{
    struct header_collector *hc = arg;

    (void)kind;
    (void)name_size;
    (void)value_size;
    if (hc->count == hc->capacity)
        return MHD_NO;
    hc->items[hc->count].name = name;
    hc->items[hc->count].value = value != NULL ? value : "";
    hc->count++;
    return MHD_YES;
}

/* Builds origin + the route's rewritten path + the raw query. */
static char *
build_url(const struct request *r, const char *origin, const char *base)
{
    struct gw_route route = *r->route;
    const char *query = r->target + r->path_len;
    size_t size = strlen(origin) + strlen(base) + strlen(r->target) + 2;
    char *url = malloc(size);

    if (url == NULL)
        return NULL;
    route.upstream_base = (char *)base;
    size_t used = (size_t)snprintf(url, size, "%s", origin);
    int n = gw_route_upstream_path(&route, r->target, r->path_len, url + used,
                                   size - used);
    if (n < 0) {
        free(url);
        return NULL;
    }
    snprintf(url + used + (size_t)n, size - used - (size_t)n, "%s", query);
    return url;
}

static void on_attempt_done(struct gw_upstream_call *call);
static bool may_stream(const struct gw_upstream_call *call);
static void on_stream(struct gw_upstream_call *call);
static void on_readable(struct gw_upstream_call *call);

static int
prepare_call(struct request *r, const char *version, bool *bad_request)
{
    const struct gw_config *cfg = r->config->config;
    struct gw_upstream_call *call = &r->call;

    *bad_request = false;
    int count = MHD_get_connection_values(r->conn, MHD_HEADER_KIND, NULL, NULL);
    struct header_collector hc = {.capacity = count > 0 ? (size_t)count : 1};
    hc.items = calloc(hc.capacity, sizeof(*hc.items));
    if (hc.items == NULL)
        return -1;
    MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, collect_header, &hc);
    struct gw_forward_info fwd = {.client_ip = r->client_ip,
                                  .http_version = version,
                                  .send_body = r->send_body};
    call->headers =
        gw_build_upstream_headers(hc.items, hc.count, &fwd, bad_request);
    free(hc.items);
    if (call->headers == NULL)
        return -1;

    call->url = build_url(r, r->route->upstream_url, r->route->upstream_base);
    if (call->url == NULL)
        return -1;
    call->method = r->method;
    call->body = r->body.data;
    call->body_len = r->body.len;
    call->send_body = r->send_body;
    call->connect_timeout_ms = r->route->connect_timeout_ms;
    call->max_head_bytes = cfg->limits.max_header_bytes > UPSTREAM_HEAD_MIN
                               ? (size_t)cfg->limits.max_header_bytes
                               : UPSTREAM_HEAD_MIN;
    call->max_body_bytes = (size_t)cfg->limits.max_response_bytes;
    call->buffer_bytes = (size_t)cfg->limits.response_buffer_bytes;
    call->done = on_attempt_done;
    call->may_stream = may_stream;
    call->on_stream = on_stream;
    call->on_readable = on_readable;
    call->user = r;
    return 0;
}

/* RFC 9110, 9.2.2: methods whose repetition has the effect of one. */
static bool
is_idempotent(const char *method)
{
    static const char *const methods[] = {"GET",   "HEAD", "OPTIONS",
                                          "TRACE", "PUT",  "DELETE"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(method, methods[i]) == 0)
            return true;
    }
    return false;
}

/* --- outcomes
 * ----------------------------------------------------------------- */

/* The breaker's view of an attempt: 4xx is the caller's doing, not a
 * failure of the upstream. */
static int
attempt_error(const struct gw_upstream_call *call)
{
    switch (call->outcome) {
    case GW_UP_OK:
        return call->status >= 500 ? WK_ERR_UPSTREAM : WK_OK;
    case GW_UP_TIMEOUT:
        return WK_ERR_TIMED_OUT;
    case GW_UP_CANCELLED:
        return WK_ERR_CANCELLED;
    default:
        return WK_ERR_UPSTREAM;
    }
}

static struct wk_retry_outcome
retry_outcome(const struct request *r)
{
    const struct gw_upstream_call *call = &r->call;
    struct wk_retry_outcome o = {.idempotent = r->idempotent};

    switch (call->outcome) {
    case GW_UP_OK:
        o.kind =
            call->status >= 500 ? WK_RETRY_ATTEMPT_STATUS : WK_RETRY_ATTEMPT_OK;
        o.status = (int)call->status;
        break;
    case GW_UP_CONNECT_FAILED:
        o.kind = WK_RETRY_ATTEMPT_CONNECT_FAILURE;
        break;
    case GW_UP_TIMEOUT:
        o.kind = WK_RETRY_ATTEMPT_TIMEOUT;
        break;
    default:
        o.kind = WK_RETRY_ATTEMPT_ERROR;
        break;
    }
    return o;
}

/* Returns whether some fallback of the route is used for reason. */
static bool
has_fallback_for(const struct request *r, unsigned reason)
{
    for (size_t i = 0; i < r->route->fallback_count; i++) {
        if (r->route->fallbacks[i].on & reason)
            return true;
    }
    return false;
}

/*
 * Sets the final result from the last attempt: the upstream's response,
 * or a reason for the fallback chain and the gateway error behind it.
 */
static void
classify_final(struct request *r)
{
    const struct gw_upstream_call *call = &r->call;

    switch (call->outcome) {
    case GW_UP_OK:
        r->result = RESULT_UPSTREAM;
        /* A 5xx passes through unless a fallback takes it over. When a
         * fallback upstream then fails too, the first response is gone, so
         * the client gets the gateway's 502. */
        if (call->status >= 500 && has_fallback_for(r, GW_REASON_STATUS_5XX)) {
            r->reason = GW_REASON_STATUS_5XX;
            r->error_kind = GW_KIND_UPSTREAM_ERROR;
            snprintf(r->error_message, sizeof(r->error_message),
                     "the upstream answered %ld and no fallback answered",
                     call->status);
        }
        return;
    case GW_UP_TIMEOUT:
        r->reason = GW_REASON_TIMEOUT;
        r->error_kind = GW_KIND_TIMEOUT;
        snprintf(r->error_message, sizeof(r->error_message),
                 "the upstream did not answer within %ld ms", call->timeout_ms);
        break;
    case GW_UP_CANCELLED:
        r->error_kind = GW_KIND_SHUTTING_DOWN;
        snprintf(r->error_message, sizeof(r->error_message),
                 "the gateway is shutting down");
        break;
    case GW_UP_NOMEM:
        r->error_kind = GW_KIND_INTERNAL;
        snprintf(r->error_message, sizeof(r->error_message), "out of memory");
        break;
    default:
        r->reason = GW_REASON_UPSTREAM_ERROR;
        r->error_kind = GW_KIND_UPSTREAM_ERROR;
        snprintf(r->error_message, sizeof(r->error_message),
                 "the upstream call failed: %s",
                 gw_upstream_outcome_name(call->outcome));
        break;
    }
    r->result = RESULT_ERROR;
}

/* --- fallbacks
 * ------------------------------------------------------------------ */

static void
alternate_submit(struct request *r, const struct gw_fallback *fb)
{
    struct gw_upstream_call *call = &r->call;

    free(call->url);
    call->url = build_url(r, fb->upstream_url, fb->upstream_base);
    if (call->url == NULL) {
        r->result = RESULT_ERROR;
        r->result_fallback = NULL;
        r->error_kind = GW_KIND_INTERNAL;
        snprintf(r->error_message, sizeof(r->error_message), "out of memory");
        call_finish(r);
        return;
    }
    r->on_alternate = true;
    call->connect_timeout_ms = fb->connect_timeout_ms;
    call->timeout_ms = fb->timeout_ms;
    gw_header_list_clear(&call->response_headers);
    r->attempt_started = wk_clock_now(NULL);
    gw_upstream_submit(r->srv->upstream, call);
}

/*
 * Walks the route's fallbacks for r->reason from r->next_fallback on, in
 * order. A static fallback responds, a stale one responds when the cache has
 * the response; an upstream one must be called. Returns that upstream
 * fallback (the caller submits it), or NULL when the result is final: a
 * fallback answered, or none applies and the gateway's error stands.
 */
static const struct gw_fallback *
walk_fallbacks(struct request *r)
{
    const struct gw_route *route = r->route;

    while (r->next_fallback < route->fallback_count) {
        const struct gw_fallback *fb = &route->fallbacks[r->next_fallback++];

        if (!(fb->on & r->reason))
            continue;
        switch (fb->kind) {
        case GW_FALLBACK_STATIC:
            r->result = RESULT_STATIC;
            r->result_fallback = fb;
            return NULL;
        case GW_FALLBACK_STALE:
            if (strcmp(r->method, "GET") != 0 || r->runtime->stale == NULL)
                continue;
            if (gw_stale_get(r->runtime->stale, r->target,
                             WK_MSEC(fb->max_age_ms), wk_clock_now(NULL),
                             &r->stale)) {
                r->result = RESULT_STALE;
                r->result_fallback = fb;
                return NULL;
            }
            continue;
        case GW_FALLBACK_UPSTREAM:
            r->result_fallback = fb;
            return fb;
        }
    }
    return NULL;
}

/* Runs the fallback chain from a step of the call: true when the result is
 * final, false when an alternate upstream call is now in flight. */
static bool
run_fallbacks(struct request *r)
{
    const struct gw_fallback *alternate = walk_fallbacks(r);

    if (alternate == NULL)
        return true;
    alternate_submit(r, alternate);
    return false;
}

/* --- the promise step
 * ---------------------------------------------------------- */

/* Resumes the request's suspended connection. The loop thread drives the
 * listener: from another thread it must be woken to send the response. */
static void
resume(struct request *r)
{
    MHD_resume_connection(r->conn);
    gw_upstream_wake(r->srv->upstream);
}

/* Settles the promise with the result: the connection resumes and sends
 * it. */
static void
call_settle(struct request *r)
{
    if (r->result_fallback != NULL)
        gw_metrics_fallback(request_metrics(r),
                            (enum gw_fallback_reason)r->reason);
    wk_settle(r->settle, WK_OK, (struct wk_value){0});
}

/* Ends the call's hold on the route and on the request. */
static void
call_release(struct request *r)
{
    if (r->bulkhead_held) {
        r->bulkhead_held = false;
        wk_bulkhead_release(r->runtime->bulkhead);
    }
    request_put(r); /* the call's reference */
}

/* Ends the call: settles the promise, gives back the bulkhead slot. */
static void
call_finish(struct request *r)
{
    call_settle(r);
    call_release(r);
}

/*
 * Decides whether a response whose body outgrew the buffer may stream to the
 * client. A status under 500 is final under any retry policy or fallback,
 * so it streams. A 5xx may still be retried or replaced by a fallback,
 * so its body is read whole (bounded by max_response_bytes).
 */
static bool
may_stream(const struct gw_upstream_call *call)
{
    const struct request *r = call->user;

    if (call->status < 200 || call->status >= 500)
        return false;
    /* An HTTP/1.0 client has no chunked coding, so without a declared
     * length its body ends at the close, and a body cut short would look
     * whole. Such a body is read whole first. */
    if (call->content_length[0] == '\0' &&
        strcmp(r->version, MHD_HTTP_VERSION_1_1) != 0)
        return false;
    return true;
}

/*
 * Runs on the loop thread when the response starts to stream: the result is
 * the upstream's response and the client gets its head now. The call keeps
 * its reference, its bulkhead slot and its breaker permit until the transfer
 * ends (on_attempt_done).
 */
static void
on_stream(struct gw_upstream_call *call)
{
    struct request *r = call->user;

    r->streaming = true;
    r->result = RESULT_UPSTREAM;
    call_settle(r);
}

/* Runs on the loop thread when a streamed body has more bytes for a
 * reader that found none: the connection suspended in reply.c resumes. */
static void
on_readable(struct gw_upstream_call *call)
{
    struct request *r = call->user;

    /* Before the resume: libmicrohttpd may close the socket after it. */
    gw_upstream_unwatch(r->srv->upstream, &r->stream_watch);
    resume(r);
}

/* Decides after a final failure of the primary upstream: fallbacks, then
 * the end of the call. */
static void
primary_done(struct request *r)
{
    classify_final(r);
    if (r->reason != 0 && !run_fallbacks(r))
        return; /* an alternate upstream call is in flight */
    call_finish(r);
}

static void
on_retry_timer(void *arg, wk_time now)
{
    struct request *r = arg;

    (void)now;
    attempt_submit(r);
}

/*
 * Arms the backoff timer for another attempt when the retry policy allows
 * one. Returns true when a retry is scheduled.
 */
static bool
schedule_retry(struct request *r, wk_time now)
{
    struct wk_retry_outcome o = retry_outcome(r);
    wk_duration delay = 0;

    if (r->runtime == NULL || r->runtime->retry == NULL ||
        o.kind == WK_RETRY_ATTEMPT_OK || r->call.outcome == GW_UP_CANCELLED)
        return false;
    enum wk_retry_decision d = wk_retry_decide(r->runtime->retry, r->attempts,
                                               &o, now, r->deadline, &delay);
    if (d != WK_RETRY_ALLOW) {
        gw_log_debug("call: no retry (%s) route=%s attempt=%u request_id=%llu",
                     wk_retry_decision_name(d), r->route->name, r->attempts,
                     (unsigned long long)r->id);
        return false;
    }
    gw_metrics_retry(request_metrics(r));
    if (wk_timer_add(gw_upstream_timers(r->srv->upstream), &r->retry_timer,
                     now + delay, on_retry_timer, r) != WK_OK)
        return false;
    return true;
}

/* Runs on the upstream loop thread when an attempt has ended. */
static void
on_attempt_done(struct gw_upstream_call *call)
{
    struct request *r = call->user;
    wk_time now = wk_clock_now(NULL);
    wk_duration latency = now - r->attempt_started;

    gw_metrics_upstream(request_metrics(r), call->outcome, latency);
    if (call->outcome != GW_UP_OK && call->outcome != GW_UP_CANCELLED) {
        /* One line per route and outcome every few seconds, with a count
         * of the repeats, so a dead upstream cannot flood the log. */
        char key[GW_LOG_KEY_MAX];
        snprintf(key, sizeof(key), "upstream %s %s", r->route->name,
                 gw_upstream_outcome_name(call->outcome));
        gw_log_limited(GW_LOG_WARN, key,
                       "call: upstream %s failed: %s (%s) route=%s "
                       "attempt=%u request_id=%llu",
                       call->url, gw_upstream_outcome_name(call->outcome),
                       call->error, r->route->name, r->attempts,
                       (unsigned long long)r->id);
    }

    if (r->streaming) {
        /* The client has the head and part of the body, so a failure now
         * can only cut the body short. reply.c then closes the connection,
         * which shows the client the body is incomplete. */
        if (r->breaker_held) {
            /* A transfer a slow client paused may run past timeout_ms
             * through no fault of the upstream: not counted against it. */
            int err = attempt_error(call);
            if (err != WK_OK && call->paused_once)
                err = WK_ERR_CANCELLED;
            r->breaker_held = false;
            wk_breaker_after(r->runtime->breaker, &r->permit, err, latency,
                             now);
        }
        call_release(r);
        return;
    }
    if (r->on_alternate) {
        /* A fallback upstream responded: use it unless it failed too. */
        if (call->outcome == GW_UP_OK && call->status < 500) {
            r->result = RESULT_UPSTREAM;
            call_finish(r);
            return;
        }
        /* The gateway's error for the primary failure is sent unless a
         * later fallback responds. */
        r->on_alternate = false;
        r->result = RESULT_ERROR;
        r->result_fallback = NULL;
        if (!run_fallbacks(r))
            return;
        call_finish(r);
        return;
    }

    if (r->breaker_held) {
        r->breaker_held = false;
        wk_breaker_after(r->runtime->breaker, &r->permit, attempt_error(call),
                         latency, now);
    }
    if (schedule_retry(r, now))
        return;
    primary_done(r);
}

/* Starts one attempt at the primary upstream, taking a breaker permit. */
static void
attempt_submit(struct request *r)
{
    wk_time now = wk_clock_now(NULL);
    struct gw_upstream_call *call = &r->call;

    if (r->attempts > 0 && r->runtime->breaker != NULL) {
        /* A retry passes the breaker like any attempt. */
        if (wk_breaker_before(r->runtime->breaker, now, &r->permit) != WK_OK) {
            r->result = RESULT_ERROR;
            r->reason = GW_REASON_BREAKER_OPEN;
            r->error_kind = GW_KIND_BREAKER_OPEN;
            r->retry_after = r->permit.retry_after;
            snprintf(r->error_message, sizeof(r->error_message),
                     "the circuit breaker opened during retries");
            if (run_fallbacks(r))
                call_finish(r);
            return;
        }
        r->breaker_held = true;
    }
    r->attempts++;
    wk_duration left = r->deadline - now;
    long left_ms =
        left <= 0 ? 1
                  : (long)((left + WK_NSEC_PER_MSEC - 1) / WK_NSEC_PER_MSEC);
    long per_try =
        r->route->retry.enabled && r->route->retry.per_try_timeout_ms > 0
            ? r->route->retry.per_try_timeout_ms
            : left_ms;
    call->timeout_ms = per_try < left_ms ? per_try : left_ms;
    if (call->connect_timeout_ms > call->timeout_ms)
        call->connect_timeout_ms = call->timeout_ms;
    gw_header_list_clear(&call->response_headers);
    r->attempt_started = now;
    gw_upstream_submit(r->srv->upstream, call);
}

/* Runs on the loop thread when a client waiting for a bulkhead slot hangs
 * up: its place in the queue goes to the next one. */
static void
on_client_hangup(struct gw_hangup_watch *watch)
{
    struct request *r =
        (struct request *)((char *)watch - offsetof(struct request, hangup));

    atomic_store(&r->client_left, true);
    wk_bulkhead_cancel_wait(r->runtime->bulkhead, &r->waiter);
}

static void
release_watch(struct gw_hangup_watch *watch)
{
    request_put(
        (struct request *)((char *)watch - offsetof(struct request, hangup)));
}

/* Starts watching the client of a request about to wait for a bulkhead
 * slot. Without a watch the request still waits, only blind to a hang-up. */
static void
watch_client(struct request *r)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);

    if (info == NULL)
        return;
    r->hangup.fd = info->connect_fd;
    r->hangup.on_hangup = on_client_hangup;
    r->hangup.on_release = release_watch;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    if (gw_upstream_watch(r->srv->upstream, &r->hangup) != 0)
        atomic_fetch_sub_explicit(&r->refs, 1, memory_order_relaxed);
}

/* Runs when a queued request gets a bulkhead slot, or stops waiting. */
static void
on_bulkhead_admit(void *arg, int err)
{
    struct request *r = arg;

    /* Before the connection can resume: libmicrohttpd may close the
     * socket after that. */
    gw_upstream_unwatch(r->srv->upstream, &r->hangup);
    if (err == WK_OK) {
        r->bulkhead_held = true;
        attempt_submit(r);
        return;
    }
    if (r->breaker_held) {
        r->breaker_held = false;
        wk_breaker_after(r->runtime->breaker, &r->permit, err, 0,
                         wk_clock_now(NULL));
    }
    r->result = RESULT_ERROR;
    if (err != WK_ERR_CANCELLED) {
        r->reason = GW_REASON_BULKHEAD_FULL;
        r->error_kind = GW_KIND_BULKHEAD_FULL;
        snprintf(r->error_message, sizeof(r->error_message),
                 "no bulkhead slot freed within max_wait_ms");
    } else if (atomic_load(&r->client_left)) {
        r->error_kind = GW_KIND_CLIENT_CLOSED;
        snprintf(r->error_message, sizeof(r->error_message),
                 "the client closed the connection while waiting for a "
                 "bulkhead slot");
    } else {
        r->error_kind = GW_KIND_SHUTTING_DOWN;
        snprintf(r->error_message, sizeof(r->error_message),
                 "the gateway is shutting down");
    }
    if (r->reason == 0 || run_fallbacks(r))
        call_finish(r);
}

static void
cancel_call(void *arg)
{
    struct request *r = arg;

    gw_upstream_cancel(r->srv->upstream, &r->call);
}

/* The promise's asynchronous step: starts the call on its first step. */
static void
call_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
          struct wk_settle *settle)
{
    struct request *r = arg;

    (void)ctx;
    (void)last;
    r->settle = settle;
    wk_settle_on_cancel(settle, cancel_call, r);
}

/* Runs where the promise settles; resumes the connection. */
static void
on_settled(void *arg, int err, struct wk_value *value)
{
    struct request *r = arg;

    (void)value;
    r->err = err;
    resume(r);
}

/*
 * Suspends the connection and starts the promise whose step runs the call.
 * Returns MHD_YES, or queues an error when the promise cannot be made.
 */
static enum MHD_Result
go_async(struct request *r, enum call_start_kind kind, wk_time now)
{
    struct wk_step step = {
        .run_async = call_step, .arg = r, .key = r->route->name};
    struct wk_promise_opts opts = {.key = r->route->name,
                                   .deadline = r->deadline};

    r->promise = wk_promise_new(&opts, &step);
    if (r->promise == NULL ||
        wk_promise_on_settle(r->promise, on_settled, r) != WK_OK)
        return reply_error(r, GW_KIND_INTERNAL, NULL, "out of memory");

    /* Suspend before anything can settle, so the settle always finds the
     * connection suspended. */
    r->state = WAIT_CALL;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    MHD_suspend_connection(r->conn);
    if (wk_promise_start(r->promise) != WK_OK) {
        atomic_fetch_sub_explicit(&r->refs, 1, memory_order_relaxed);
        r->result = RESULT_ERROR;
        r->error_kind = GW_KIND_INTERNAL;
        snprintf(r->error_message, sizeof(r->error_message), "out of memory");
        resume(r);
        return MHD_YES;
    }

    /* The step has run: r->settle is set. Start the work it stands for. */
    switch (kind) {
    case START_ATTEMPT:
        attempt_submit(r);
        break;
    case START_ALTERNATE:
        alternate_submit(r, r->result_fallback);
        break;
    case START_BULKHEAD: {
        bool queued = false;
        int err =
            wk_bulkhead_acquire_async(r->runtime->bulkhead, &r->waiter,
                                      gw_upstream_timers(r->srv->upstream), now,
                                      on_bulkhead_admit, r, &queued);
        /* This is the loop thread, which both admits waiters and handles
         * hang-ups, so neither can happen before the watch is armed. */
        if (err == WK_OK && queued)
            watch_client(r);
        else if (err == WK_OK && !queued)
            on_bulkhead_admit(r, WK_OK);
        else if (err != WK_OK)
            on_bulkhead_admit(r,
                              err == WK_ERR_NOMEM ? WK_ERR_BULKHEAD_FULL : err);
        break;
    }
    }
    return MHD_YES;
}

/*
 * Responds to a request that admission rejected: a static or stale fallback at
 * once, an alternate upstream asynchronously, or the gateway's error.
 */
static enum MHD_Result
reject(struct request *r, unsigned reason, enum gw_error_kind kind,
       wk_duration retry_after, const char *message)
{
    r->result = RESULT_ERROR;
    r->reason = reason;
    r->error_kind = kind;
    r->retry_after = retry_after;
    snprintf(r->error_message, sizeof(r->error_message), "%s", message);

    if (walk_fallbacks(r) != NULL)
        return prepare_and_go(r, r->version, START_ALTERNATE,
                              wk_clock_now(NULL));
    if (r->result_fallback != NULL)
        gw_metrics_fallback(request_metrics(r),
                            (enum gw_fallback_reason)reason);
    return reply_result(r);
}

/* Returns the rate-limit key of the request, or NULL for the shared bucket. */
static const char *
limit_key(const struct request *r)
{
    switch (r->route->rate_limit.key) {
    case GW_LIMIT_KEY_CLIENT_IP:
        return r->client_ip;
    case GW_LIMIT_KEY_HEADER: {
        const char *v = MHD_lookup_connection_value(
            r->conn, MHD_HEADER_KIND, r->route->rate_limit.header);
        return v != NULL ? v : "";
    }
    case GW_LIMIT_KEY_GLOBAL:
        break;
    }
    return NULL;
}

/* Builds the upstream request, then starts the call asynchronously. */
static enum MHD_Result
prepare_and_go(struct request *r, const char *version,
               enum call_start_kind kind, wk_time now)
{
    bool bad_request;

    if (prepare_call(r, version, &bad_request) != 0) {
        if (r->bulkhead_held) {
            r->bulkhead_held = false;
            wk_bulkhead_release(r->runtime->bulkhead);
        }
        if (r->breaker_held) {
            r->breaker_held = false;
            wk_breaker_after(r->runtime->breaker, &r->permit, WK_ERR_CANCELLED,
                             0, now);
        }
        if (bad_request)
            return reply_error(r, GW_KIND_BAD_REQUEST, NULL,
                               "too many Connection header fields");
        return reply_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    }
    return go_async(r, kind, now);
}

enum MHD_Result
call_start(struct request *r, const char *version)
{
    struct gw_route_runtime *rt = r->runtime;
    wk_time now = wk_clock_now(NULL);

    /* After the drain the upstream loop is gone, so a request that still
     * arrives on an open connection gets 503. */
    if (gw_upstream_stopped(r->srv->upstream))
        return reply_error(r, GW_KIND_SHUTTING_DOWN, NULL,
                           "the gateway is shutting down");
    r->idempotent = is_idempotent(r->method);
    /* timeout_ms counts from here, once the request is read: a slow upload
     * does not use up the upstream's time. */
    r->deadline = now + WK_MSEC(r->route->timeout_ms);
    r->version = version;

    if (rt->limiter != NULL) {
        wk_duration wait = 0;
        int err = wk_ratelimit_take(rt->limiter, limit_key(r), now, &wait);
        if (err == WK_ERR_RATE_LIMITED)
            return reject(r, GW_REASON_RATE_LIMITED, GW_KIND_RATE_LIMITED, wait,
                          "the route's rate limit is exceeded");
        if (err == WK_ERR_INVALID)
            return reply_error(r, GW_KIND_BAD_REQUEST, NULL,
                               "the %s header is too long to be a rate-limit "
                               "key",
                               r->route->rate_limit.header);
        /* WK_ERR_NOMEM: a new key could not be stored; admit the call
         * rather than fail it. */
    }
    if (rt->breaker != NULL) {
        if (wk_breaker_before(rt->breaker, now, &r->permit) != WK_OK)
            return reject(r, GW_REASON_BREAKER_OPEN, GW_KIND_BREAKER_OPEN,
                          r->permit.retry_after,
                          "the route's circuit breaker is open");
        r->breaker_held = true;
    }
    if (rt->retry != NULL)
        wk_retry_record_call(rt->retry, now);
    if (rt->bulkhead != NULL) {
        /* With a queue, acquire_async takes a free slot as well; a failed
         * try_acquire first would count a rejection for a request that then
         * only waits. */
        if (r->route->bulkhead.lib.max_wait > 0)
            return prepare_and_go(r, version, START_BULKHEAD, now);
        if (wk_bulkhead_try_acquire(rt->bulkhead) == WK_OK) {
            r->bulkhead_held = true;
        } else {
            if (r->breaker_held) {
                r->breaker_held = false;
                wk_breaker_after(rt->breaker, &r->permit, WK_ERR_BULKHEAD_FULL,
                                 0, now);
            }
            return reject(r, GW_REASON_BULKHEAD_FULL, GW_KIND_BULKHEAD_FULL, 0,
                          "the route's bulkhead is full");
        }
    }
    return prepare_and_go(r, version, START_ATTEMPT, now);
}
