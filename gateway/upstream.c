/*
 * The upstream event loop: epoll plus a libcurl multi handle in socket mode.
 *
 * Other threads hand calls over through a mutex-protected queue and an
 * eventfd. Everything else (easy handles, the multi handle, epoll
 * registrations, the curl timer) is touched only by the loop thread.
 */
#include "upstream.h"

#include <errno.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "workshop/clock.h"
#include "workshop/timer.h"

#define EVENTS_PER_WAIT 256
#define EASY_CACHE_MAX  1024

struct gw_upstream {
    pthread_t thread;
    int epoll_fd;
    int event_fd;
    CURLM *multi;

    pthread_mutex_t lock; /* guards the queues and stopping */
    struct gw_upstream_call *submit_head;
    struct gw_upstream_call *submit_tail;
    struct gw_upstream_call *cancel_head;
    struct gw_upstream_call *unpause_head;
    struct gw_hangup_watch *release_head; /* unwatched, to release */
    struct gw_post *post_head;            /* gw_upstream_post() */
    struct gw_post *post_tail;
    bool stopping;
    _Atomic bool stop_requested; /* read on the request path without the lock */
    bool stopped; /* the loop has ended: submissions finish at once */
    bool joined;  /* gw_upstream_stop() has joined the thread */
    bool started; /* gw_upstream_start() made the thread */

    struct gw_loop_source source; /* source.run is NULL without one */

    /* Loop thread only. */
    struct wk_timer_queue *timers;   /* retry backoffs, bulkhead waits */
    int64_t timer_deadline_ms;       /* -1: no curl timer pending */
    struct gw_upstream_call *active; /* calls added to the multi handle */
    CURL *easy_cache[EASY_CACHE_MAX];
    size_t easy_cached;
};

/*
 * The body of a streaming call between the loop thread, which appends what
 * curl delivers, and the reader, which takes it out: bytes [start,
 * start + used) of data. When a piece does not fit, curl is paused until
 * the reader has made room for it.
 */
struct gw_stream {
    pthread_mutex_t lock;
    char *data;
    size_t capacity;
    size_t start;
    size_t used;
    size_t pending;      /* while paused: the size of the piece curl kept */
    bool paused;         /* on_body returned CURL_WRITEFUNC_PAUSE */
    bool reader_waiting; /* the reader got GW_BODY_WAIT */
    bool reader_gone;    /* gw_upstream_close_body() was called */
    bool ended;          /* the transfer is over */
    bool failed;         /* ... and it did not deliver the whole body */
};

/* The maximum libcurl hands to a write callback at once (CURL_MAX_WRITE_SIZE),
 * so a stream always has room for one piece beyond buffer_bytes. */
#define STREAM_PIECE 16384

/* A function to run on the loop thread. */
struct gw_post {
    void (*fn)(void *arg);
    void *arg;
    struct gw_post *next;
};

/* Marks the epoll registration of the loop source's descriptor. */
#define SOURCE_TAG (UINT64_C(1) << 62)

/* How long the loop keeps driving a busy source after the calls ended. */
#define SOURCE_LINGER_MS 500

/* Marks an epoll registration whose data is a struct gw_hangup_watch
 * rather than a file descriptor (curl's sockets and the eventfd). */
#define WATCH_TAG (UINT64_C(1) << 63)

static const char *const outcome_names[] = {
    [GW_UP_OK] = "ok",
    [GW_UP_CONNECT_FAILED] = "connect failed",
    [GW_UP_TIMEOUT] = "timed out",
    [GW_UP_PROTOCOL] = "protocol error",
    [GW_UP_TOO_LARGE] = "response too large",
    [GW_UP_CANCELLED] = "cancelled",
    [GW_UP_NOMEM] = "out of memory",
};

const char *
gw_upstream_outcome_name(enum gw_upstream_outcome outcome)
{
    return outcome_names[outcome];
}

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- header lists ------------------------------------------------------ */

void
gw_header_list_clear(struct gw_header_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        free(list->items[i].name);
        free(list->items[i].value);
    }
    free(list->items);
    memset(list, 0, sizeof(*list));
}

int
gw_header_list_add(struct gw_header_list *list, const char *name,
                   size_t name_len, const char *value, size_t value_len)
{
    if (list->count == list->capacity) {
        size_t cap = list->capacity ? list->capacity * 2 : 16;
        struct gw_header *items = realloc(list->items, cap * sizeof(*items));
        if (items == NULL)
            return -1;
        list->items = items;
        list->capacity = cap;
    }
    char *n = strndup(name, name_len);
    char *v = strndup(value, value_len);
    if (n == NULL || v == NULL) {
        free(n);
        free(v);
        return -1;
    }
    list->items[list->count].name = n;
    list->items[list->count].value = v;
    list->count++;
    return 0;
}

void
gw_upstream_call_reset(struct gw_upstream_call *call)
{
    free(call->url);
    call->url = NULL;
    curl_slist_free_all(call->headers);
    call->headers = NULL;
    gw_header_list_clear(&call->response_headers);
    free(call->response_body);
    call->response_body = NULL;
    call->response_len = 0;
    call->response_capacity = 0;
    if (call->stream != NULL) {
        pthread_mutex_destroy(&call->stream->lock);
        free(call->stream->data);
        free(call->stream);
        call->stream = NULL;
    }
}

/* --- curl callbacks (loop thread) --------------------------------------- */

/* Appends a folded continuation line to the last header's value. */
static int
unfold_header(struct gw_header_list *list, const char *line, size_t len)
{
    if (list->count == 0)
        return -1;
    struct gw_header *h = &list->items[list->count - 1];
    size_t old = strlen(h->value);
    char *v = realloc(h->value, old + 1 + len + 1);
    if (v == NULL)
        return -1;
    v[old] = ' ';
    memcpy(v + old + 1, line, len);
    v[old + 1 + len] = '\0';
    h->value = v;
    return 0;
}

/*
 * Receives the response head one line at a time. A status line starts a new
 * head (after 1xx responses); a name: value line is one field.
 */
static size_t
on_header(char *data, size_t size, size_t count, void *arg)
{
    struct gw_upstream_call *call = arg;
    size_t len = size * count;
    size_t total = len;

    /* Trailer fields of a streamed body arrive here too: the head has been
     * handed to the reader already, so they are dropped. */
    if (call->stream != NULL)
        return total;
    call->head_bytes += len;
    if (call->head_bytes > call->max_head_bytes) {
        call->over_limit = true;
        return 0;
    }
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;
    if (len == 0)
        return total; /* the blank line that ends a head */
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        gw_header_list_clear(&call->response_headers);
        call->content_length[0] = '\0';
        return total;
    }
    if (data[0] == ' ' || data[0] == '\t') {
        size_t skip = 0;
        while (skip < len && (data[skip] == ' ' || data[skip] == '\t'))
            skip++;
        return unfold_header(&call->response_headers, data + skip,
                             len - skip) == 0
                   ? total
                   : 0;
    }
    const char *colon = memchr(data, ':', len);
    if (colon == NULL || colon == data)
        return 0; /* not a field line: an invalid head */
    const char *value = colon + 1;
    const char *end = data + len;
    while (value < end && (*value == ' ' || *value == '\t'))
        value++;
    while (end > value && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    for (const char *c = value; c < end; c++) {
        if (((unsigned char)*c < ' ' && *c != '\t') || *c == 0x7f) {
            call->invalid_head = true; /* could split the client's head */
            return 0;
        }
    }
    /* Differing Content-Length values leave the body's end unknown (RFC
     * 9112, 6.3); libcurl would believe one of them. */
    if ((size_t)(colon - data) == 14 &&
        strncasecmp(data, "Content-Length", 14) == 0) {
        size_t value_len = (size_t)(end - value);
        if (call->content_length[0] != '\0' &&
            (strlen(call->content_length) != value_len ||
             strncmp(call->content_length, value, value_len) != 0)) {
            call->invalid_head = true;
            return 0;
        }
        snprintf(call->content_length, sizeof(call->content_length), "%.*s",
                 (int)(value_len < sizeof(call->content_length) - 1
                           ? value_len
                           : sizeof(call->content_length) - 1),
                 value);
    }
    if (gw_header_list_add(&call->response_headers, data,
                           (size_t)(colon - data), value,
                           (size_t)(end - value)) != 0)
        return 0;
    return total;
}

/*
 * Appends a piece of a streamed body. Returns len, CURL_WRITEFUNC_PAUSE when
 * it does not fit yet (curl hands the same piece again once unpaused), or 0
 * to abort the transfer.
 */
static size_t
stream_write(struct gw_upstream_call *call, const char *data, size_t len)
{
    struct gw_stream *s = call->stream;

    if (call->streamed + len > call->max_body_bytes) {
        call->over_limit = true;
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    if (s->reader_gone) {
        pthread_mutex_unlock(&s->lock);
        call->reader_left = true;
        return 0;
    }
    if (s->capacity - s->start - s->used < len && s->start > 0) {
        memmove(s->data, s->data + s->start, s->used);
        s->start = 0;
    }
    if (len > s->capacity) {
        /* Only a piece larger than the whole buffer: room for it alone. */
        char *grown = realloc(s->data, len);
        if (grown == NULL) {
            pthread_mutex_unlock(&s->lock);
            return 0;
        }
        s->data = grown;
        s->capacity = len;
    }
    if (s->capacity - s->start - s->used < len) {
        s->paused = true;
        call->paused_once = true;
        s->pending = len;
        pthread_mutex_unlock(&s->lock);
        return CURL_WRITEFUNC_PAUSE;
    }
    memcpy(s->data + s->start + s->used, data, len);
    s->used += len;
    bool wake = s->reader_waiting;
    s->reader_waiting = false;
    pthread_mutex_unlock(&s->lock);
    call->streamed += len;
    if (wake)
        call->on_readable(call);
    return len;
}

/* Turns the call into a stream holding the body read so far. */
static int
stream_begin(struct gw_upstream_call *call)
{
    struct gw_stream *s = calloc(1, sizeof(*s));
    size_t capacity = call->buffer_bytes > call->response_len
                          ? call->buffer_bytes
                          : call->response_len;

    if (s == NULL)
        return -1;
    capacity += STREAM_PIECE;
    s->data = realloc(call->response_body, capacity);
    if (s->data == NULL) {
        free(s);
        return -1;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->capacity = capacity;
    s->used = call->response_len;
    call->streamed = call->response_len;
    call->response_body = NULL; /* now s->data */
    call->response_len = 0;
    call->response_capacity = 0;
    call->stream = s;
    return 0;
}

/* Grows the whole-body buffer to hold need bytes and a NUL. */
static int
body_reserve(struct gw_upstream_call *call, size_t need)
{
    if (need + 1 <= call->response_capacity)
        return 0;
    /* A declared length sizes the buffer once (up to where the body may
     * turn into a stream); otherwise it doubles. */
    unsigned long long declared = strtoull(call->content_length, NULL, 10);
    size_t cap = call->response_capacity ? call->response_capacity : 4096;
    if (call->response_capacity == 0 && declared > 0) {
        size_t first = call->may_stream != NULL && !call->stream_refused &&
                               declared > call->buffer_bytes
                           ? call->buffer_bytes
                           : (size_t)declared;
        cap = first + 1;
    }
    while (cap < need + 1)
        cap *= 2;
    char *body = realloc(call->response_body, cap);
    if (body == NULL)
        return -1;
    call->response_body = body;
    call->response_capacity = cap;
    return 0;
}

static size_t
on_body(char *data, size_t size, size_t count, void *arg)
{
    struct gw_upstream_call *call = arg;
    size_t len = size * count;

    if (call->stream != NULL)
        return stream_write(call, data, len);
    if (call->response_len == 0 && call->content_length[0] != '\0' &&
        strtoull(call->content_length, NULL, 10) > call->max_body_bytes) {
        call->over_limit = true; /* declared too large: stop before reading */
        return 0;
    }
    if (call->response_len + len > call->max_body_bytes) {
        call->over_limit = true;
        return 0;
    }
    if (call->response_len + len > call->buffer_bytes &&
        call->may_stream != NULL && !call->stream_refused) {
        curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &call->status);
        if (call->may_stream(call)) {
            if (stream_begin(call) != 0)
                return 0;
            call->on_stream(call);
            return stream_write(call, data, len);
        }
        call->stream_refused = true;
    }
    if (body_reserve(call, call->response_len + len) != 0)
        return 0;
    memcpy(call->response_body + call->response_len, data, len);
    call->response_len += len;
    return len;
}

static int
on_socket(CURL *easy, curl_socket_t fd, int what, void *arg, void *socket_arg)
{
    struct gw_upstream *up = arg;
    struct epoll_event ev = {.data.u64 = (uint64_t)fd};

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        /* curl may have closed fd already; then the kernel dropped it. */
        epoll_ctl(up->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        curl_multi_assign(up->multi, fd, NULL);
        return 0;
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        ev.events |= EPOLLIN;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        ev.events |= EPOLLOUT;
    int op = socket_arg != NULL ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(up->epoll_fd, op, fd, &ev) != 0) {
        int retry = op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        if (epoll_ctl(up->epoll_fd, retry, fd, &ev) != 0) {
            gw_log_error("upstream: epoll_ctl on fd %d failed: %s", fd,
                         strerror(errno));
            return -1;
        }
    }
    curl_multi_assign(up->multi, fd, (void *)1);
    return 0;
}

static int
on_timer(CURLM *multi, long timeout_ms, void *arg)
{
    struct gw_upstream *up = arg;

    (void)multi;
    up->timer_deadline_ms = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    return 0;
}

/* --- calls (loop thread) ------------------------------------------------- */

/*
 * Takes a cached easy handle or makes one. A cached handle keeps its
 * options: start() sets every option a call depends on, which is cheaper
 * than curl_easy_reset() clearing and rebuilding the handle's state.
 */
static CURL *
easy_get(struct gw_upstream *up)
{
    if (up->easy_cached > 0)
        return up->easy_cache[--up->easy_cached];
    return curl_easy_init();
}

static void
easy_put(struct gw_upstream *up, CURL *easy)
{
    if (up->easy_cached < EASY_CACHE_MAX)
        up->easy_cache[up->easy_cached++] = easy;
    else
        curl_easy_cleanup(easy);
}

/* Removes call from the queue at *head linked through the field at
 * offset next_at; the caller holds up->lock. */
static void
unqueue_locked(struct gw_upstream_call **head, struct gw_upstream_call *call,
               size_t next_at)
{
#define NEXT(c) (*(struct gw_upstream_call **)((char *)(c) + next_at))
    for (struct gw_upstream_call **p = head; *p != NULL; p = &NEXT(*p)) {
        if (*p == call) {
            *p = NEXT(call);
            break;
        }
    }
    NEXT(call) = NULL;
#undef NEXT
}

/* Marks the stream of a call that has ended, and wakes a waiting reader. */
static void
stream_end(struct gw_upstream_call *call, enum gw_upstream_outcome outcome)
{
    struct gw_stream *s = call->stream;

    pthread_mutex_lock(&s->lock);
    s->ended = true;
    s->failed = outcome != GW_UP_OK;
    bool wake = s->reader_waiting;
    s->reader_waiting = false;
    pthread_mutex_unlock(&s->lock);
    if (wake)
        call->on_readable(call);
}

/* Ends call with outcome and runs its done callback. */
static void
finish(struct gw_upstream *up, struct gw_upstream_call *call,
       enum gw_upstream_outcome outcome)
{
    if (call->easy != NULL) {
        if (call->active_prev != NULL)
            call->active_prev->active_next = call->active_next;
        else
            up->active = call->active_next;
        if (call->active_next != NULL)
            call->active_next->active_prev = call->active_prev;
        call->active_prev = call->active_next = NULL;
        curl_multi_remove_handle(up->multi, call->easy);
        /* A stream's handle may have been left paused: not reused. */
        if (call->stream != NULL)
            curl_easy_cleanup(call->easy);
        else
            easy_put(up, call->easy);
        call->easy = NULL;
    }
    call->outcome = outcome;
    if (outcome != GW_UP_OK) {
        free(call->response_body);
        call->response_body = NULL;
        call->response_len = 0;
        call->response_capacity = 0;
    }
    pthread_mutex_lock(&up->lock);
    call->finished = true;
    if (call->cancel_queued)
        unqueue_locked(&up->cancel_head, call,
                       offsetof(struct gw_upstream_call, cancel_next));
    if (call->unpause_queued)
        unqueue_locked(&up->unpause_head, call,
                       offsetof(struct gw_upstream_call, unpause_next));
    call->cancel_queued = call->unpause_queued = false;
    pthread_mutex_unlock(&up->lock);
    if (call->stream != NULL)
        stream_end(call, outcome);
    call->done(call);
}

static enum gw_upstream_outcome
classify(const struct gw_upstream_call *call, CURLcode code)
{
    switch (code) {
    case CURLE_OK:
        return GW_UP_OK;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
        return GW_UP_CONNECT_FAILED;
    case CURLE_OPERATION_TIMEDOUT:
        return GW_UP_TIMEOUT;
    case CURLE_OUT_OF_MEMORY:
        /* libcurl 7.88 also reports a response header line over its own
         * 100 KiB cap this way, before on_header is called. */
        return call->status > 0 || call->head_bytes > 0 ? GW_UP_TOO_LARGE
                                                        : GW_UP_PROTOCOL;
    case CURLE_WRITE_ERROR:
        if (call->reader_left)
            return GW_UP_CANCELLED;
        if (call->invalid_head)
            return GW_UP_PROTOCOL;
        return call->over_limit ? GW_UP_TOO_LARGE : GW_UP_NOMEM;
    default:
        return GW_UP_PROTOCOL;
    }
}

/*
 * Sets the method and body. Every option that an earlier call on this
 * handle may have set is set again: NOBODY (HEAD), CUSTOMREQUEST and the
 * POST body.
 */
static void
set_method(CURL *easy, const struct gw_upstream_call *call)
{
    /* A HEAD request never sends a body, even one the client declared:
     * sent as a custom method with a body, libcurl would wait for a
     * response body that never comes. */
    bool head = strcmp(call->method, "HEAD") == 0;

    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, NULL);
    if (head) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
        return;
    }
    curl_easy_setopt(easy, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    if (call->send_body) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)call->body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS,
                         call->body != NULL ? call->body : "");
    }
    if (strcmp(call->method, "GET") != 0 &&
        !(strcmp(call->method, "POST") == 0 && call->send_body))
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, call->method);
}

static void
start(struct gw_upstream *up, struct gw_upstream_call *call)
{
    CURL *easy = easy_get(up);

    call->outcome = GW_UP_OK;
    call->status = 0;
    call->response_len = 0; /* a retry starts a new response */
    call->head_bytes = 0;
    call->over_limit = false;
    call->invalid_head = false;
    call->stream_refused = false;
    call->reader_left = false;
    call->paused_once = false;
    call->streamed = 0;
    call->content_length[0] = '\0';
    call->finished = false;
    call->error[0] = '\0';
    if (easy == NULL) {
        finish(up, call, GW_UP_NOMEM);
        return;
    }
    call->easy = easy;
    curl_easy_setopt(easy, CURLOPT_URL, call->url);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, call);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, call->headers);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, call);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, call->error);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, call->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, call->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    /* Upstream URLs are reached directly: a proxy named in the process's
     * environment (http_proxy and the like) must not reroute them. */
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    /* The gateway forwards bodies exactly as received: no decoding. */
    curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    set_method(easy, call);

    CURLMcode rc = curl_multi_add_handle(up->multi, easy);
    if (rc != CURLM_OK) {
        snprintf(call->error, sizeof(call->error), "%s",
                 curl_multi_strerror(rc));
        curl_easy_cleanup(easy);
        call->easy = NULL;
        finish(up, call, GW_UP_NOMEM);
        return;
    }
    call->active_prev = NULL;
    call->active_next = up->active;
    if (up->active != NULL)
        up->active->active_prev = call;
    up->active = call;
}

static void
collect_finished(struct gw_upstream *up)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(up->multi, &left)) != NULL) {
        struct gw_upstream_call *call = NULL;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&call);
        CURLcode code = msg->data.result;
        /* A stream's status was set before its reader started; the reader
         * may be reading it now. */
        if (call->stream == NULL)
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE,
                              &call->status);
        if (code != CURLE_OK && call->error[0] == '\0')
            snprintf(call->error, sizeof(call->error), "%s",
                     curl_easy_strerror(code));
        if (code == CURLE_OK && call->status < 100) {
            snprintf(call->error, sizeof(call->error), "no status line");
            finish(up, call, GW_UP_PROTOCOL);
            continue;
        }
        finish(up, call, classify(call, code));
    }
}

/* Takes the queued submissions and cancellations and acts on them. */
static bool
drain_queues(struct gw_upstream *up)
{
    uint64_t ignored;
    ssize_t n = read(up->event_fd, &ignored, sizeof(ignored));
    (void)n;

    pthread_mutex_lock(&up->lock);
    struct gw_upstream_call *submitted = up->submit_head;
    up->submit_head = up->submit_tail = NULL;
    struct gw_post *posts = up->post_head;
    up->post_head = up->post_tail = NULL;
    bool stopping = up->stopping;
    pthread_mutex_unlock(&up->lock);

    while (submitted != NULL) {
        struct gw_upstream_call *next = submitted->next;
        submitted->next = NULL;
        start(up, submitted);
        submitted = next;
    }
    /* Cancellations and unpauses are taken one at a time, because finishing
     * one call can free a request whose call waits further on in a queue.
     * finish() takes a call out of both queues under the lock first, so a
     * call still queued is alive. */
    for (;;) {
        pthread_mutex_lock(&up->lock);
        struct gw_upstream_call *c = up->cancel_head;
        if (c != NULL) {
            up->cancel_head = c->cancel_next;
            c->cancel_next = NULL;
            c->cancel_queued = false;
        }
        pthread_mutex_unlock(&up->lock);
        if (c == NULL)
            break;
        if (!c->finished)
            finish(up, c, GW_UP_CANCELLED);
    }
    for (;;) {
        pthread_mutex_lock(&up->lock);
        struct gw_upstream_call *c = up->unpause_head;
        if (c != NULL) {
            up->unpause_head = c->unpause_next;
            c->unpause_next = NULL;
            c->unpause_queued = false;
        }
        pthread_mutex_unlock(&up->lock);
        if (c == NULL)
            break;
        /* The write callback may run in here and pause again. */
        if (!c->finished && c->easy != NULL)
            curl_easy_pause(c->easy, CURLPAUSE_CONT);
    }
    while (posts != NULL) {
        struct gw_post *next = posts->next;
        posts->fn(posts->arg);
        free(posts);
        posts = next;
    }
    return stopping;
}

/* Returns how long epoll may sleep: until curl's timer or the next timer
 * of the queue, whichever comes first, rounded up to whole milliseconds. */
static int
wait_timeout_ms(struct gw_upstream *up)
{
    int64_t left = up->timer_deadline_ms < 0 ? INT64_MAX
                                             : up->timer_deadline_ms - now_ms();
    wk_time next = wk_timer_next_deadline(up->timers);
    if (next != WK_TIME_NEVER) {
        wk_duration ns = next - wk_clock_now(NULL);
        int64_t ms =
            ns <= 0 ? 0 : (ns + WK_NSEC_PER_MSEC - 1) / WK_NSEC_PER_MSEC;
        if (ms < left)
            left = ms;
    }
    if (up->source.run != NULL) {
        long ms = up->source.timeout_ms(up->source.arg);
        if (ms >= 0 && ms < left)
            left = ms;
    }
    if (left == INT64_MAX)
        return -1;
    if (left <= 0)
        return 0;
    return left > 60000 ? 60000 : (int)left;
}

static void
cancel_all(struct gw_upstream *up)
{
    while (up->active != NULL)
        finish(up, up->active, GW_UP_CANCELLED);
}

/* Runs on_release for every watch unwatched so far. */
static void
run_releases(struct gw_upstream *up)
{
    pthread_mutex_lock(&up->lock);
    struct gw_hangup_watch *list = up->release_head;
    up->release_head = NULL;
    pthread_mutex_unlock(&up->lock);

    while (list != NULL) {
        struct gw_hangup_watch *next = list->release_next;
        list->release_next = NULL;
        list->on_release(list);
        list = next;
    }
}

/*
 * Ends every call the loop still owns, and everything waiting on a timer:
 * pending timers run at once (their callbacks see the calls they start
 * cancelled), so no request waits for a retry or a bulkhead slot that will
 * never come. Calls submitted from here on finish at once on the submitting
 * thread.
 */
static void
shut_down(struct gw_upstream *up)
{
    pthread_mutex_lock(&up->lock);
    up->stopped = true;
    pthread_mutex_unlock(&up->lock);
    for (;;) {
        drain_queues(up);
        cancel_all(up);
        if (wk_timer_run_due(up->timers, WK_TIME_NEVER - 1) > 0)
            continue;
        run_releases(up);
        pthread_mutex_lock(&up->lock);
        bool idle = up->submit_head == NULL && up->active == NULL &&
                    up->release_head == NULL;
        pthread_mutex_unlock(&up->lock);
        if (idle && wk_timer_count(up->timers) == 0)
            break;
    }
}

/*
 * Handles a hang-up on a watched socket. A watch unwatched meanwhile is
 * left alone: its release is queued and runs after this round of events.
 */
static void
on_watch_event(struct gw_upstream *up, struct gw_hangup_watch *watch)
{
    if (!atomic_exchange(&watch->armed, false))
        return;
    epoll_ctl(up->epoll_fd, EPOLL_CTL_DEL, watch->fd, NULL);
    watch->on_hangup(watch);
    /* epoll reports a socket once per round, so nothing else in this round
     * can name the watch. */
    if (watch->on_release != NULL)
        watch->on_release(watch);
}

/*
 * Drives the source after the calls have ended, while it is busy sending
 * their responses, for up to SOURCE_LINGER_MS.
 */
static void
linger(struct gw_upstream *up)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    int64_t end = now_ms() + SOURCE_LINGER_MS;

    if (up->source.run == NULL)
        return;
    up->source.run(up->source.arg);
    while (up->source.busy(up->source.arg)) {
        int64_t left = end - now_ms();
        if (left <= 0)
            break;
        int timeout = wait_timeout_ms(up);
        if (timeout < 0 || timeout > left)
            timeout = (int)left;
        if (epoll_wait(up->epoll_fd, events, EVENTS_PER_WAIT, timeout) < 0 &&
            errno != EINTR)
            break;
        drain_queues(up);
        up->source.run(up->source.arg);
        run_releases(up);
    }
}

static void *
loop_main(void *arg)
{
    struct gw_upstream *up = arg;
    struct epoll_event events[EVENTS_PER_WAIT];
    int running;

    for (;;) {
        int n = epoll_wait(up->epoll_fd, events, EVENTS_PER_WAIT,
                           wait_timeout_ms(up));
        if (n < 0 && errno != EINTR) {
            gw_log_error("upstream: epoll_wait failed: %s", strerror(errno));
            break;
        }
        bool stopping = false;
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 & SOURCE_TAG)
                continue; /* the source runs below, every round */
            if (events[i].data.u64 & WATCH_TAG) {
                on_watch_event(
                    up,
                    (struct gw_hangup_watch *)(uintptr_t)(events[i].data.u64 &
                                                          ~WATCH_TAG));
                continue;
            }
            int fd = (int)events[i].data.u64;
            if (fd == up->event_fd) {
                stopping = drain_queues(up);
                continue;
            }
            int flags = 0;
            if (events[i].events & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (events[i].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (events[i].events & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(up->multi, fd, flags, &running);
        }
        if (up->timer_deadline_ms >= 0 && now_ms() >= up->timer_deadline_ms) {
            up->timer_deadline_ms = -1;
            curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0,
                                     &running);
        }
        collect_finished(up);
        wk_timer_run_due(up->timers, wk_clock_now(NULL));
        collect_finished(up);
        /* Every round: besides its own events and timeout, the calls that
         * ended above may have resumed connections the source must serve,
         * and a resume does not wake the loop. */
        if (up->source.run != NULL)
            up->source.run(up->source.arg);
        /* Last: the events above were the last that could name them. */
        run_releases(up);
        if (stopping)
            break;
    }
    shut_down(up);
    linger(up);
    return NULL;
}

/* --- public ----------------------------------------------------------------
 */

static void
wake(struct gw_upstream *up)
{
    uint64_t one = 1;
    ssize_t n = write(up->event_fd, &one, sizeof(one));
    (void)n; /* a full counter still wakes the loop */
}

static void
wake_timers(void *arg)
{
    struct gw_upstream *up = arg;

    /* An earlier deadline: the loop recomputes how long it may sleep, and
     * does so anyway before it sleeps again when this is its own thread. */
    if (!pthread_equal(pthread_self(), up->thread))
        wake(up);
}

void
gw_upstream_wake(struct gw_upstream *up)
{
    if (!up->started || !pthread_equal(pthread_self(), up->thread))
        wake(up);
}

struct wk_timer_queue *
gw_upstream_timers(struct gw_upstream *up)
{
    return up->timers;
}

void
gw_upstream_submit(struct gw_upstream *up, struct gw_upstream_call *call)
{
    call->next = NULL;
    call->finished = false;
    pthread_mutex_lock(&up->lock);
    if (up->stopped) {
        call->finished = true;
        pthread_mutex_unlock(&up->lock);
        call->outcome = GW_UP_CANCELLED;
        call->status = 0;
        snprintf(call->error, sizeof(call->error), "the gateway is stopping");
        call->done(call);
        return;
    }
    if (up->started && pthread_equal(pthread_self(), up->thread)) {
        /* On the loop thread (a request read by the source): no handoff. */
        pthread_mutex_unlock(&up->lock);
        start(up, call);
        return;
    }
    bool was_empty = up->submit_head == NULL;
    if (up->submit_tail != NULL)
        up->submit_tail->next = call;
    else
        up->submit_head = call;
    up->submit_tail = call;
    pthread_mutex_unlock(&up->lock);
    if (was_empty)
        wake(up);
}

void
gw_upstream_cancel(struct gw_upstream *up, struct gw_upstream_call *call)
{
    pthread_mutex_lock(&up->lock);
    if (!call->finished && !call->cancel_queued) {
        call->cancel_queued = true;
        call->cancel_next = up->cancel_head;
        up->cancel_head = call;
    }
    pthread_mutex_unlock(&up->lock);
    wake(up);
}

/* Asks the loop to unpause a stream's transfer. */
static void
unpause(struct gw_upstream *up, struct gw_upstream_call *call)
{
    pthread_mutex_lock(&up->lock);
    bool queue = !call->finished && !call->unpause_queued;
    if (queue) {
        call->unpause_queued = true;
        call->unpause_next = up->unpause_head;
        up->unpause_head = call;
    }
    pthread_mutex_unlock(&up->lock);
    if (queue)
        wake(up);
}

enum gw_body_read
gw_upstream_read_body(struct gw_upstream *up, struct gw_upstream_call *call,
                      char *buf, size_t max, size_t *n, void (*wait)(void *arg),
                      void *wait_arg)
{
    struct gw_stream *s = call->stream;
    enum gw_body_read result;

    *n = 0;
    pthread_mutex_lock(&s->lock);
    if (s->reader_gone) {
        /* gw_upstream_close_body() ran (the client hung up): the body
         * will never be whole. */
        pthread_mutex_unlock(&s->lock);
        return GW_BODY_FAILED;
    }
    if (s->used > 0) {
        size_t take = s->used < max ? s->used : max;
        memcpy(buf, s->data + s->start, take);
        s->start += take;
        s->used -= take;
        if (s->used == 0)
            s->start = 0;
        bool resume = s->paused && s->capacity - s->used >= s->pending;
        if (resume)
            s->paused = false;
        pthread_mutex_unlock(&s->lock);
        if (resume)
            unpause(up, call);
        *n = take;
        return GW_BODY_DATA;
    }
    if (s->ended) {
        result = s->failed ? GW_BODY_FAILED : GW_BODY_END;
    } else {
        result = GW_BODY_WAIT;
        s->reader_waiting = true;
        wait(wait_arg);
    }
    pthread_mutex_unlock(&s->lock);
    return result;
}

void
gw_upstream_close_body(struct gw_upstream *up, struct gw_upstream_call *call)
{
    struct gw_stream *s = call->stream;

    pthread_mutex_lock(&s->lock);
    s->reader_gone = true;
    s->reader_waiting = false;
    bool ended = s->ended;
    pthread_mutex_unlock(&s->lock);
    if (!ended)
        gw_upstream_cancel(up, call);
}

int
gw_upstream_watch(struct gw_upstream *up, struct gw_hangup_watch *watch)
{
    /* Only the hang-up: bytes the client sends meanwhile (a pipelined
     * request) are libmicrohttpd's to read later. */
    struct epoll_event ev = {
        .events = EPOLLRDHUP,
        .data.u64 = (uint64_t)(uintptr_t)watch | WATCH_TAG,
    };

    pthread_mutex_lock(&up->lock);
    bool stopped = up->stopped;
    pthread_mutex_unlock(&up->lock);
    if (stopped)
        return -1;
    watch->release_next = NULL;
    atomic_store(&watch->armed, true);
    if (epoll_ctl(up->epoll_fd, EPOLL_CTL_ADD, watch->fd, &ev) != 0) {
        atomic_store(&watch->armed, false);
        gw_log_warn("upstream: cannot watch client socket %d: %s", watch->fd,
                    strerror(errno));
        return -1;
    }
    return 0;
}

void
gw_upstream_unwatch(struct gw_upstream *up, struct gw_hangup_watch *watch)
{
    if (!atomic_exchange(&watch->armed, false))
        return;
    epoll_ctl(up->epoll_fd, EPOLL_CTL_DEL, watch->fd, NULL);
    if (watch->on_release == NULL)
        return;
    pthread_mutex_lock(&up->lock);
    watch->release_next = up->release_head;
    up->release_head = watch;
    pthread_mutex_unlock(&up->lock);
    wake(up);
}

static void
upstream_free(struct gw_upstream *up)
{
    /* Watches unwatched after the loop ended. */
    run_releases(up);
    while (up->post_head != NULL) {
        struct gw_post *next = up->post_head->next;
        free(up->post_head);
        up->post_head = next;
    }
    wk_timer_queue_destroy(&up->timers);
    for (size_t i = 0; i < up->easy_cached; i++)
        curl_easy_cleanup(up->easy_cache[i]);
    if (up->multi != NULL)
        curl_multi_cleanup(up->multi);
    if (up->epoll_fd >= 0)
        close(up->epoll_fd);
    if (up->event_fd >= 0)
        close(up->event_fd);
    pthread_mutex_destroy(&up->lock);
    free(up);
}

struct gw_upstream *
gw_upstream_new(long max_idle_connections)
{
    struct gw_upstream *up = calloc(1, sizeof(*up));

    if (up == NULL)
        return NULL;
    pthread_mutex_init(&up->lock, NULL);
    up->timer_deadline_ms = -1;
    up->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    up->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    up->multi = curl_multi_init();
    up->timers = wk_timer_queue_new(wake_timers, up);
    if (up->epoll_fd < 0 || up->event_fd < 0 || up->multi == NULL ||
        up->timers == NULL) {
        gw_log_error("upstream: cannot create the event loop: %s",
                     strerror(errno));
        upstream_free(up);
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN,
                             .data.u64 = (uint64_t)up->event_fd};
    epoll_ctl(up->epoll_fd, EPOLL_CTL_ADD, up->event_fd, &ev);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, up);
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, max_idle_connections);
    return up;
}

void
gw_upstream_set_source(struct gw_upstream *up,
                       const struct gw_loop_source *source)
{
    up->source = *source;
}

int
gw_upstream_start(struct gw_upstream *up)
{
    if (up->source.run != NULL) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = SOURCE_TAG};
        if (epoll_ctl(up->epoll_fd, EPOLL_CTL_ADD, up->source.fd, &ev) != 0) {
            gw_log_error("upstream: cannot watch the listener's descriptor "
                         "%d: %s",
                         up->source.fd, strerror(errno));
            return -1;
        }
    }
    pthread_mutex_lock(&up->lock);
    int rc = pthread_create(&up->thread, NULL, loop_main, up);
    up->started = rc == 0;
    pthread_mutex_unlock(&up->lock);
    if (rc != 0) {
        gw_log_error("upstream: cannot start the loop thread: %s",
                     strerror(rc));
        return -1;
    }
    return 0;
}

int
gw_upstream_post(struct gw_upstream *up, void (*fn)(void *arg), void *arg)
{
    struct gw_post *post = malloc(sizeof(*post));

    if (post == NULL)
        return -1;
    *post = (struct gw_post){.fn = fn, .arg = arg};
    pthread_mutex_lock(&up->lock);
    if (up->stopped || !up->started) {
        pthread_mutex_unlock(&up->lock);
        free(post);
        return -1;
    }
    if (up->post_tail != NULL)
        up->post_tail->next = post;
    else
        up->post_head = post;
    up->post_tail = post;
    pthread_mutex_unlock(&up->lock);
    wake(up);
    return 0;
}

bool
gw_upstream_stopped(struct gw_upstream *up)
{
    return atomic_load_explicit(&up->stop_requested, memory_order_acquire);
}

void
gw_upstream_stop(struct gw_upstream *up)
{
    if (up == NULL)
        return;
    atomic_store_explicit(&up->stop_requested, true, memory_order_release);
    pthread_mutex_lock(&up->lock);
    bool joined = up->joined || !up->started;
    up->stopping = true;
    up->joined = true;
    pthread_mutex_unlock(&up->lock);
    if (joined)
        return;
    wake(up);
    pthread_join(up->thread, NULL);
}

void
gw_upstream_destroy(struct gw_upstream **upp)
{
    struct gw_upstream *up = *upp;

    if (up == NULL)
        return;
    gw_upstream_stop(up);
    upstream_free(up);
    *upp = NULL;
}
