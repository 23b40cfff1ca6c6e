/*
 * test-upstream: a fault-injecting HTTP/1.1 server for the integration
 * tests. Each request picks its reply with query parameters or X-Test-*
 * header fields (see behaviour.c and params.c): a status, a delay, a body,
 * or a protocol fault such as a reset or a truncated body.
 *
 *   test-upstream [--listen HOST:PORT] [--quiet]
 *
 * It binds (default 127.0.0.1:0), prints "port=N" on stdout, then serves
 * until SIGTERM or SIGINT and exits 0. One thread runs an epoll loop over
 * non-blocking sockets, and delayed replies wait on a timer heap, so thousands
 * of connections can wait at once.
 */
#include "upstream.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Bytes read from a socket per call, and the maximum per event. */
#define READ_CHUNK  (64 * KIB)
#define READ_BUDGET MIB
/* Input kept per connection: a full head plus pipelined requests. */
#define MAX_INPUT (4 * MIB)
/* Pause before accepting again after running out of file descriptors. */
#define ACCEPT_PAUSE_MS 50
#define MAX_EVENTS      256

enum conn_state {
    CONN_READING, /* reading a request */
    CONN_WAITING, /* reply built, waiting for its delay on the timer heap */
    CONN_WRITING, /* sending out */
    CONN_STALLED, /* sending nothing more until the client closes */
};

struct conn {
    int fd;
    enum conn_state state;
    struct buf in;
    struct buf out;
    size_t out_off; /* bytes of out already sent */
    struct parser parser;
    struct reply reply;
    bool peer_eof; /* the client shut down its side */
    bool continue_sent;
    uint32_t events; /* the epoll interest set now registered */
    int64_t deadline_ms;
    size_t heap_index; /* position on the timer heap, SIZE_MAX if absent */
    struct conn *prev;
    struct conn *next;
};

struct server {
    int epoll_fd;
    int listen_fd;
    int signal_fd;
    bool quiet;
    bool stop;
    bool accept_paused;
    int64_t accept_resume_ms;
    int64_t now_ms; /* read once per loop iteration */
    struct conn *conns;
    struct conn **heap; /* min-heap of waiting connections by deadline */
    size_t heap_len;
    size_t heap_cap;
    struct upstream_state st;
};

static int64_t
monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- timer heap --------------------------------------------------------- */

static void
heap_swap(struct server *s, size_t a, size_t b)
{
    struct conn *t = s->heap[a];
    s->heap[a] = s->heap[b];
    s->heap[b] = t;
    s->heap[a]->heap_index = a;
    s->heap[b]->heap_index = b;
}

static void
heap_up(struct server *s, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (s->heap[parent]->deadline_ms <= s->heap[i]->deadline_ms)
            break;
        heap_swap(s, i, parent);
        i = parent;
    }
}

static void
heap_down(struct server *s, size_t i)
{
    for (;;) {
        size_t least = i;
        size_t l = 2 * i + 1;
        size_t r = l + 1;
        if (l < s->heap_len &&
            s->heap[l]->deadline_ms < s->heap[least]->deadline_ms)
            least = l;
        if (r < s->heap_len &&
            s->heap[r]->deadline_ms < s->heap[least]->deadline_ms)
            least = r;
        if (least == i)
            return;
        heap_swap(s, i, least);
        i = least;
    }
}

static bool
heap_push(struct server *s, struct conn *c)
{
    if (s->heap_len == s->heap_cap) {
        size_t cap = s->heap_cap == 0 ? 64 : s->heap_cap * 2;
        struct conn **heap = realloc(s->heap, cap * sizeof(*heap));
        if (heap == NULL)
            return false;
        s->heap = heap;
        s->heap_cap = cap;
    }
    c->heap_index = s->heap_len;
    s->heap[s->heap_len++] = c;
    heap_up(s, c->heap_index);
    return true;
}

static void
heap_remove(struct server *s, struct conn *c)
{
    size_t i = c->heap_index;
    if (i == SIZE_MAX)
        return;
    c->heap_index = SIZE_MAX;
    s->heap_len--;
    if (i == s->heap_len)
        return;
    s->heap[i] = s->heap[s->heap_len];
    s->heap[i]->heap_index = i;
    heap_up(s, i);
    heap_down(s, s->heap[i]->heap_index);
}

/* --- connections -------------------------------------------------------- */

static void
conn_close(struct server *s, struct conn *c, bool reset)
{
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    heap_remove(s, c);
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->st.open_connections--;

    buf_free(&c->in);
    buf_free(&c->out);
    parser_reset(&c->parser);
    reply_free(&c->reply);
    free(c);
}

static bool
input_has_room(const struct conn *c)
{
    return c->in.len + READ_CHUNK + 1 <= c->in.max;
}

/* Registers the epoll interest the connection's state calls for. */
static void
conn_update_events(struct server *s, struct conn *c)
{
    uint32_t events = 0;
    if (!c->peer_eof && input_has_room(c))
        events |= EPOLLIN;
    if (c->out_off < c->out.len)
        events |= EPOLLOUT;
    if (events == c->events)
        return;

    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(s->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = events;
}

/* Reads what the socket has. False if the connection failed. */
static bool
conn_fill(struct conn *c)
{
    size_t budget = READ_BUDGET;
    while (budget > 0 && !c->peer_eof) {
        /* A stalled connection only watches for the client closing. */
        if (c->state == CONN_STALLED)
            buf_consume(&c->in, c->in.len);
        if (!input_has_room(c) || !buf_reserve(&c->in, READ_CHUNK))
            return true;

        ssize_t n = recv(c->fd, c->in.data + c->in.len, READ_CHUNK, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->in.data[c->in.len] = '\0';
            budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
        } else if (n == 0) {
            c->peer_eof = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return true;
        } else if (errno != EINTR) {
            return false;
        }
    }
    return true;
}

/* Sends pending output. False if the connection failed. */
static bool
conn_flush(struct conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off,
                         c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n >= 0)
            c->out_off += (size_t)n;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            return true;
        else if (errno != EINTR)
            return false;
    }
    /* Give back the memory of a large body, keep a small buffer. */
    if (c->out.cap > MIB)
        buf_free(&c->out);
    c->out.len = 0;
    c->out_off = 0;
    return true;
}

static void
log_reply(const struct server *s, const struct conn *c, bool parsed)
{
    if (s->quiet)
        return;
    const struct request *req = &c->parser.req;
    const struct reply *r = &c->reply;
    fprintf(stderr, "test-upstream: #%llu %s %s -> %d%s%s\n",
            (unsigned long long)r->id, parsed ? req->method : "-",
            parsed ? req->target : c->parser.error_text, r->status,
            r->action != NULL ? " " : "", r->action != NULL ? r->action : "");
}

/* Moves the built reply to the output and starts sending it. */
static bool
conn_start_reply(struct conn *c)
{
    c->state = CONN_WRITING;
    if (c->out.len == 0) {
        buf_free(&c->out);
        c->out = c->reply.out;
        buf_init(&c->reply.out, c->out.max);
        return true;
    }
    bool ok = buf_append(&c->out, c->reply.out.data, c->reply.out.len);
    buf_free(&c->reply.out);
    return ok;
}

/* Builds the reply to the request the parser finished (or rejected). */
static bool
conn_on_request(struct server *s, struct conn *c, enum parse_result r)
{
    if (r == PARSE_ERROR)
        upstream_respond_error(&s->st, c->parser.error_status,
                               c->parser.error_text, &c->reply);
    else
        upstream_respond(&s->st, &c->parser.req, &c->reply);
    log_reply(s, c, r == PARSE_OK);
    parser_reset(&c->parser);
    c->continue_sent = false;

    if (c->reply.delay_ms == 0)
        return conn_start_reply(c);
    c->state = CONN_WAITING;
    c->deadline_ms = s->now_ms + c->reply.delay_ms;
    return heap_push(s, c);
}

/* Parses input. Returns false when the connection must close. */
static bool
conn_read_request(struct server *s, struct conn *c, bool *more)
{
    enum parse_result r = parser_feed(&c->parser, &c->in);
    if (r != PARSE_MORE) {
        *more = true;
        return conn_on_request(s, c, r);
    }

    /* The client waits for "100 Continue" before it sends the body. */
    if (c->parser.req.expect_continue && parser_wants_body(&c->parser) &&
        !c->continue_sent) {
        c->continue_sent = true;
        *more = true;
        return buf_append_str(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    *more = false;
    return !c->peer_eof;
}

/* What conn_advance leaves the connection to do. */
enum step {
    STEP_WAIT,  /* wait for socket events or the timer */
    STEP_CLOSE, /* close the connection */
    STEP_RESET, /* close the connection with a TCP reset */
};

/* Logs a failed recv or send, which ends the connection. */
static void
log_socket_error(const struct server *s, const struct conn *c, const char *call)
{
    if (!s->quiet)
        fprintf(stderr, "test-upstream: #%llu %s failed: %s, closing\n",
                (unsigned long long)c->reply.id, call, strerror(errno));
}

/* Runs the connection's state machine as far as it can go. */
static enum step
conn_advance(struct server *s, struct conn *c)
{
    bool more = true;
    while (more) {
        if (!conn_flush(c)) {
            log_socket_error(s, c, "send");
            return STEP_CLOSE;
        }
        switch (c->state) {
        case CONN_READING:
            if (!conn_read_request(s, c, &more))
                return STEP_CLOSE;
            break;
        case CONN_WAITING:
            /*
             * A client that gives up during the delay frees its connection
             * at once, so /__stats shows it gone. This drops the reply to
             * a client that only half-closed, which HTTP clients rarely do.
             */
            return c->peer_eof ? STEP_CLOSE : STEP_WAIT;
        case CONN_WRITING:
            if (c->out_off < c->out.len)
                return STEP_WAIT;
            reply_free(&c->reply);
            if (c->reply.finish == FINISH_CLOSE)
                return STEP_CLOSE;
            if (c->reply.finish == FINISH_RESET)
                return STEP_RESET;
            c->state =
                c->reply.finish == FINISH_STALL ? CONN_STALLED : CONN_READING;
            break;
        case CONN_STALLED:
            buf_consume(&c->in, c->in.len);
            return c->peer_eof ? STEP_CLOSE : STEP_WAIT;
        }
    }
    return STEP_WAIT;
}

/* Advances c and closes it if it is done, so c may be freed on return. */
static void
conn_step(struct server *s, struct conn *c)
{
    enum step step = conn_advance(s, c);
    if (step == STEP_WAIT)
        conn_update_events(s, c);
    else
        conn_close(s, c, step == STEP_RESET);
}

static void
conn_on_event(struct server *s, struct conn *c, uint32_t events)
{
    /* EPOLLHUP: both directions are shut, nothing can be sent any more. */
    if (events & (EPOLLERR | EPOLLHUP)) {
        conn_close(s, c, false);
        return;
    }
    if ((events & EPOLLIN) && !conn_fill(c)) {
        log_socket_error(s, c, "recv");
        conn_close(s, c, false);
        return;
    }
    conn_step(s, c);
}

static void
conn_open(struct server *s, int fd)
{
    int enable = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &enable, sizeof(enable));

    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->fd = fd;
    c->heap_index = SIZE_MAX;
    c->events = EPOLLIN;
    buf_init(&c->in, MAX_INPUT);
    buf_init(&c->out, MAX_RESPONSE_BODY + 8 * MIB);
    parser_init(&c->parser);

    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        fprintf(stderr, "test-upstream: epoll_ctl(ADD) failed: %s\n",
                strerror(errno));
        free(c);
        close(fd);
        return;
    }
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->st.open_connections++;
}

/* --- listener and loop -------------------------------------------------- */

static void
set_listener_events(struct server *s, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = &s->listen_fd};
    epoll_ctl(s->epoll_fd, EPOLL_CTL_MOD, s->listen_fd, &ev);
}

static void
accept_all(struct server *s)
{
    for (;;) {
        int fd =
            accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_open(s, fd);
            continue;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
            errno == ENOMEM) {
            fprintf(stderr,
                    "test-upstream: accept4 failed: %s; pausing %d ms\n",
                    strerror(errno), ACCEPT_PAUSE_MS);
            s->accept_paused = true;
            s->accept_resume_ms = s->now_ms + ACCEPT_PAUSE_MS;
            set_listener_events(s, 0);
        }
        /* EAGAIN, or a connection that failed before it was accepted. */
        return;
    }
}

static void
run_timers(struct server *s)
{
    if (s->accept_paused && s->now_ms >= s->accept_resume_ms) {
        s->accept_paused = false;
        set_listener_events(s, EPOLLIN);
    }
    while (s->heap_len > 0 && s->heap[0]->deadline_ms <= s->now_ms) {
        struct conn *c = s->heap[0];
        heap_remove(s, c);
        if (conn_start_reply(c))
            conn_step(s, c);
        else
            conn_close(s, c, false);
    }
}

/* Returns the epoll_wait timeout: until the next timer, or -1. */
static int
next_timeout(const struct server *s)
{
    int64_t next = INT64_MAX;
    if (s->heap_len > 0)
        next = s->heap[0]->deadline_ms;
    if (s->accept_paused && s->accept_resume_ms < next)
        next = s->accept_resume_ms;
    if (next == INT64_MAX)
        return -1;
    if (next <= s->now_ms)
        return 0;
    return next - s->now_ms > 60000 ? 60000 : (int)(next - s->now_ms);
}

static void
on_signal(struct server *s)
{
    struct signalfd_siginfo si;
    if (read(s->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (!s->quiet)
            fprintf(stderr, "test-upstream: signal %u, stopping\n",
                    si.ssi_signo);
        s->stop = true;
    }
}

static int
run_loop(struct server *s)
{
    struct epoll_event events[MAX_EVENTS];
    while (!s->stop) {
        int n = epoll_wait(s->epoll_fd, events, MAX_EVENTS, next_timeout(s));
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "test-upstream: epoll_wait failed: %s\n",
                    strerror(errno));
            return 1;
        }
        s->now_ms = monotonic_ms();
        for (int i = 0; i < n; i++) {
            void *ptr = events[i].data.ptr;
            if (ptr == &s->listen_fd)
                accept_all(s);
            else if (ptr == &s->signal_fd)
                on_signal(s);
            else
                conn_on_event(s, ptr, events[i].events);
        }
        run_timers(s);
    }
    return 0;
}

/* --- start-up ----------------------------------------------------------- */

/* Splits "HOST:PORT" or "[V6HOST]:PORT" into host and port. */
static bool
split_host_port(const char *spec, char *host, size_t host_size, char *port,
                size_t port_size)
{
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || colon[1] == '\0' || strlen(colon + 1) >= port_size)
        return false;
    const char *start = spec;
    size_t len = (size_t)(colon - spec);
    if (len >= 2 && spec[0] == '[' && colon[-1] == ']') {
        start++;
        len -= 2;
    }
    if (len == 0 || len >= host_size)
        return false;
    memcpy(host, start, len);
    host[len] = '\0';
    memcpy(port, colon + 1, strlen(colon + 1) + 1);
    return true;
}

/* Binds and listens on spec. Returns the socket or -1. */
static int
open_listener(const char *spec)
{
    char host[256];
    char port[16];
    if (!split_host_port(spec, host, sizeof(host), port, sizeof(port))) {
        fprintf(stderr,
                "test-upstream: invalid --listen \"%s\": expected "
                "HOST:PORT\n",
                spec);
        return -1;
    }

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "test-upstream: cannot resolve \"%s\": %s\n", spec,
                gai_strerror(rc));
        return -1;
    }

    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family,
                    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0)
            continue;
        int enable = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &enable, sizeof(enable));
        /* The kernel caps the backlog at net.core.somaxconn. */
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
            listen(fd, 65535) != 0) {
            fprintf(stderr, "test-upstream: bind/listen on %s failed: %s\n",
                    spec, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

static int
bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Raises the open-file soft limit to the hard limit. */
static void
raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        fprintf(stderr, "test-upstream: setrlimit(RLIMIT_NOFILE) failed: %s\n",
                strerror(errno));
}

/* Creates the epoll set with the listener and a signalfd for TERM/INT. */
static bool
server_init(struct server *s, const char *listen_spec)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    s->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    s->listen_fd = open_listener(listen_spec);
    if (s->signal_fd < 0 || s->epoll_fd < 0 || s->listen_fd < 0)
        return false;

    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &s->listen_fd};
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &s->signal_fd};
    return epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->listen_fd, &lev) == 0 &&
           epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->signal_fd, &sev) == 0;
}

static void
server_destroy(struct server *s)
{
    while (s->conns != NULL)
        conn_close(s, s->conns, false);
    free(s->heap);
    upstream_state_destroy(&s->st);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->signal_fd >= 0)
        close(s->signal_fd);
    if (s->epoll_fd >= 0)
        close(s->epoll_fd);
}

static void
usage(FILE *f)
{
    fprintf(f, "usage: test-upstream [--listen HOST:PORT] [--quiet]\n"
               "  --listen HOST:PORT  address to bind (default 127.0.0.1:0, "
               "any free port)\n"
               "  --quiet             log errors only, not every request\n");
}

int
main(int argc, char **argv)
{
    const char *listen_spec = "127.0.0.1:0";
    struct server s = {.epoll_fd = -1, .listen_fd = -1, .signal_fd = -1};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_spec = argv[++i];
        } else if (strncmp(argv[i], "--listen=", 9) == 0) {
            listen_spec = argv[i] + 9;
        } else if (strcmp(argv[i], "--quiet") == 0) {
            s.quiet = true;
        } else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "test-upstream: unknown argument \"%s\"\n",
                    argv[i]);
            usage(stderr);
            return 2;
        }
    }

    raise_fd_limit();
    int rc = 1;
    if (server_init(&s, listen_spec)) {
        printf("port=%d\n", bound_port(s.listen_fd));
        fflush(stdout);
        s.now_ms = monotonic_ms();
        rc = run_loop(&s);
    }
    server_destroy(&s);
    return rc;
}
