/*
 * Upstream HTTP calls on an event loop: one thread runs epoll and a libcurl
 * multi handle, so thousands of calls are in flight without a thread each,
 * and connections to upstreams are kept and reused across calls.
 *
 * A caller fills a struct gw_upstream_call and submits it from any thread.
 * From then on the loop thread owns the call until it invokes call->done,
 * exactly once, on the loop thread, whatever the outcome (also when the call
 * is cancelled or the loop stops). The caller must keep the call's memory
 * valid until done has run.
 *
 * The loop can also drive one other event source (the traffic listener's
 * libmicrohttpd daemon), so that a request is read, proxied and responded
 * to on one thread without a handoff.
 *
 * Thread safety: gw_upstream_submit() and gw_upstream_cancel() may be called
 * from any thread. gw_upstream_new(), gw_upstream_set_source(),
 * gw_upstream_start() and gw_upstream_destroy() from one.
 */
#ifndef GATEWAY_UPSTREAM_H
#define GATEWAY_UPSTREAM_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wk_timer_queue;

struct gw_header {
    char *name;
    char *value;
};

/* Header fields in the order received, repeats kept. Owns its strings. */
struct gw_header_list {
    struct gw_header *items;
    size_t count;
    size_t capacity;
};

void gw_header_list_clear(struct gw_header_list *list);
/* Appends a copy of name and value. Returns 0, or -1 when out of memory. */
int gw_header_list_add(struct gw_header_list *list, const char *name,
                       size_t name_len, const char *value, size_t value_len);

enum gw_upstream_outcome {
    GW_UP_OK,             /* a complete response arrived */
    GW_UP_CONNECT_FAILED, /* no connection could be made */
    GW_UP_TIMEOUT,        /* connect_timeout_ms or timeout_ms passed */
    GW_UP_PROTOCOL,       /* reset, early close, or an invalid response */
    GW_UP_TOO_LARGE,      /* head or body over its limit */
    GW_UP_CANCELLED,      /* gw_upstream_cancel() or the loop stopped */
    GW_UP_NOMEM,          /* out of memory */
};

/* Returns a short static name for outcome ("connect failed", ...). */
const char *gw_upstream_outcome_name(enum gw_upstream_outcome outcome);

struct gw_upstream;
struct gw_stream;

/* The result of gw_upstream_read_body(). */
enum gw_body_read {
    GW_BODY_DATA,   /* bytes were copied */
    GW_BODY_WAIT,   /* none yet: on_readable runs when some arrive */
    GW_BODY_END,    /* the whole body has been read */
    GW_BODY_FAILED, /* the transfer failed after the head: the body is cut */
};

struct gw_upstream_call {
    /* Request: set by the caller before submitting. */
    const char *method;         /* borrowed */
    char *url;                  /* owned by the call, freed at reset */
    struct curl_slist *headers; /* owned by the call, freed at reset */
    const char *body;           /* borrowed */
    size_t body_len;
    bool send_body; /* frame a body (possibly empty) with Content-Length */
    long connect_timeout_ms;
    long timeout_ms;
    size_t max_head_bytes;
    size_t max_body_bytes;
    void (*done)(struct gw_upstream_call *call); /* runs on the loop thread */
    void *user;

    /*
     * Streaming, optional (NULL may_stream: the body is always read whole).
     * A body up to buffer_bytes is read whole before done() runs. When it
     * grows past that, may_stream() decides (call->status is set): false
     * reads it whole up to max_body_bytes; true makes the call a stream and
     * runs on_stream(). From then on the caller reads the body with
     * gw_upstream_read_body() while it arrives, at most about buffer_bytes
     * are held, and done() runs when the transfer ends. on_readable() runs
     * when a reader that got GW_BODY_WAIT can read again. All three run on
     * the loop thread; on_readable() runs without the stream's lock.
     */
    size_t buffer_bytes;
    bool (*may_stream)(const struct gw_upstream_call *call);
    void (*on_stream)(struct gw_upstream_call *call);
    void (*on_readable)(struct gw_upstream_call *call);

    /* Result: valid in done(). */
    enum gw_upstream_outcome outcome;
    long status;
    struct gw_header_list response_headers;
    char *response_body; /* malloc'ed; the caller may take it and NULL it */
    size_t response_len;
    char error[CURL_ERROR_SIZE];

    /* Private to the loop. */
    size_t response_capacity;
    size_t head_bytes;
    CURL *easy;
    struct gw_upstream_call *next;
    struct gw_upstream_call *cancel_next;
    struct gw_upstream_call *active_prev;
    struct gw_upstream_call *active_next;
    struct gw_upstream_call *unpause_next;
    struct gw_stream *stream; /* set once the call streams; freed at reset */
    size_t streamed;          /* body bytes taken into the stream */
    bool stream_refused;      /* may_stream() returned false */
    bool reader_left;         /* the reader closed the stream early */
    bool paused_once;         /* a slow reader paused the transfer */
    bool cancel_queued;
    bool unpause_queued;
    bool finished;
    bool over_limit;
    bool invalid_head;       /* a field the gateway cannot forward safely */
    char content_length[24]; /* the first Content-Length value seen */
};

/*
 * Makes a loop; gw_upstream_start() starts its thread. max_idle_connections
 * bounds the connections kept open for reuse. Returns NULL on failure (the
 * reason is logged).
 */
struct gw_upstream *gw_upstream_new(long max_idle_connections);

/*
 * Another event source for the loop thread to drive: run(arg) is called in
 * every round of the loop, which wakes when fd is readable and sleeps at
 * most timeout_ms(arg) milliseconds (-1: no limit of its own). After
 * gw_upstream_stop() has ended the calls, the loop goes on driving the source
 * while busy(arg) is true, for up to half a second, so that the responses to
 * those calls go out.
 */
struct gw_loop_source {
    int fd;
    void (*run)(void *arg);
    long (*timeout_ms)(void *arg);
    bool (*busy)(void *arg);
    void *arg;
};

/* Sets the loop's other event source. Call before gw_upstream_start(). */
void gw_upstream_set_source(struct gw_upstream *up,
                            const struct gw_loop_source *source);

/* Starts the loop thread. Returns 0, or -1 after logging why. */
int gw_upstream_start(struct gw_upstream *up);

/* Makes the loop run a round soon (and so drive its source), unless this
 * is the loop thread, which runs one before it sleeps anyway. */
void gw_upstream_wake(struct gw_upstream *up);

/* Runs fn(arg) on the loop thread, soon. Returns 0, or -1 when the loop
 * has stopped (fn does not run). */
int gw_upstream_post(struct gw_upstream *up, void (*fn)(void *arg), void *arg);

/*
 * Hands call to the loop. The loop resets the call's result fields first.
 * Never blocks on the network. On the loop thread the call starts at once,
 * and done may run before this returns.
 */
void gw_upstream_submit(struct gw_upstream *up, struct gw_upstream_call *call);

/*
 * Asks the loop to abort call; its done() then runs with GW_UP_CANCELLED
 * unless it already finished. Only valid between submit and done.
 */
void gw_upstream_cancel(struct gw_upstream *up, struct gw_upstream_call *call);

/*
 * Stops the loop: calls still in flight finish with GW_UP_CANCELLED, and
 * calls submitted from then on finish at once, on the submitting thread,
 * with GW_UP_CANCELLED. Joins the thread. up stays valid until
 * gw_upstream_destroy(). Safe on NULL and when called twice.
 */
void gw_upstream_stop(struct gw_upstream *up);

/* Returns true once gw_upstream_stop() has begun. */
bool gw_upstream_stopped(struct gw_upstream *up);

/* Stops the loop if it runs, frees everything, sets *up to NULL. Safe on
 * NULL. No other thread may use up any more. */
void gw_upstream_destroy(struct gw_upstream **up);

/*
 * Returns the loop's timer queue: callbacks of timers added to it run on the
 * loop thread. Timers still pending when the loop stops never run.
 */
struct wk_timer_queue *gw_upstream_timers(struct gw_upstream *up);

/*
 * Reads the body of a streaming call: copies up to max bytes into buf and
 * sets *n. When no byte is there yet it calls wait(wait_arg) under the
 * stream's lock (so on_readable cannot run before wait has returned) and
 * returns GW_BODY_WAIT. Call from one reader thread at a time.
 */
enum gw_body_read gw_upstream_read_body(struct gw_upstream *up,
                                        struct gw_upstream_call *call,
                                        char *buf, size_t max, size_t *n,
                                        void (*wait)(void *arg),
                                        void *wait_arg);

/*
 * Ends the reading of a streaming call: a transfer still running is
 * cancelled, and on_readable never runs again. Call once, from the reader.
 */
void gw_upstream_close_body(struct gw_upstream *up,
                            struct gw_upstream_call *call);

/*
 * A watch on a client socket for the peer hanging up. libmicrohttpd does not
 * look at a suspended connection's socket, so the loop's epoll watches it for
 * a request that waits.
 *
 * The caller fills fd and the callbacks and keeps the watch's memory valid
 * until on_release() has run. A watch without on_release is never queued for
 * release, so it can be armed again at once; it is for a caller on the loop
 * thread whose memory outlives the loop's current round. Both callbacks run
 * on the loop thread, or, for on_release() after the loop has ended, in
 * gw_upstream_destroy().
 */
struct gw_hangup_watch {
    int fd;
    void (*on_hangup)(struct gw_hangup_watch *watch);  /* at most once */
    void (*on_release)(struct gw_hangup_watch *watch); /* once, last; or NULL */

    /* Private to the loop. */
    _Atomic bool armed;
    struct gw_hangup_watch *release_next;
};

/*
 * Starts watching watch->fd. Returns 0, or -1 when the loop cannot watch
 * it (then neither callback runs). Call from any thread.
 */
int gw_upstream_watch(struct gw_upstream *up, struct gw_hangup_watch *watch);

/*
 * Stops a watch started with gw_upstream_watch(). Unless on_hangup() has
 * begun already, it never runs. on_release() runs afterwards on the loop
 * thread, once the loop can no longer see the socket's events. Safe on a
 * watch that was never started or has ended. Call from any thread.
 */
void gw_upstream_unwatch(struct gw_upstream *up, struct gw_hangup_watch *watch);

/* Frees what the call owns (url, headers, response) and clears it. */
void gw_upstream_call_reset(struct gw_upstream_call *call);

#endif /* GATEWAY_UPSTREAM_H */
