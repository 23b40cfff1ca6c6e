/*
 * Metrics rendering. A checker reads the Prometheus text line by line: HELP
 * and TYPE per family, contiguous families, no duplicate series, cumulative
 * histogram buckets ending at +Inf, and label escaping. Other tests check
 * the values that known events produce, the breaker's bucket series at a
 * manual time, and the JSON view holding the same state.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "metrics_view.h"
#include "policy.h"
#include "version.h"
#include "workshop/error.h"

#define T0 WK_SEC(1000)

/* --- an exposition checker -------------------------------------------- */

#define MAX_NAMES 128

/* What the checker has seen so far. */
struct exposition {
    char families[MAX_NAMES][96]; /* in order of their TYPE lines */
    char types[MAX_NAMES][16];
    size_t family_count;
    char help[96]; /* the family of the latest HELP line */
    char **series; /* every "name{labels}" seen */
    size_t series_count;
    char bucket_group[640]; /* the histogram series whose buckets run */
    double last_le;
    double last_bucket;
    bool inf_seen;
    size_t samples;
};

static const char *
type_of(const struct exposition *x, const char *family)
{
    for (size_t i = 0; i < x->family_count; i++) {
        if (strcmp(x->families[i], family) == 0)
            return x->types[i];
    }
    return NULL;
}

static void
check_comment(struct exposition *x, const char *line)
{
    char name[96], word[16];

    if (strncmp(line, "# HELP ", 7) == 0) {
        assert_int_equal(sscanf(line + 7, "%95s", name), 1);
        assert_null(type_of(x, name)); /* HELP comes before TYPE, once */
        snprintf(x->help, sizeof(x->help), "%s", name);
        return;
    }
    assert_true(strncmp(line, "# TYPE ", 7) == 0);
    assert_int_equal(sscanf(line + 7, "%95s %15s", name, word), 2);
    if (strcmp(name, x->help) != 0)
        fail_msg("TYPE of %s without a HELP line just before", name);
    if (type_of(x, name) != NULL)
        fail_msg("family %s appears twice", name);
    assert_true(strcmp(word, "counter") == 0 || strcmp(word, "gauge") == 0 ||
                strcmp(word, "histogram") == 0);
    if (strcmp(word, "counter") == 0 &&
        strcmp(name + strlen(name) - 6, "_total") != 0)
        fail_msg("counter %s does not end in _total", name);
    assert_true(x->family_count < MAX_NAMES);
    snprintf(x->families[x->family_count], 96, "%s", name);
    snprintf(x->types[x->family_count], 16, "%s", word);
    x->family_count++;
}

/*
 * Parses the label set at *p ("{a=\"x\",b=\"y\"}"), checking that every
 * escape is \\, \" or \n. Copies the labels without le into group and the
 * le value into le. Returns the position after the '}'.
 */
static const char *
parse_labels(const char *p, char *group, size_t group_size, char *le,
             size_t le_size)
{
    size_t g = 0;

    le[0] = '\0';
    assert_true(*p == '{');
    p++;
    while (*p != '}') {
        const char *key = p;
        while ((*p >= 'a' && *p <= 'z') || *p == '_')
            p++;
        size_t key_len = (size_t)(p - key);
        assert_true(key_len > 0);
        assert_true(p[0] == '=' && p[1] == '"');
        p += 2;
        const char *value = p;
        while (*p != '"') {
            assert_true(*p != '\0' && *p != '\n');
            if (*p == '\\') {
                assert_true(p[1] == '\\' || p[1] == '"' || p[1] == 'n');
                p++;
            }
            p++;
        }
        size_t value_len = (size_t)(p - value);
        p++;
        if (key_len == 2 && strncmp(key, "le", 2) == 0) {
            assert_true(value_len < le_size);
            memcpy(le, value, value_len);
            le[value_len] = '\0';
        } else {
            assert_true(g + (size_t)(p - key) < group_size);
            memcpy(group + g, key, (size_t)(p - key));
            g += (size_t)(p - key);
        }
        assert_true(*p == ',' || *p == '}');
        if (*p == ',')
            p++;
    }
    group[g] = '\0';
    return p + 1;
}

static void
check_unique(struct exposition *x, const char *line, size_t len)
{
    for (size_t i = 0; i < x->series_count; i++) {
        if (strlen(x->series[i]) == len && memcmp(x->series[i], line, len) == 0)
            fail_msg("duplicate series %.*s", (int)len, line);
    }
    x->series = realloc(x->series, (x->series_count + 1) * sizeof(char *));
    assert_non_null(x->series);
    x->series[x->series_count] = strndup(line, len);
    assert_non_null(x->series[x->series_count]);
    x->series_count++;
}

/* Checks the bucket order of a histogram's series, and _count against +Inf. */
static void
check_histogram(struct exposition *x, const char *suffix, const char *group,
                const char *le, double value)
{
    if (strcmp(suffix, "_bucket") == 0) {
        double bound =
            strcmp(le, "+Inf") == 0 ? (double)INFINITY : strtod(le, NULL);
        assert_true(le[0] != '\0');
        if (strcmp(group, x->bucket_group) != 0) {
            assert_false(x->bucket_group[0] != '\0' && !x->inf_seen);
            snprintf(x->bucket_group, sizeof(x->bucket_group), "%s", group);
            x->last_le = -1;
            x->last_bucket = 0;
            x->inf_seen = false;
        }
        assert_true(bound > x->last_le);
        if (value < x->last_bucket)
            fail_msg("bucket le=%s of %s is not cumulative", le, group);
        x->last_le = bound;
        x->last_bucket = value;
        x->inf_seen = isinf(bound);
        return;
    }
    if (strcmp(suffix, "_count") == 0) {
        if (!x->inf_seen || strcmp(group, x->bucket_group) != 0)
            fail_msg("histogram %s has no le=\"+Inf\" bucket", group);
        assert_true(value == x->last_bucket);
        x->bucket_group[0] = '\0';
    }
}

static void
check_sample(struct exposition *x, const char *line, size_t len)
{
    char name[128], group[512], le[32];
    const char *p = line;

    while (*p != '{' && *p != ' ')
        p++;
    assert_true((size_t)(p - line) < sizeof(name));
    memcpy(name, line, (size_t)(p - line));
    name[p - line] = '\0';
    group[0] = '\0';
    le[0] = '\0';
    if (*p == '{')
        p = parse_labels(p, group, sizeof(group), le, sizeof(le));
    check_unique(x, line, (size_t)(p - line));
    assert_true(*p == ' ');
    char *end;
    double value = strtod(p + 1, &end);
    assert_true(end == line + len);

    /* The sample belongs to the family of the latest TYPE line. */
    assert_true(x->family_count > 0);
    const char *family = x->families[x->family_count - 1];
    const char *type = x->types[x->family_count - 1];
    size_t flen = strlen(family);
    if (strncmp(name, family, flen) != 0)
        fail_msg("series %s is outside its family's block", name);
    if (strcmp(type, "histogram") == 0) {
        char full[640];
        snprintf(full, sizeof(full), "%s{%s}", family, group);
        check_histogram(x, name + flen, full, le, value);
    } else if (name[flen] != '\0') {
        fail_msg("series %s is outside its family's block", name);
    }
    x->samples++;
}

/* Checks text as promtool does, plus what promtool does not check. */
static void
check_exposition(const char *text)
{
    struct exposition x;

    memset(&x, 0, sizeof(x));
    for (const char *line = text; *line != '\0';) {
        const char *nl = strchr(line, '\n');
        assert_non_null(nl); /* every line ends with a newline */
        size_t len = (size_t)(nl - line);
        char copy[1024];
        assert_true(len > 0 && len < sizeof(copy));
        memcpy(copy, line, len);
        copy[len] = '\0';
        if (copy[0] == '#')
            check_comment(&x, copy);
        else
            check_sample(&x, copy, len);
        line = nl + 1;
    }
    assert_true(x.samples > 0);
    assert_true(x.bucket_group[0] == '\0'); /* last histogram finished */
    for (size_t i = 0; i < x.series_count; i++)
        free(x.series[i]);
    free(x.series);
}

/* --- fixtures --------------------------------------------------------- */

struct fixture {
    struct gw_metrics metrics;
    struct gw_config *config;
};

/* Points each route at its metrics and policies, as the server does. */
static void
attach(struct fixture *f)
{
    for (size_t i = 0; i < f->config->route_count; i++) {
        struct gw_route *route = &f->config->routes[i];
        route->metrics = gw_metrics_route(&f->metrics, route->name);
        assert_non_null(route->metrics);
        route->runtime = gw_route_runtime_get(route, NULL, route->metrics);
        assert_non_null(route->runtime);
    }
}

static struct fixture *
fixture_new(const char *json)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char err[512];

    assert_non_null(f);
    assert_int_equal(gw_metrics_init(&f->metrics), 0);
    if (gw_config_parse(json, strlen(json), "test.json", &f->config, err,
                        sizeof(err)) != 0)
        fail_msg("config: %s", err);
    attach(f);
    return f;
}

static void
fixture_free(struct fixture *f)
{
    gw_config_free(&f->config);
    gw_metrics_destroy(&f->metrics);
    free(f);
}

static struct gw_route *
route_named(struct fixture *f, const char *name)
{
    for (size_t i = 0; i < f->config->route_count; i++) {
        if (strcmp(f->config->routes[i].name, name) == 0)
            return &f->config->routes[i];
    }
    fail_msg("no route %s", name);
    return NULL;
}

/* Renders f at now; the caller frees the text. */
static char *
render(struct fixture *f, enum gw_metrics_format format, wk_time now)
{
    struct gw_metrics_view view;
    struct gw_buf out = {.max = 16u * 1024 * 1024};

    assert_int_equal(
        gw_metrics_view_gather(&view, &f->metrics, f->config, 3, now), 0);
    int rc = format == GW_METRICS_JSON ? gw_metrics_json(&view, &out)
                                       : gw_metrics_text(&view, &out);
    gw_metrics_view_free(&view);
    assert_int_equal(rc, 0);
    size_t len;
    char *text = gw_buf_take(&out, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

static void
expect_line(const char *text, const char *line)
{
    char pattern[512];

    snprintf(pattern, sizeof(pattern), "\n%s\n", line);
    if (strstr(text, pattern) == NULL)
        fail_msg("missing line: %s", line);
}

static void
expect_no(const char *text, const char *part)
{
    if (strstr(text, part) != NULL)
        fail_msg("unexpected text: %s", part);
}

#define POLICY_CONFIG                                                          \
    "{\"routes\":["                                                            \
    "{\"name\":\"api\",\"match\":{\"prefix\":\"/api\"},"                       \
    "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"},"                        \
    "\"rate_limit\":{\"rate\":1,\"burst\":3},"                                 \
    "\"breaker\":{\"window_ms\":10000,\"buckets\":10},"                        \
    "\"bulkhead\":{\"max_concurrent\":4},"                                     \
    "\"retry\":{\"attempts\":2},"                                              \
    "\"fallback\":{\"status\":503,\"body\":\"down\"}},"                        \
    "{\"name\":\"tripper\",\"match\":{\"prefix\":\"/t\"},"                     \
    "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"},"                        \
    "\"breaker\":{\"trip\":\"consecutive_failures\","                          \
    "\"consecutive_failures\":1,\"open_ms\":5000}},"                           \
    "{\"name\":\"keyed\",\"match\":{\"prefix\":\"/k\"},"                       \
    "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"},"                        \
    "\"rate_limit\":{\"rate\":1,\"burst\":1,\"key\":\"client_ip\"}},"          \
    "{\"name\":\"plain\",\"match\":{\"prefix\":\"/p\"},"                       \
    "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"}}"                        \
    "]}"

/* Records one breaker call at now with outcome err. */
static void
breaker_call(struct wk_breaker *b, wk_time now, int err)
{
    struct wk_breaker_permit permit;

    assert_int_equal(wk_breaker_before(b, now, &permit), WK_OK);
    wk_breaker_after(b, &permit, err, WK_MSEC(1), now);
}

/*
 * Drives every policy and counter of POLICY_CONFIG to known values; the
 * state is then read at T0 + 3 s.
 */
static void
drive(struct fixture *f)
{
    struct gw_route *api = route_named(f, "api");
    struct gw_route *tripper = route_named(f, "tripper");
    struct gw_route *keyed = route_named(f, "keyed");
    struct wk_breaker_permit permit;

    for (int i = 0; i < 3; i++)
        gw_metrics_request(api->metrics, 200, WK_MSEC(2));
    gw_metrics_request(api->metrics, 503, WK_MSEC(40));
    gw_metrics_upstream(api->metrics, GW_UP_OK, WK_MSEC(1));
    gw_metrics_upstream(api->metrics, GW_UP_TIMEOUT, WK_SEC(2));
    gw_metrics_retry(api->metrics);
    gw_metrics_fallback(api->metrics, GW_REASON_STATUS_5XX);
    gw_metrics_request(&f->metrics.unrouted, 404, WK_MSEC(1) / 10);

    /* Breaker buckets are 1 s wide and T0 starts one. */
    breaker_call(api->runtime->breaker, T0, WK_OK);
    breaker_call(api->runtime->breaker, T0, WK_OK);
    breaker_call(api->runtime->breaker, T0 + WK_SEC(1), WK_ERR_UPSTREAM);
    breaker_call(api->runtime->breaker, T0 + WK_SEC(3), WK_ERR_TIMED_OUT);

    breaker_call(tripper->runtime->breaker, T0 + WK_SEC(2), WK_ERR_UPSTREAM);
    assert_int_equal(
        wk_breaker_before(tripper->runtime->breaker, T0 + WK_SEC(3), &permit),
        WK_ERR_BREAKER_OPEN);

    for (int i = 0; i < 4; i++)
        (void)wk_ratelimit_take(api->runtime->limiter, NULL, T0 + WK_SEC(3),
                                NULL);
    assert_int_equal(
        wk_ratelimit_take(keyed->runtime->limiter, "10.0.0.1", T0, NULL),
        WK_OK);
    assert_int_equal(wk_bulkhead_try_acquire(api->runtime->bulkhead), WK_OK);
    assert_int_equal(wk_bulkhead_try_acquire(api->runtime->bulkhead), WK_OK);
}

static int
setup(void **state)
{
    gw_log_set_level(GW_LOG_ERROR); /* breaker transitions log warnings */
    *state = fixture_new(POLICY_CONFIG);
    drive(*state);
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    struct gw_route *api = route_named(f, "api");

    wk_bulkhead_release(api->runtime->bulkhead);
    wk_bulkhead_release(api->runtime->bulkhead);
    fixture_free(f);
    return 0;
}

/* --- tests ------------------------------------------------------------ */

static void
le_labels_match_bounds(void **state)
{
    (void)state;
    for (size_t i = 0; i < GW_LATENCY_BUCKETS; i++) {
        assert_true(strtod(gw_metrics_latency_le[i], NULL) ==
                    gw_metrics_latency_bounds[i]);
        if (i > 0)
            assert_true(gw_metrics_latency_bounds[i] >
                        gw_metrics_latency_bounds[i - 1]);
    }
}

static void
text_is_well_formed(void **state)
{
    char *text = render(*state, GW_METRICS_TEXT, T0 + WK_SEC(3));

    check_exposition(text);
    free(text);
}

static void
text_counts_requests(void **state)
{
    char *text = render(*state, GW_METRICS_TEXT, T0 + WK_SEC(3));

    expect_line(text, "workshop_requests_total{route=\"api\",code=\"200\"} 3");
    expect_line(text, "workshop_requests_total{route=\"api\",code=\"503\"} 1");
    expect_line(text,
                "workshop_requests_total{route=\"(none)\",code=\"404\"} 1");
    expect_line(text, "workshop_request_duration_seconds_bucket{route=\"api\","
                      "le=\"0.001\"} 0");
    expect_line(text, "workshop_request_duration_seconds_bucket{route=\"api\","
                      "le=\"0.0025\"} 3");
    expect_line(text, "workshop_request_duration_seconds_bucket{route=\"api\","
                      "le=\"0.025\"} 3");
    expect_line(text, "workshop_request_duration_seconds_bucket{route=\"api\","
                      "le=\"0.05\"} 4");
    expect_line(text, "workshop_request_duration_seconds_bucket{route=\"api\","
                      "le=\"+Inf\"} 4");
    expect_line(text, "workshop_request_duration_seconds_sum{route=\"api\"} "
                      "0.046000000");
    expect_line(text,
                "workshop_request_duration_seconds_count{route=\"api\"} 4");
    expect_line(text, "workshop_upstream_duration_seconds_bucket{route="
                      "\"api\",le=\"1\"} 1");
    expect_line(text, "workshop_upstream_duration_seconds_bucket{route="
                      "\"api\",le=\"2.5\"} 2");
    free(text);
}

static void
text_counts_outcomes(void **state)
{
    char *text = render(*state, GW_METRICS_TEXT, T0 + WK_SEC(3));

    expect_line(text, "workshop_upstream_attempts_total{route=\"api\","
                      "outcome=\"ok\"} 1");
    expect_line(text, "workshop_upstream_attempts_total{route=\"api\","
                      "outcome=\"timeout\"} 1");
    expect_line(text, "workshop_upstream_attempts_total{route=\"plain\","
                      "outcome=\"connect_failed\"} 0");
    expect_line(text, "workshop_retries_total{route=\"api\"} 1");
    expect_line(text, "workshop_fallbacks_total{route=\"api\","
                      "reason=\"status_5xx\"} 1");
    expect_line(text, "workshop_fallbacks_total{route=\"api\","
                      "reason=\"breaker_open\"} 0");
    /* Routes without a fallback or a retry policy get no zero series. */
    expect_no(text, "workshop_fallbacks_total{route=\"plain\"");
    expect_no(text, "workshop_retries_total{route=\"plain\"");
    expect_no(text, "workshop_upstream_attempts_total{route=\"(none)\"");
    free(text);
}

static void
text_shows_breaker_state(void **state)
{
    char *text = render(*state, GW_METRICS_TEXT, T0 + WK_SEC(3));

    expect_line(text, "workshop_breaker_state{route=\"api\"} 0");
    expect_line(text, "workshop_breaker_state{route=\"tripper\"} 1");
    expect_line(text, "workshop_breaker_transitions_total{route=\"tripper\","
                      "to=\"open\"} 1");
    expect_line(text, "workshop_breaker_transitions_total{route=\"tripper\","
                      "to=\"closed\"} 0");
    expect_line(text, "workshop_breaker_rejections_total{route=\"tripper\"} 1");
    expect_line(text, "workshop_breaker_consecutive_failures{route=\"api\"} 2");
    expect_line(text, "workshop_breaker_open_remaining_seconds{route="
                      "\"tripper\"} 4.000000000");
    expect_line(text, "workshop_breaker_open_remaining_seconds{route="
                      "\"api\"} 0.000000000");
    expect_line(text, "workshop_breaker_bucket_width_seconds{route=\"api\"} "
                      "1.000000000");
    expect_no(text, "workshop_breaker_state{route=\"plain\"");
    free(text);
}

struct bucket_case {
    const char *what;
    const char *line;
};

static const struct bucket_case bucket_cases[] = {
    {"the newest bucket holds the timeout at T0+3s",
     "workshop_breaker_bucket_calls{route=\"api\",bucket=\"9\","
     "outcome=\"timeouts\"} 1"},
    {"the bucket of T0+2s is empty",
     "workshop_breaker_bucket_calls{route=\"api\",bucket=\"8\","
     "outcome=\"failures\"} 0"},
    {"the bucket of T0+1s holds the failure",
     "workshop_breaker_bucket_calls{route=\"api\",bucket=\"7\","
     "outcome=\"failures\"} 1"},
    {"the bucket of T0 holds both successes",
     "workshop_breaker_bucket_calls{route=\"api\",bucket=\"6\","
     "outcome=\"successes\"} 2"},
    {"bucket 0 is the oldest and empty",
     "workshop_breaker_bucket_calls{route=\"api\",bucket=\"0\","
     "outcome=\"successes\"} 0"},
    {"the rejected call lands in the tripper's newest bucket",
     "workshop_breaker_bucket_calls{route=\"tripper\",bucket=\"9\","
     "outcome=\"rejections\"} 1"},
    {"window totals: successes",
     "workshop_breaker_window_calls{route=\"api\",outcome=\"successes\"} 2"},
    {"window totals: failures",
     "workshop_breaker_window_calls{route=\"api\",outcome=\"failures\"} 1"},
    {"window totals: timeouts",
     "workshop_breaker_window_calls{route=\"api\",outcome=\"timeouts\"} 1"},
    {"window totals: slow calls",
     "workshop_breaker_window_calls{route=\"api\",outcome=\"slow_calls\"} 0"},
};

static void
text_shows_breaker_buckets(void **state)
{
    char *text = render(*state, GW_METRICS_TEXT, T0 + WK_SEC(3));

    for (size_t i = 0; i < sizeof(bucket_cases) / sizeof(bucket_cases[0]);
         i++) {
        char pattern[512];
        snprintf(pattern, sizeof(pattern), "\n%s\n", bucket_cases[i].line);
        if (strstr(text, pattern) == NULL)
            fail_msg("%s: missing %s", bucket_cases[i].what,
                     bucket_cases[i].line);
    }
    expect_no(text, "bucket=\"10\"");
    free(text);
}

static void
text_shows_limiter_bulkhead(void **state)
{
    char *text = render(*state, GW_METRICS_TEXT, T0 + WK_SEC(3));

    expect_line(text, "workshop_ratelimit_tokens{route=\"api\"} 0");
    expect_line(text, "workshop_ratelimit_rejections_total{route=\"api\"} 1");
    expect_line(text, "workshop_ratelimit_keys{route=\"keyed\"} 1");
    /* A keyed limiter's shared bucket is unused: no tokens series. */
    expect_no(text, "workshop_ratelimit_tokens{route=\"keyed\"");
    expect_line(text, "workshop_bulkhead_in_flight{route=\"api\"} 2");
    expect_line(text, "workshop_bulkhead_max_concurrent{route=\"api\"} 4");
    expect_line(text, "workshop_bulkhead_rejections_total{route=\"api\"} 0");
    expect_line(text, "workshop_in_flight_requests 3");
    expect_line(text, "workshop_build_info{version=\"" GW_VERSION "\"} 1");
    expect_line(text, "workshop_config_reloads_total{result=\"failed\"} 0");
    assert_non_null(strstr(text, "\nprocess_start_time_seconds "));
    assert_non_null(strstr(text, "\nprocess_open_fds "));
    free(text);
}

static void
text_without_policies_omits_families(void **state)
{
    struct fixture *f = fixture_new(
        "{\"routes\":[{\"name\":\"plain\",\"match\":{\"prefix\":\"/\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"}}]}");
    char *text = render(f, GW_METRICS_TEXT, T0);

    (void)state;
    check_exposition(text);
    expect_no(text, "workshop_breaker");
    expect_no(text, "workshop_ratelimit");
    expect_no(text, "workshop_bulkhead");
    expect_no(text, "workshop_retries_total");
    expect_no(text, "workshop_fallbacks_total");
    /* No request yet: the family has no series and is left out. */
    expect_no(text, "workshop_requests_total");
    expect_line(text, "workshop_request_duration_seconds_count{route="
                      "\"plain\"} 0");
    free(text);
    fixture_free(f);
}

/* A config built by hand, since the parser rejects such a route name. */
static void
text_escapes_label_values(void **state)
{
    static const char name[] = "a\"b\\c\nd";
    struct fixture f;

    (void)state;
    memset(&f, 0, sizeof(f));
    assert_int_equal(gw_metrics_init(&f.metrics), 0);
    f.config = calloc(1, sizeof(*f.config));
    assert_non_null(f.config);
    f.config->routes = calloc(1, sizeof(*f.config->routes));
    assert_non_null(f.config->routes);
    f.config->route_count = 1;
    f.config->routes[0].name = strdup(name);
    assert_non_null(f.config->routes[0].name);
    f.config->routes[0].metrics = gw_metrics_route(&f.metrics, name);
    gw_metrics_request(f.config->routes[0].metrics, 200, WK_MSEC(1));

    char *text = render(&f, GW_METRICS_TEXT, T0);
    check_exposition(text);
    expect_line(
        text, "workshop_requests_total{route=\"a\\\"b\\\\c\\nd\",code=\"200\"} "
              "1");
    free(text);

    text = render(&f, GW_METRICS_JSON, T0);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    cJSON *route = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "routes"), 0);
    assert_string_equal(cJSON_GetObjectItem(route, "name")->valuestring, name);
    cJSON_Delete(root);
    free(text);
    gw_config_free(&f.config);
    gw_metrics_destroy(&f.metrics);
}

static cJSON *
route_json(cJSON *root, const char *name)
{
    cJSON *route;

    cJSON_ArrayForEach(route, cJSON_GetObjectItem(root, "routes"))
    {
        if (strcmp(cJSON_GetObjectItem(route, "name")->valuestring, name) == 0)
            return route;
    }
    fail_msg("no route %s in the JSON", name);
    return NULL;
}

static double
number_at(cJSON *obj, const char *a, const char *b)
{
    cJSON *item = cJSON_GetObjectItem(obj, a);
    if (b != NULL)
        item = cJSON_GetObjectItem(item, b);
    if (!cJSON_IsNumber(item))
        fail_msg("%s.%s is not a number", a, b != NULL ? b : "");
    return item->valuedouble;
}

static void
json_holds_same_state(void **state)
{
    char *text = render(*state, GW_METRICS_JSON, T0 + WK_SEC(3));
    cJSON *root = cJSON_Parse(text);

    assert_non_null(root);
    cJSON *api = route_json(root, "api");
    assert_true(number_at(api, "requests", "200") == 3);
    assert_true(number_at(api, "requests", "503") == 1);
    assert_true(number_at(api, "upstream_attempts", "timeout") == 1);
    assert_true(number_at(api, "fallbacks", "status_5xx") == 1);
    assert_true(number_at(api, "retries_total", NULL) == 1);
    cJSON *latency = cJSON_GetObjectItem(api, "request_duration_seconds");
    assert_true(number_at(latency, "count", NULL) == 4);
    cJSON *buckets = cJSON_GetObjectItem(latency, "buckets");
    assert_int_equal(cJSON_GetArraySize(buckets), GW_LATENCY_BUCKETS + 1);
    cJSON *last = cJSON_GetArrayItem(buckets, GW_LATENCY_BUCKETS);
    assert_string_equal(cJSON_GetObjectItem(last, "le")->valuestring, "+Inf");
    assert_true(number_at(last, "count", NULL) == 4);

    cJSON *breaker = cJSON_GetObjectItem(api, "breaker");
    assert_string_equal(cJSON_GetObjectItem(breaker, "state")->valuestring,
                        "closed");
    cJSON *bucket_array = cJSON_GetObjectItem(breaker, "buckets");
    assert_int_equal(cJSON_GetArraySize(bucket_array), 10);
    assert_true(
        number_at(cJSON_GetArrayItem(bucket_array, 9), "timeouts", NULL) == 1);
    assert_true(
        number_at(cJSON_GetArrayItem(bucket_array, 7), "failures", NULL) == 1);
    assert_true(
        number_at(cJSON_GetArrayItem(bucket_array, 6), "successes", NULL) == 2);
    assert_true(number_at(breaker, "window", "successes") == 2);

    cJSON *tripper = route_json(root, "tripper");
    breaker = cJSON_GetObjectItem(tripper, "breaker");
    assert_string_equal(cJSON_GetObjectItem(breaker, "state")->valuestring,
                        "open");
    assert_true(number_at(breaker, "transitions", "open") == 1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(tripper, "rate_limit")));

    assert_true(number_at(api, "rate_limit", "tokens") == 0);
    assert_true(number_at(api, "rate_limit", "rejections_total") == 1);
    assert_true(number_at(api, "bulkhead", "in_flight") == 2);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(
        cJSON_GetObjectItem(route_json(root, "keyed"), "rate_limit"),
        "tokens")));
    assert_true(cJSON_IsNull(
        cJSON_GetObjectItem(route_json(root, "plain"), "breaker")));

    assert_true(number_at(cJSON_GetObjectItem(root, "unrouted"), "requests",
                          "404") == 1);
    assert_true(number_at(root, "in_flight_requests", NULL) == 3);
    assert_true(number_at(root, "process", "start_time_seconds") > 0);
    cJSON_Delete(root);
    free(text);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(le_labels_match_bounds),
        cmocka_unit_test_setup_teardown(text_is_well_formed, setup, teardown),
        cmocka_unit_test_setup_teardown(text_counts_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(text_counts_outcomes, setup, teardown),
        cmocka_unit_test_setup_teardown(text_shows_breaker_state, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(text_shows_breaker_buckets, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(text_shows_limiter_bulkhead, setup,
                                        teardown),
        cmocka_unit_test(text_without_policies_omits_families),
        cmocka_unit_test(text_escapes_label_values),
        cmocka_unit_test_setup_teardown(json_holds_same_state, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
