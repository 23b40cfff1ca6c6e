/*
 * soak-load: the load generator of the soak test. It keeps --concurrency
 * requests in flight through the gateway for --seconds, with libcurl's
 * multi interface on one thread, and checks every response.
 *
 *   soak-load --url http://127.0.0.1:PORT --pid GATEWAY_PID --seconds N
 *             [--warmup S] [--concurrency C] [--chaos PCT] [--seed S]
 *             [--max-growth PCT]
 *
 * The gateway is expected to route /soak to test-upstream with a
 * timeout_ms of about 1000 and to have no route for /nowhere. Most
 * requests ask test-upstream for chaos (chaos=PCT&seed=S), so it injects
 * delays, 5xx, resets, truncated and stalled bodies at random. A few ask
 * for a stall or a delay past the route timeout, and a few for an unrouted
 * path.
 *
 * A request fails the run when it gets no HTTP response, which is any
 * libcurl error including the client's own timeout. It also fails the run
 * with a wrong response: a status its kind cannot have, a gateway 5xx
 * without X-Workshop-Error, an upstream 5xx without X-Upstream-Chaos, or a
 * 200 whose body differs from what test-upstream sent. The run also fails when the gateway's VmRSS in the
 * last 5 s exceeds its VmRSS in the 5 s after the warm-up by more than
 * --max-growth percent, each the mean of one sample a second. Exit status:
 * 0 pass, 1 fail, 2 usage error.
 */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

/* Maximum body_size= of a GET, and maximum POST body. */
#define MAX_GET_BODY  16384
#define MAX_POST_BODY 8192
/* Response bytes kept per transfer. A longer body is a wrong response. */
#define MAX_KEEP (64 * 1024)
/* The client's own limit per request; a route times out after ~1 s. */
#define CLIENT_TIMEOUT_MS 15000
/* Maximum wait for the requests still in flight once the time is up. */
#define DRAIN_WAIT_MS 20000
#define MAX_STATUS    600
/* VmRSS is sampled once a second. The start and end figures are each the
 * mean of the samples in one window of this length, so that one sample's
 * noise does not decide the run. */
#define RSS_WINDOW_MS 5000

enum kind {
    KIND_GET,       /* GET with body_size=, maybe chunked, under chaos */
    KIND_HEAD,      /* HEAD with body_size=, under chaos */
    KIND_POST,      /* POST with a body and mirror=1, under chaos */
    KIND_NOT_FOUND, /* GET of a path no route serves: 404 */
    KIND_STALL,     /* action=stall: the upstream never replies, 504 */
    KIND_SLOW,      /* delay_ms past the route timeout: 504 */
    KIND_COUNT,
};

static const char *const kind_names[KIND_COUNT] = {
    "get", "head", "post", "not_found", "stall", "slow",
};

/* Out of 1000 requests. */
static const unsigned kind_weights[KIND_COUNT] = {620, 80, 240, 20, 20, 20};

struct options {
    const char *url;
    long pid;
    long seconds;
    long warmup;
    long concurrency;
    long chaos;
    uint64_t seed;
    double max_growth;
};

struct transfer {
    CURL *easy;
    enum kind kind;
    uint64_t expect_len; /* body length a 200 has (GET, POST) */
    char *sent;          /* POST body, owned */
    size_t sent_len;
    char *body; /* received body, first MAX_KEEP bytes */
    size_t body_len;
    bool body_overflow;
    char workshop_error[32];  /* X-Workshop-Error, or "" */
    bool upstream_chaos;      /* X-Upstream-Chaos was present */
    long long content_length; /* Content-Length, or -1 */
    struct curl_slist *headers;
};

struct stats {
    uint64_t sent;
    uint64_t answered;
    uint64_t unanswered;
    uint64_t wrong;
    uint64_t by_status[MAX_STATUS];
    uint64_t by_curl_error[CURL_LAST];
    uint64_t by_kind[KIND_COUNT];
    uint64_t ok;
    uint64_t upstream_5xx;  /* passed through, X-Upstream-Chaos */
    uint64_t gateway_502;   /* X-Workshop-Error: upstream_error */
    uint64_t gateway_504;   /* X-Workshop-Error: timeout */
    uint64_t gateway_404;   /* X-Workshop-Error: not_found */
    uint64_t gateway_other; /* any other X-Workshop-Error */
    unsigned wrong_printed;
};

static uint64_t rng_state;

/* splitmix64: the request mix is reproducible from --seed. */
static uint64_t
next_random(void)
{
    uint64_t x = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

static uint64_t
random_below(uint64_t n)
{
    return next_random() % n;
}

static long long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Returns VmRSS of pid in kB, or -1 when /proc has no such process. */
static long
read_rss_kb(long pid)
{
    char path[64];
    char line[256];
    long rss = -1;

    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            char *end;
            rss = strtol(line + 6, &end, 10);
            break;
        }
    }
    fclose(f);
    return rss;
}

/* --- options ------------------------------------------------------------- */

static void
usage(FILE *out)
{
    fprintf(out,
            "usage: soak-load --url URL --pid PID --seconds N [--warmup S]\n"
            "                 [--concurrency C] [--chaos PCT] [--seed S]\n"
            "                 [--max-growth PCT]\n"
            "  --url URL          the gateway's traffic address, "
            "http://HOST:PORT\n"
            "  --pid PID          the gateway's process id, for VmRSS\n"
            "  --seconds N        total run time, warm-up included\n"
            "  --warmup S         seconds of load before the VmRSS "
            "baseline (default N/6,\n"
            "                     5 to 60, and at most N - 10)\n"
            "  --concurrency C    requests in flight (default 64)\n"
            "  --chaos PCT        percentage of upstream calls that fail "
            "(default 20)\n"
            "  --seed S           seed of the request mix and the chaos "
            "(default 1)\n"
            "  --max-growth PCT   allowed VmRSS growth after the warm-up "
            "(default 5)\n");
}

static bool
parse_long(const char *text, long min, long max, long *out)
{
    char *end;

    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool
parse_option(struct options *o, const char *name, const char *value)
{
    long v;

    if (strcmp(name, "--url") == 0) {
        o->url = value;
        return true;
    }
    if (strcmp(name, "--max-growth") == 0) {
        char *end;
        o->max_growth = strtod(value, &end);
        return end != value && *end == '\0' && o->max_growth >= 0;
    }
    if (strcmp(name, "--seed") == 0) {
        if (!parse_long(value, 0, LONG_MAX, &v))
            return false;
        o->seed = (uint64_t)v;
        return true;
    }
    struct {
        const char *name;
        long min, max;
        long *out;
    } numbers[] = {
        {"--pid", 1, LONG_MAX, &o->pid},
        {"--seconds", 1, 7 * 24 * 3600, &o->seconds},
        {"--warmup", 0, 7 * 24 * 3600, &o->warmup},
        {"--concurrency", 1, 10000, &o->concurrency},
        {"--chaos", 0, 100, &o->chaos},
    };
    for (size_t i = 0; i < sizeof(numbers) / sizeof(*numbers); i++) {
        if (strcmp(name, numbers[i].name) == 0)
            return parse_long(value, numbers[i].min, numbers[i].max,
                              numbers[i].out);
    }
    return false;
}

static int
parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){.warmup = -1,
                          .concurrency = 64,
                          .chaos = 20,
                          .seed = 1,
                          .max_growth = 5.0};
    /* Every option takes a value, so argv is a list of NAME VALUE pairs. */
    for (int i = 1; i < argc; i += 2) {
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc || !parse_option(o, argv[i], argv[i + 1])) {
            fprintf(stderr, "soak-load: invalid option '%s'%s%s\n", argv[i],
                    i + 1 < argc ? " with value " : "",
                    i + 1 < argc ? argv[i + 1] : "");
            usage(stderr);
            return -1;
        }
    }
    if (o->url == NULL || o->pid == 0 || o->seconds == 0) {
        fprintf(stderr, "soak-load: --url, --pid and --seconds are "
                        "required\n");
        usage(stderr);
        return -1;
    }
    /* The two VmRSS windows must not overlap. */
    long room = o->seconds - 2 * RSS_WINDOW_MS / 1000;
    if (o->warmup < 0) {
        o->warmup = o->seconds / 6;
        if (o->warmup < 5)
            o->warmup = 5;
        if (o->warmup > 60)
            o->warmup = 60;
        if (o->warmup > room)
            o->warmup = room;
    }
    if (room < 0 || o->warmup > room) {
        fprintf(stderr,
                "soak-load: --seconds %ld with --warmup %ld leaves "
                "no room for two %d s VmRSS windows; give at least "
                "--warmup + %d seconds\n",
                o->seconds, o->warmup < 0 ? 0 : o->warmup, RSS_WINDOW_MS / 1000,
                2 * RSS_WINDOW_MS / 1000);
        return -1;
    }
    return 0;
}

/* --- one transfer ------------------------------------------------------- */

static char
pattern_byte(uint64_t i)
{
    return (char)('a' + i % 26);
}

static size_t
on_body(char *data, size_t size, size_t count, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * count;

    if (t->body_len + n > MAX_KEEP) {
        t->body_overflow = true;
        return n; /* read on, so the transfer still ends normally */
    }
    memcpy(t->body + t->body_len, data, n);
    t->body_len += n;
    return n;
}

/* Copies the value of "Name: value\r\n" when line starts with name. */
static bool
header_value(const char *line, size_t len, const char *name, char *out,
             size_t out_size)
{
    size_t name_len = strlen(name);

    if (len <= name_len || strncasecmp(line, name, name_len) != 0 ||
        line[name_len] != ':')
        return false;
    const char *v = line + name_len + 1;
    const char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t n =
        (size_t)(end - v) < out_size - 1 ? (size_t)(end - v) : out_size - 1;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

static size_t
on_header(char *data, size_t size, size_t count, void *arg)
{
    struct transfer *t = arg;
    size_t n = size * count;
    char value[64];

    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        /* A new head (after a 1xx): forget the previous one. */
        t->workshop_error[0] = '\0';
        t->upstream_chaos = false;
        t->content_length = -1;
    } else if (header_value(data, n, "X-Workshop-Error", t->workshop_error,
                            sizeof(t->workshop_error))) {
    } else if (header_value(data, n, "X-Upstream-Chaos", value,
                            sizeof(value))) {
        t->upstream_chaos = true;
    } else if (header_value(data, n, "Content-Length", value, sizeof(value))) {
        char *end;
        t->content_length = strtoll(value, &end, 10);
    }
    return n;
}

static enum kind
pick_kind(void)
{
    uint64_t r = random_below(1000);

    for (int k = 0; k < KIND_COUNT; k++) {
        if (r < kind_weights[k])
            return (enum kind)k;
        r -= kind_weights[k];
    }
    return KIND_GET;
}

/* Writes the URL for t's kind into url; sets what a 200 must carry. */
static void
build_url(const struct options *o, struct transfer *t, char *url, size_t size)
{
    uint64_t id = random_below(1000000);
    bool chunked;

    switch (t->kind) {
    case KIND_GET:
    case KIND_HEAD:
        t->expect_len = random_below(MAX_GET_BODY + 1);
        /* NOTE: HEAD stays unchunked: the gateway replies to a HEAD whose
         * upstream reply is chunked with "Content-Length: 0", which the
         * HEAD check would count as a wrong response. */
        chunked = t->kind == KIND_GET && random_below(4) == 0;
        snprintf(url, size,
                 "%s/soak/items/%" PRIu64 "?chaos=%ld&seed=%" PRIu64
                 "&body_size=%" PRIu64 "%s",
                 o->url, id, o->chaos, o->seed, t->expect_len,
                 chunked ? "&chunked=1" : "");
        break;
    case KIND_POST:
        t->expect_len = t->sent_len;
        snprintf(url, size,
                 "%s/soak/echo/%" PRIu64 "?chaos=%ld&seed=%" PRIu64 "&mirror=1",
                 o->url, id, o->chaos, o->seed);
        break;
    case KIND_NOT_FOUND:
        snprintf(url, size, "%s/nowhere/%" PRIu64, o->url, id);
        break;
    case KIND_STALL:
        snprintf(url, size, "%s/soak/stall/%" PRIu64 "?action=stall", o->url,
                 id);
        break;
    case KIND_SLOW:
    case KIND_COUNT:
        snprintf(url, size, "%s/soak/slow/%" PRIu64 "?delay_ms=1500", o->url,
                 id);
        break;
    }
}

static int
make_post_body(struct transfer *t)
{
    t->sent_len = random_below(MAX_POST_BODY + 1);
    t->sent = malloc(t->sent_len > 0 ? t->sent_len : 1);
    if (t->sent == NULL)
        return -1;
    uint64_t offset = random_below(26);
    for (size_t i = 0; i < t->sent_len; i++)
        t->sent[i] = pattern_byte(i + offset);
    return 0;
}

static void
transfer_reset(struct transfer *t)
{
    free(t->sent);
    t->sent = NULL;
    t->sent_len = 0;
    t->body_len = 0;
    t->body_overflow = false;
    t->workshop_error[0] = '\0';
    t->upstream_chaos = false;
    t->content_length = -1;
    t->expect_len = 0;
    curl_slist_free_all(t->headers);
    t->headers = NULL;
}

/* Sets up t for a new request on its easy handle. Returns 0 or -1. */
static int
transfer_prepare(const struct options *o, struct transfer *t)
{
    char url[512];
    CURL *easy = t->easy;

    transfer_reset(t);
    curl_easy_reset(easy);
    t->kind = pick_kind();
    if (t->kind == KIND_POST && make_post_body(t) != 0)
        return -1;
    build_url(o, t, url, sizeof(url));

    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)CLIENT_TIMEOUT_MS);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(easy, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    if (t->kind == KIND_HEAD)
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    if (t->kind == KIND_POST) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)t->sent_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, t->sent);
        /* Half of the larger bodies go without "Expect: 100-continue". */
        if (random_below(2) == 0)
            t->headers = curl_slist_append(NULL, "Expect:");
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
    }
    /* One request in five opens a new connection and closes it after. */
    if (random_below(5) == 0)
        curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
    return 0;
}

/* --- checking a response -----------------------------------------------------
 */

static bool
body_matches(const struct transfer *t)
{
    if (t->body_overflow || t->body_len != t->expect_len)
        return false;
    if (t->kind == KIND_POST)
        return memcmp(t->body, t->sent, t->sent_len) == 0;
    for (size_t i = 0; i < t->body_len; i++) {
        if (t->body[i] != pattern_byte(i))
            return false;
    }
    return true;
}

/* Returns NULL when status and body fit t's kind, else why not. */
static const char *
check_answer(const struct transfer *t, long status)
{
    bool gateway = t->workshop_error[0] != '\0';

    switch (t->kind) {
    case KIND_NOT_FOUND:
        return status == 404 && strcmp(t->workshop_error, "not_found") == 0
                   ? NULL
                   : "expected 404 with X-Workshop-Error: not_found";
    case KIND_STALL:
    case KIND_SLOW:
        return status == 504 && strcmp(t->workshop_error, "timeout") == 0
                   ? NULL
                   : "expected 504 with X-Workshop-Error: timeout";
    default:
        break;
    }
    if (status == 200) {
        if (t->kind == KIND_HEAD)
            return t->body_len == 0 &&
                           t->content_length == (long long)t->expect_len
                       ? NULL
                       : "HEAD 200 with a body or a wrong Content-Length";
        return body_matches(t) ? NULL
                               : "200 with a body that differs "
                                 "from the upstream's";
    }
    if (status == 502 || status == 504) {
        if (gateway || t->upstream_chaos)
            return NULL;
        return "5xx without X-Workshop-Error or X-Upstream-Chaos";
    }
    if (status == 500 || status == 503)
        return t->upstream_chaos ? NULL : "5xx without X-Upstream-Chaos";
    return "a status this request cannot have";
}

static void
count_outcome(struct stats *st, const struct transfer *t, long status)
{
    if (strcmp(t->workshop_error, "upstream_error") == 0)
        st->gateway_502++;
    else if (strcmp(t->workshop_error, "timeout") == 0)
        st->gateway_504++;
    else if (strcmp(t->workshop_error, "not_found") == 0)
        st->gateway_404++;
    else if (t->workshop_error[0] != '\0')
        st->gateway_other++;
    else if (status >= 500)
        st->upstream_5xx++;
    else if (status == 200)
        st->ok++;
}

static void
record(struct stats *st, const struct transfer *t, CURLcode rc)
{
    char *url = NULL;
    long status = 0;

    curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (rc != CURLE_OK) {
        st->unanswered++;
        st->by_curl_error[rc]++;
        if (st->wrong_printed++ < 20)
            fprintf(stderr, "soak-load: no response: %s: %s\n",
                    url != NULL ? url : "?", curl_easy_strerror(rc));
        return;
    }
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    st->answered++;
    st->by_status[status >= 0 && status < MAX_STATUS ? status : 0]++;
    count_outcome(st, t, status);
    const char *why = check_answer(t, status);
    if (why != NULL) {
        st->wrong++;
        if (st->wrong_printed++ < 20)
            fprintf(stderr,
                    "soak-load: wrong response: %s %s: status %ld, "
                    "X-Workshop-Error '%s', body %zu bytes: %s\n",
                    kind_names[t->kind], url != NULL ? url : "?", status,
                    t->workshop_error, t->body_len, why);
    }
}

/* --- the run ------------------------------------------------------------ */

struct run {
    const struct options *opts;
    CURLM *multi;
    struct transfer *transfers;
    struct stats stats;
    long long start_ms;
    long long warm_ms; /* end of the warm-up */
    long long stop_ms; /* no new requests after this */
    /* Sums and counts of the VmRSS samples in the window after the
     * warm-up and in the last window before stop_ms, in kB. */
    long long rss_start_sum;
    long rss_start_count;
    long long rss_end_sum;
    long rss_end_count;
    long rss_max_kb;
    bool gateway_gone;
};

static int
start_transfer(struct run *run, struct transfer *t)
{
    if (transfer_prepare(run->opts, t) != 0)
        return -1;
    if (curl_multi_add_handle(run->multi, t->easy) != CURLM_OK)
        return -1;
    run->stats.sent++;
    run->stats.by_kind[t->kind]++;
    return 0;
}

/* Records each finished transfer and starts the next while time is left. */
static int
reap_finished(struct run *run, bool keep_going)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(run->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        char *private = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &private);
        struct transfer *t = (struct transfer *)(void *)private;
        record(&run->stats, t, rc);
        curl_multi_remove_handle(run->multi, easy);
        if (keep_going && start_transfer(run, t) != 0)
            return -1;
    }
    return 0;
}

/* Samples VmRSS once a second while the load runs. */
static void
sample_memory(struct run *run, long long now, long long *next_sample)
{
    if (now < *next_sample || now >= run->stop_ms)
        return;
    *next_sample = now + 1000;
    long rss = read_rss_kb(run->opts->pid);
    if (rss < 0) {
        run->gateway_gone = true;
        return;
    }
    if (rss > run->rss_max_kb)
        run->rss_max_kb = rss;
    if (now >= run->warm_ms && now < run->warm_ms + RSS_WINDOW_MS) {
        run->rss_start_sum += rss;
        run->rss_start_count++;
    }
    if (now >= run->stop_ms - RSS_WINDOW_MS) {
        run->rss_end_sum += rss;
        run->rss_end_count++;
    }
}

static int
drive(struct run *run)
{
    long long next_sample = 0;
    int running = 1;

    for (long i = 0; i < run->opts->concurrency; i++) {
        if (start_transfer(run, &run->transfers[i]) != 0)
            return -1;
    }
    while (running > 0) {
        long long now = now_ms();
        bool keep_going = now < run->stop_ms && !run->gateway_gone;
        if (now > run->stop_ms + DRAIN_WAIT_MS)
            break; /* the rest count as unanswered below */
        sample_memory(run, now, &next_sample);
        if (curl_multi_perform(run->multi, &running) != CURLM_OK ||
            reap_finished(run, keep_going) != 0)
            return -1;
        if (keep_going)
            running = 1; /* reap_finished may have added new transfers */
        curl_multi_poll(run->multi, NULL, 0, 100, NULL);
    }
    return 0;
}

static void
print_report(const struct run *run)
{
    const struct stats *st = &run->stats;

    printf("soak: requests sent %" PRIu64 ", answered %" PRIu64
           ", unanswered %" PRIu64 ", wrong responses %" PRIu64 "\n",
           st->sent, st->answered, st->unanswered, st->wrong);
    printf("soak: by status:");
    for (int s = 0; s < MAX_STATUS; s++) {
        if (st->by_status[s] > 0)
            printf(" %d=%" PRIu64, s, st->by_status[s]);
    }
    printf("\nsoak: by outcome: ok=%" PRIu64 " upstream_5xx=%" PRIu64
           " gateway_502=%" PRIu64 " gateway_504=%" PRIu64
           " gateway_404=%" PRIu64 " gateway_other=%" PRIu64
           " no_response=%" PRIu64 "\n",
           st->ok, st->upstream_5xx, st->gateway_502, st->gateway_504,
           st->gateway_404, st->gateway_other, st->unanswered);
    printf("soak: by kind:");
    for (int k = 0; k < KIND_COUNT; k++)
        printf(" %s=%" PRIu64, kind_names[k], st->by_kind[k]);
    printf("\n");
    for (int e = 0; e < CURL_LAST; e++) {
        if (st->by_curl_error[e] > 0)
            printf("soak: no response: %s: %" PRIu64 "\n",
                   curl_easy_strerror((CURLcode)e), st->by_curl_error[e]);
    }
    double seconds = (double)(now_ms() - run->start_ms) / 1000.0;
    printf("soak: %.0f s, %.0f requests/s, concurrency %ld, chaos %ld %%, "
           "seed %" PRIu64 "\n",
           seconds, (double)st->sent / seconds, run->opts->concurrency,
           run->opts->chaos, run->opts->seed);
}

/* Prints the memory figures; returns true when growth is within limit. */
static bool
report_memory(const struct run *run)
{
    const struct options *o = run->opts;

    if (run->rss_start_count == 0 || run->rss_end_count == 0) {
        printf("soak: memory: no VmRSS samples of pid %ld (%ld at start, "
               "%ld at end)\n",
               o->pid, run->rss_start_count, run->rss_end_count);
        return false;
    }
    long start = (long)(run->rss_start_sum / run->rss_start_count);
    long end = (long)(run->rss_end_sum / run->rss_end_count);
    double growth = 100.0 * (double)(end - start) / (double)start;
    printf("soak: memory: VmRSS at start (%ld-%ld s) %ld kB, at end "
           "(%ld-%ld s) %ld kB, growth %+.1f %% (limit %.1f %%), max %ld kB\n",
           o->warmup, o->warmup + RSS_WINDOW_MS / 1000, start,
           o->seconds - RSS_WINDOW_MS / 1000, o->seconds, end, growth,
           o->max_growth, run->rss_max_kb);
    return growth <= o->max_growth;
}

static void
raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int
setup(struct run *run, const struct options *o)
{
    *run = (struct run){.opts = o};
    run->multi = curl_multi_init();
    run->transfers = calloc((size_t)o->concurrency, sizeof(*run->transfers));
    if (run->multi == NULL || run->transfers == NULL)
        return -1;
    curl_multi_setopt(run->multi, CURLMOPT_MAXCONNECTS, o->concurrency);
    for (long i = 0; i < o->concurrency; i++) {
        struct transfer *t = &run->transfers[i];
        t->easy = curl_easy_init();
        t->body = malloc(MAX_KEEP);
        if (t->easy == NULL || t->body == NULL)
            return -1;
    }
    run->start_ms = now_ms();
    run->warm_ms = run->start_ms + o->warmup * 1000;
    run->stop_ms = run->start_ms + o->seconds * 1000;
    return 0;
}

static void
teardown(struct run *run)
{
    for (long i = 0; run->transfers != NULL && i < run->opts->concurrency;
         i++) {
        struct transfer *t = &run->transfers[i];
        if (t->easy != NULL) {
            curl_multi_remove_handle(run->multi, t->easy);
            curl_easy_cleanup(t->easy);
        }
        transfer_reset(t);
        free(t->body);
    }
    free(run->transfers);
    curl_multi_cleanup(run->multi);
}

/* Counts the transfers still running after the drain wait as unanswered. */
static void
count_abandoned(struct run *run)
{
    int running = 0;

    curl_multi_perform(run->multi, &running);
    reap_finished(run, false);
    run->stats.unanswered += (uint64_t)running;
    if (running > 0)
        fprintf(stderr,
                "soak-load: %d requests still without an answer "
                "%d ms after the run\n",
                running, DRAIN_WAIT_MS);
}

/* Prints the memory figures and the verdict; returns true for a pass. */
static bool
judge(const struct run *run)
{
    bool memory_ok = report_memory(run);
    bool pass = memory_ok;

    if (run->gateway_gone) {
        printf("soak: FAIL: the gateway (pid %ld) exited during the run\n",
               run->opts->pid);
        pass = false;
    }
    if (run->stats.unanswered > 0) {
        printf("soak: FAIL: %" PRIu64 " requests got no HTTP response\n",
               run->stats.unanswered);
        pass = false;
    }
    if (run->stats.wrong > 0) {
        printf("soak: FAIL: %" PRIu64 " responses were wrong\n",
               run->stats.wrong);
        pass = false;
    }
    if (!memory_ok && !run->gateway_gone) {
        printf("soak: FAIL: VmRSS grew past the limit\n");
        pass = false;
    }
    if (pass)
        printf("soak: PASS\n");
    return pass;
}

int
main(int argc, char **argv)
{
    struct options opts;
    struct run run;

    if (parse_options(argc, argv, &opts) != 0)
        return 2;
    rng_state = opts.seed;
    raise_fd_limit();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "soak-load: curl_global_init failed\n");
        return 1;
    }
    int code = 1;
    if (setup(&run, &opts) != 0 || drive(&run) != 0) {
        fprintf(stderr, "soak-load: out of memory or a libcurl error\n");
        goto out;
    }
    count_abandoned(&run);
    print_report(&run);
    code = judge(&run) ? 0 : 1;
out:
    teardown(&run);
    curl_global_cleanup();
    return code;
}
