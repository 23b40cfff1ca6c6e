/*
 * Internal interfaces of test-upstream, the fault-injecting HTTP/1.1 server
 * that integration tests put behind the gateway.
 *
 * buf.c contains the byte buffer, http.c the incremental request parser,
 * behaviour.c turns a parsed request into a reply (status, delay, body,
 * fault), and test-upstream.c runs the epoll loop and the connections.
 * Everything runs on the one event-loop thread, so nothing here is locked.
 */
#ifndef TESTS_UPSTREAM_UPSTREAM_H
#define TESTS_UPSTREAM_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KIB ((size_t)1024)
#define MIB (KIB * 1024)

/* Largest request head (request line and header fields) accepted. */
#define MAX_HEAD_BYTES MIB
/* Largest number of header fields in one request. */
#define MAX_HEADERS 1000
/* Largest request body accepted, before or after chunked decoding. */
#define MAX_REQUEST_BODY (64 * MIB)
/* Largest body_size a request may ask for. */
#define MAX_RESPONSE_BODY (256 * MIB)

/*
 * A growable byte buffer with a hard cap (max) fixed at buf_init. data is
 * NUL-terminated whenever it is not NULL, so text can be read in place.
 */
struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
/* Makes room for extra more bytes. False if over b->max or out of memory. */
bool buf_reserve(struct buf *b, size_t extra);
bool buf_append(struct buf *b, const void *data, size_t len);
bool buf_append_str(struct buf *b, const char *s);
bool buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends s[0..len) as a JSON string literal, quotes included. */
bool buf_append_json(struct buf *b, const char *s, size_t len);
/* Drops the first n bytes. */
void buf_consume(struct buf *b, size_t n);

/* One header field of a request, pointing into request.head. */
struct header {
    const char *name;
    const char *value;
};

/*
 * A parsed request. head is an owned copy of the request head with every
 * field NUL-terminated in place. Method, target, version and the headers
 * point into it.
 */
struct request {
    char *head;
    const char *method;
    const char *target;
    const char *version;
    int minor_version; /* 0 for HTTP/1.0, 1 for HTTP/1.1 */
    struct header *headers;
    size_t header_count;
    bool keep_alive;      /* the connection may serve another request */
    bool expect_continue; /* the client waits for "100 Continue" */
    bool chunked;         /* the body came with chunked transfer coding */
    uint64_t content_length;
    struct buf body; /* decoded body */
};

enum parse_state {
    PARSE_HEAD,
    PARSE_BODY,
    PARSE_CHUNK_SIZE,
    PARSE_CHUNK_DATA,
    PARSE_CHUNK_END,
    PARSE_TRAILER,
    PARSE_DONE,
};

enum parse_result {
    PARSE_MORE,  /* every byte of the input was used, more are needed */
    PARSE_OK,    /* a whole request is in parser.req */
    PARSE_ERROR, /* invalid request: reply error_status and close */
};

struct parser {
    enum parse_state state;
    size_t scan;        /* where the search for the end of the head resumes */
    uint64_t remaining; /* body or chunk bytes still to come */
    size_t trailer_bytes;
    struct request req;
    int error_status;       /* with PARSE_ERROR: the status to reply */
    const char *error_text; /* with PARSE_ERROR: a static reason */
};

void parser_init(struct parser *p);
/* Frees the request and gets ready for the next one. */
void parser_reset(struct parser *p);
/*
 * Parses bytes from the front of in and consumes those it used. Returns
 * PARSE_OK once a request is complete (bytes of the next one stay in in),
 * PARSE_MORE when in is used up, PARSE_ERROR on a malformed request.
 */
enum parse_result parser_feed(struct parser *p, struct buf *in);
/* True when the head has arrived and a body is still to come. */
bool parser_wants_body(const struct parser *p);

/* Returns the value of the first header named name (any case), or NULL. */
const char *request_header(const struct request *req, const char *name);

/* The fault that action= (or fail_action=) requests. */
enum action {
    ACTION_NONE,
    ACTION_CLOSE,          /* close without a reply */
    ACTION_RESET,          /* close with a TCP reset */
    ACTION_CLOSE_MID_BODY, /* the head, half the body, then close */
    ACTION_STALL_BODY,     /* the head, half the body, then silence */
    ACTION_BAD_HEAD,       /* a malformed status line */
    ACTION_HUGE_HEAD,      /* a head with a 1 MiB header field */
    ACTION_STALL,          /* never reply */
};

/* Maximum length of a key= value. */
#define MAX_KEY_BYTES 256

/*
 * The behaviour a request selects, from its X-Test-* header fields and
 * then its query parameters, so a query parameter overrides a header.
 */
struct params {
    int status;
    unsigned delay_ms;
    bool has_body_size;
    uint64_t body_size;
    bool echo;
    bool mirror;
    bool chunked;
    enum action action;
    struct buf extra_headers; /* "Name: value\r\n" lines from header= */
    bool extra_content_type;  /* header= set a Content-Type */
    char key[MAX_KEY_BYTES + 1];
    uint64_t fail_first;
    int fail_status;
    enum action fail_action;
    unsigned chaos_percent;
    uint64_t seed;
    char error[256]; /* the reason, when params_read failed */
};

/*
 * Reads the behaviour parameters of req into prm. Returns false with
 * prm->error set when one is invalid. Call params_free in both cases.
 */
bool params_read(struct params *prm, const struct request *req);
void params_free(struct params *prm);
/* Returns the name of an action, as action= spells it. */
const char *action_name(enum action action);

/* What the connection does once the reply's bytes are written. */
enum finish {
    FINISH_KEEP,  /* read the next request */
    FINISH_CLOSE, /* close the connection (FIN) */
    FINISH_RESET, /* close with a TCP reset (SO_LINGER 0) */
    FINISH_STALL, /* send nothing more, wait for the client to close */
};

/* The server's reply to one request, sent after delay_ms. */
struct reply {
    uint64_t id;
    unsigned delay_ms;
    struct buf out; /* the bytes to send: head and (part of the) body */
    enum finish finish;
    int status;         /* for the log, 0 when no head is sent */
    const char *action; /* for the log: "close", "reset", ... or NULL */
};

struct key_count {
    char *key;
    uint64_t count;
};

/* Counters and state shared by every connection. */
struct upstream_state {
    uint64_t requests; /* requests served since start or /__reset */
    uint64_t sequence; /* id of the last request, never reset */
    struct key_count *keys;
    size_t key_count;
    size_t key_cap;
    uint64_t chaos_seed;
    uint64_t chaos_draws; /* random draws taken with chaos_seed */
    size_t open_connections;
};

void upstream_state_destroy(struct upstream_state *st);
/*
 * Builds the reply to req. Never fails: a request with invalid parameters
 * gets a 400 reply, and running out of memory gets a closed connection.
 * The caller owns reply->out and frees it with reply_free.
 */
void upstream_respond(struct upstream_state *st, const struct request *req,
                      struct reply *reply);
/* Builds the reply to a request the parser rejected. */
void upstream_respond_error(struct upstream_state *st, int status,
                            const char *reason, struct reply *reply);
void reply_free(struct reply *reply);

#endif /* TESTS_UPSTREAM_UPSTREAM_H */
