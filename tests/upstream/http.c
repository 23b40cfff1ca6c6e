/*
 * Incremental HTTP/1.x request parser (RFC 9112): request line, header
 * fields kept in order, a body framed by Content-Length or by chunked
 * transfer coding (decoded, trailers dropped), and the keep-alive rules.
 *
 * The parser reads from the front of the connection's input buffer and
 * consumes what it used, so pipelined requests stay queued behind it.
 * Lines may end in CRLF or a bare LF.
 */
#include "upstream.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Maximum length of a chunk-size line, extensions included. */
#define MAX_CHUNK_LINE 4096
/* Maximum size of the trailer section after the last chunk. */
#define MAX_TRAILER_BYTES (64 * KIB)

void
parser_init(struct parser *p)
{
    *p = (struct parser){.state = PARSE_HEAD};
    buf_init(&p->req.body, MAX_REQUEST_BODY);
}

void
parser_reset(struct parser *p)
{
    free(p->req.head);
    free(p->req.headers);
    buf_free(&p->req.body);
    parser_init(p);
}

bool
parser_wants_body(const struct parser *p)
{
    return p->state != PARSE_HEAD && p->state != PARSE_DONE;
}

static enum parse_result
fail(struct parser *p, int status, const char *text)
{
    p->error_status = status;
    p->error_text = text;
    return PARSE_ERROR;
}

const char *
request_header(const struct request *req, const char *name)
{
    for (size_t i = 0; i < req->header_count; i++) {
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    }
    return NULL;
}

/* True if the comma-separated list contains token (any case). */
static bool
list_has_token(const char *list, const char *token)
{
    size_t tlen = strlen(token);
    const char *s = list;
    while (*s != '\0') {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        const char *end = s;
        while (*end != '\0' && *end != ',')
            end++;
        const char *last = end;
        while (last > s && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if ((size_t)(last - s) == tlen && strncasecmp(s, token, tlen) == 0)
            return true;
        s = end;
    }
    return false;
}

/* True if the last transfer coding of the list is chunked. */
static bool
last_coding_is_chunked(const char *list)
{
    const char *last = strrchr(list, ',');
    return list_has_token(last != NULL ? last + 1 : list, "chunked");
}

static bool
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Parses a non-empty run of decimal digits into *out. False on overflow. */
static bool
parse_decimal(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/*
 * Cuts the next line off *cursor in place and returns it, or NULL at the
 * end of the head. A trailing CR is dropped.
 */
static char *
next_line(char **cursor)
{
    char *line = *cursor;
    if (line == NULL || *line == '\0')
        return NULL;
    char *nl = strchr(line, '\n');
    if (nl != NULL) {
        *nl = '\0';
        *cursor = nl + 1;
    } else {
        *cursor = line + strlen(line);
    }
    size_t len = strlen(line);
    if (len > 0 && line[len - 1] == '\r')
        line[len - 1] = '\0';
    return line;
}

/* Splits "METHOD SP target SP HTTP/1.x" in place. */
static enum parse_result
parse_request_line(struct parser *p, char *line)
{
    struct request *req = &p->req;
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 != NULL ? strchr(sp1 + 1, ' ') : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1 ||
        strchr(sp2 + 1, ' ') != NULL)
        return fail(p, 400, "malformed request line");
    *sp1 = '\0';
    *sp2 = '\0';
    req->method = line;
    req->target = sp1 + 1;
    req->version = sp2 + 1;

    for (const char *m = req->method; *m != '\0'; m++) {
        if (!is_tchar((unsigned char)*m))
            return fail(p, 400, "invalid method");
    }
    if (strncmp(req->version, "HTTP/", 5) != 0)
        return fail(p, 400, "invalid HTTP version");
    if (strcmp(req->version + 5, "1.0") == 0)
        req->minor_version = 0;
    else if (strcmp(req->version + 5, "1.1") == 0)
        req->minor_version = 1;
    else
        return fail(p, 505, "only HTTP/1.0 and HTTP/1.1 are served");
    return PARSE_OK;
}

/* Splits "name: value" in place and appends it to the request. */
static enum parse_result
parse_header_line(struct parser *p, char *line)
{
    struct request *req = &p->req;
    if (line[0] == ' ' || line[0] == '\t')
        return fail(p, 400, "obsolete line folding");
    char *colon = strchr(line, ':');
    if (colon == NULL || colon == line)
        return fail(p, 400, "header field without a name");
    *colon = '\0';
    for (const char *n = line; *n != '\0'; n++) {
        if (!is_tchar((unsigned char)*n))
            return fail(p, 400, "invalid header field name");
    }

    char *value = colon + 1;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t vlen = strlen(value);
    while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        value[--vlen] = '\0';

    if (req->header_count == MAX_HEADERS)
        return fail(p, 431, "too many header fields");
    req->headers[req->header_count++] = (struct header){line, value};
    return PARSE_OK;
}

/* Reads Content-Length and Transfer-Encoding and picks the framing. */
static enum parse_result
choose_framing(struct parser *p)
{
    struct request *req = &p->req;
    const char *te = NULL;
    const char *cl = NULL;
    for (size_t i = 0; i < req->header_count; i++) {
        const struct header *h = &req->headers[i];
        if (strcasecmp(h->name, "Transfer-Encoding") == 0) {
            te = h->value;
        } else if (strcasecmp(h->name, "Content-Length") == 0) {
            if (cl != NULL && strcmp(cl, h->value) != 0)
                return fail(p, 400, "conflicting Content-Length fields");
            cl = h->value;
        }
    }

    if (te != NULL) {
        if (!last_coding_is_chunked(te))
            return fail(p, 501, "unsupported transfer coding");
        /* A request with both framings must not reuse the connection. */
        if (cl != NULL)
            req->keep_alive = false;
        req->chunked = true;
        p->state = PARSE_CHUNK_SIZE;
        return PARSE_OK;
    }

    uint64_t length = 0;
    if (cl != NULL && !parse_decimal(cl, &length))
        return fail(p, 400, "invalid Content-Length");
    if (length > MAX_REQUEST_BODY)
        return fail(p, 413, "request body too large");
    req->content_length = length;
    p->remaining = length;
    p->state = length > 0 ? PARSE_BODY : PARSE_DONE;
    return PARSE_OK;
}

/* Sets keep_alive and expect_continue from the version and the fields. */
static void
read_connection_fields(struct request *req)
{
    const char *conn = request_header(req, "Connection");
    if (req->minor_version == 1)
        req->keep_alive = conn == NULL || !list_has_token(conn, "close");
    else
        req->keep_alive = conn != NULL && list_has_token(conn, "keep-alive");

    const char *expect = request_header(req, "Expect");
    req->expect_continue = req->minor_version == 1 && expect != NULL &&
                           strcasecmp(expect, "100-continue") == 0;
}

/* Parses the head in p->req.head (len bytes, NUL-terminated). */
static enum parse_result
parse_head(struct parser *p)
{
    struct request *req = &p->req;
    size_t lines = 0;
    for (const char *c = req->head; *c != '\0'; c++)
        lines += *c == '\n';
    req->headers = calloc(lines + 1, sizeof(*req->headers));
    if (req->headers == NULL)
        return fail(p, 500, "out of memory");

    char *cursor = req->head;
    char *line = next_line(&cursor);
    if (line == NULL || parse_request_line(p, line) != PARSE_OK)
        return p->error_status != 0 ? PARSE_ERROR
                                    : fail(p, 400, "missing request line");
    while ((line = next_line(&cursor)) != NULL) {
        if (line[0] == '\0')
            break;
        if (parse_header_line(p, line) != PARSE_OK)
            return PARSE_ERROR;
    }
    read_connection_fields(req);
    return choose_framing(p);
}

/* Returns the offset just past the blank line that ends the head, or 0. */
static size_t
find_head_end(struct parser *p, const struct buf *in)
{
    for (size_t i = p->scan; i < in->len; i++) {
        if (in->data[i] != '\n')
            continue;
        if (i + 1 < in->len && in->data[i + 1] == '\n')
            return i + 2;
        if (i + 2 < in->len && in->data[i + 1] == '\r' &&
            in->data[i + 2] == '\n')
            return i + 3;
    }
    /* The next search starts where a "\n\r\n" may begin. */
    p->scan = in->len > 2 ? in->len - 2 : 0;
    return 0;
}

static enum parse_result
feed_head(struct parser *p, struct buf *in)
{
    /* A client may send empty lines between requests (RFC 9112, 2.2). */
    size_t skip = 0;
    while (skip < in->len && (in->data[skip] == '\r' || in->data[skip] == '\n'))
        skip++;
    if (skip > 0) {
        buf_consume(in, skip);
        p->scan = 0;
    }

    size_t end = find_head_end(p, in);
    if (end == 0) {
        if (in->len > MAX_HEAD_BYTES)
            return fail(p, 431, "request head too large");
        return PARSE_MORE;
    }
    if (end > MAX_HEAD_BYTES)
        return fail(p, 431, "request head too large");

    p->req.head = malloc(end + 1);
    if (p->req.head == NULL)
        return fail(p, 500, "out of memory");
    memcpy(p->req.head, in->data, end);
    p->req.head[end] = '\0';
    buf_consume(in, end);
    return parse_head(p);
}

/* Moves up to p->remaining body bytes from in to the request body. */
static void
take_body_bytes(struct parser *p, struct buf *in)
{
    size_t n = in->len;
    if ((uint64_t)n > p->remaining)
        n = (size_t)p->remaining;
    /* The cap was checked against the declared sizes already. */
    if (!buf_append(&p->req.body, in->data, n))
        return;
    buf_consume(in, n);
    p->remaining -= n;
}

/* Cuts one line off the front of in, or returns NULL if none is whole. */
static char *
take_line(struct buf *in, size_t *consumed)
{
    char *nl = memchr(in->data, '\n', in->len);
    if (nl == NULL)
        return NULL;
    *nl = '\0';
    *consumed = (size_t)(nl - in->data) + 1;
    if (nl > in->data && nl[-1] == '\r')
        nl[-1] = '\0';
    return in->data;
}

static enum parse_result
feed_chunk_size(struct parser *p, struct buf *in)
{
    size_t used;
    char *line = in->len > 0 ? take_line(in, &used) : NULL;
    if (line == NULL)
        return in->len > MAX_CHUNK_LINE
                   ? fail(p, 400, "chunk size line too long")
                   : PARSE_MORE;

    uint64_t size = 0;
    size_t digits = 0;
    for (; line[digits] != '\0'; digits++) {
        char c = line[digits];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            break;
        if (digits == 15)
            return fail(p, 400, "chunk size too large");
        size = size * 16 + d;
    }
    char rest = line[digits];
    if (digits == 0 ||
        (rest != '\0' && rest != ';' && rest != ' ' && rest != '\t'))
        return fail(p, 400, "invalid chunk size");
    buf_consume(in, used);

    if (size > MAX_REQUEST_BODY - p->req.body.len)
        return fail(p, 413, "request body too large");
    p->remaining = size;
    p->state = size > 0 ? PARSE_CHUNK_DATA : PARSE_TRAILER;
    return PARSE_OK;
}

static enum parse_result
feed_chunk_end(struct parser *p, struct buf *in)
{
    if (in->len >= 1 && in->data[0] == '\n') {
        buf_consume(in, 1);
    } else if (in->len >= 2 && in->data[0] == '\r' && in->data[1] == '\n') {
        buf_consume(in, 2);
    } else if (in->len >= 2 || (in->len == 1 && in->data[0] != '\r')) {
        return fail(p, 400, "chunk data not followed by CRLF");
    } else {
        return PARSE_MORE;
    }
    p->state = PARSE_CHUNK_SIZE;
    return PARSE_OK;
}

/* Skips trailer fields up to the empty line that ends the message. */
static enum parse_result
feed_trailer(struct parser *p, struct buf *in)
{
    for (;;) {
        size_t used;
        char *line = in->len > 0 ? take_line(in, &used) : NULL;
        if (line == NULL)
            return in->len > MAX_TRAILER_BYTES
                       ? fail(p, 431, "trailer section too large")
                       : PARSE_MORE;
        bool empty = line[0] == '\0';
        buf_consume(in, used);
        p->trailer_bytes += used;
        if (empty) {
            p->state = PARSE_DONE;
            return PARSE_OK;
        }
        if (p->trailer_bytes > MAX_TRAILER_BYTES)
            return fail(p, 431, "trailer section too large");
    }
}

/* Runs one step of the state machine. PARSE_OK means "go on". */
static enum parse_result
parse_step(struct parser *p, struct buf *in)
{
    switch (p->state) {
    case PARSE_HEAD:
        return feed_head(p, in);
    case PARSE_BODY:
    case PARSE_CHUNK_DATA:
        if (in->len == 0)
            return PARSE_MORE;
        take_body_bytes(p, in);
        if (p->remaining > 0)
            return in->len == 0 ? PARSE_MORE : fail(p, 500, "out of memory");
        p->state = p->state == PARSE_BODY ? PARSE_DONE : PARSE_CHUNK_END;
        return PARSE_OK;
    case PARSE_CHUNK_SIZE:
        return feed_chunk_size(p, in);
    case PARSE_CHUNK_END:
        return feed_chunk_end(p, in);
    case PARSE_TRAILER:
        return feed_trailer(p, in);
    case PARSE_DONE:
        break;
    }
    return PARSE_OK;
}

enum parse_result
parser_feed(struct parser *p, struct buf *in)
{
    while (p->state != PARSE_DONE) {
        enum parse_result r = parse_step(p, in);
        if (r != PARSE_OK)
            return r;
    }
    return PARSE_OK;
}
