/*
 * One proxied request, shared by the files that carry it: proxy.c (the
 * libmicrohttpd handlers), call.c (admission, upstream attempts, retries and
 * fallbacks) and reply.c (the response sent back).
 *
 * Threads: the upstream loop thread drives the listener, so the handlers,
 * the attempts and the response mostly run on that one thread. Other
 * threads take part in a few steps (a promise deadline, the admin listener
 * reading metrics, the shutdown). Fields
 * that those steps share are atomics or belong to whichever thread runs
 * the step, as the promise settle orders them.
 *
 * Lifetime: reference counted. libmicrohttpd holds one reference from the
 * request's first byte to its completion callback, and the call holds one
 * while it is in flight.
 */
#ifndef GATEWAY_REQUEST_H
#define GATEWAY_REQUEST_H

#include <arpa/inet.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "policy.h"
#include "proxy.h"
#include "server.h"
#include "stale.h"
#include "upstream.h"
#include "workshop/bulkhead.h"
#include "workshop/breaker.h"
#include "workshop/clock.h"
#include "workshop/promise.h"
#include "workshop/timer.h"

enum request_state {
    READ_HEAD,
    READ_BODY,
    WAIT_CALL, /* suspended until the call settles */
};

/* The source of the response. */
enum request_result {
    RESULT_UPSTREAM, /* call.status, call.response_headers and body */
    RESULT_STATIC,   /* a static fallback: result_fallback */
    RESULT_STALE,    /* the stale copy */
    RESULT_ERROR,    /* the gateway's error: error_kind */
};

struct request {
    struct gw_server *srv;
    struct MHD_Connection *conn;
    struct gw_config_ref *config;
    const struct gw_route *route;
    struct gw_route_runtime *runtime; /* route->runtime, or NULL */
    char *target;                     /* normalized path and raw query */
    size_t path_len; /* length of target's path, before any '?' */
    const char *method;
    const char *version; /* "HTTP/1.1"; kept by libmicrohttpd */
    uint64_t id;
    enum request_state state;
    char client_ip[INET6_ADDRSTRLEN];
    bool body_too_large;
    bool send_body;
    /* An error response decided from the head, sent once the body is
     * read so the connection can stay open. */
    bool deferred;
    enum gw_error_kind deferred_kind;
    char deferred_message[96];
    char allow[128];
    struct gw_buf body;
    wk_time started;
    _Atomic int refs;

    /* The call. */
    struct gw_upstream_call call;
    struct wk_promise *promise;
    struct wk_settle *settle;
    wk_time deadline; /* the whole call, retries included */
    wk_time attempt_started;
    uint32_t attempts; /* upstream attempts started */
    bool idempotent;
    bool breaker_held;  /* an admitted attempt owes wk_breaker_after() */
    bool bulkhead_held; /* a slot owes wk_bulkhead_release() */
    struct wk_breaker_permit permit;
    struct wk_bulkhead_waiter waiter;
    /* Watches the client while it waits for a bulkhead slot; holds a
     * reference to the request until released. */
    struct gw_hangup_watch hangup;
    _Atomic bool client_left; /* the watch saw the client hang up */
    /* Watches the client while its streamed response waits for upstream
     * bytes. Armed and disarmed on the loop thread only; no reference. */
    struct gw_hangup_watch stream_watch;
    struct wk_timer retry_timer;
    bool on_alternate; /* the call in flight is a fallback upstream */
    /* The response streams: the call settled once its body outgrew
     * limits.response_buffer_bytes, and its transfer goes on (reply.c reads
     * it with gw_upstream_read_body()). */
    bool streaming;

    /* The outcome. */
    int err; /* the promise's result */
    enum request_result result;
    unsigned reason;      /* the enum gw_fallback_reason that applied */
    size_t next_fallback; /* the first fallback not yet tried */
    const struct gw_fallback *result_fallback; /* the fallback that responded */
    enum gw_error_kind error_kind;
    char error_message[128];
    wk_duration retry_after; /* for Retry-After; 0 when unknown */
    struct gw_stale_copy stale;
};

/* Drops a reference; the last one frees the request (proxy.c). */
void request_put(struct request *r);

/* Returns the metrics the request counts in (proxy.c). */
struct gw_route_metrics *request_metrics(struct request *r);

/*
 * Runs admission and starts the upstream call for a request whose body is
 * complete (call.c). Either queues a response at once (a rejection answered
 * by the gateway or by a static or stale fallback) or suspends the
 * connection until the call settles.
 */
enum MHD_Result call_start(struct request *r, const char *version);

/*
 * Sends the response for a request: its result after the call, or the
 * gateway's error (reply.c).
 */
enum MHD_Result reply_result(struct request *r);
enum MHD_Result reply_error(struct request *r, enum gw_error_kind kind,
                            const char *allow, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* GATEWAY_REQUEST_H */
