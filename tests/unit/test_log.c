/*
 * The logger and the access log: line format, escaping, level filtering,
 * the repeat limit driven by a manual clock, and access log lines in text
 * and JSON. Lines go to a temporary file that each test reads back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access_log.h"
#include "log.h"

static FILE *sink;
static off_t sink_read; /* bytes of the sink already returned */
static struct wk_manual_clock manual_clock;

/* Returns what was logged since the last call; the caller frees it. */
static char *
take_output(void)
{
    off_t end = lseek(fileno(sink), 0, SEEK_END);
    size_t len = (size_t)(end - sink_read);
    char *text = malloc(len + 1);

    assert_non_null(text);
    assert_int_equal(pread(fileno(sink), text, len, sink_read), (ssize_t)len);
    text[len] = '\0';
    sink_read = end;
    return text;
}

static size_t
count_lines(const char *text)
{
    size_t n = 0;

    for (; *text != '\0'; text++)
        n += *text == '\n';
    return n;
}

static int
setup(void **state)
{
    (void)state;
    sink = tmpfile();
    assert_non_null(sink);
    sink_read = 0;
    gw_log_set_fd(fileno(sink));
    gw_log_set_level(GW_LOG_INFO);
    wk_manual_clock_init(&manual_clock, WK_SEC(100));
    gw_log_set_repeat_timing(&manual_clock.clock, WK_SEC(10));
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    gw_log_set_repeat_timing(NULL, 0);
    gw_log_set_fd(-1);
    fclose(sink);
    return 0;
}

/* --- the logger ------------------------------------------------------- */

static void
log_line_has_time_level_message(void **state)
{
    int year, month, day, hour, minute, second, millis;
    char rest[64];

    (void)state;
    gw_log_warn("proxy: answered %d", 5);
    char *out = take_output();
    assert_int_equal(sscanf(out, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ %63[^\n]", &year,
                            &month, &day, &hour, &minute, &second, &millis,
                            rest),
                     8);
    assert_string_equal(rest, "warn proxy: answered 5");
    assert_int_equal(count_lines(out), 1);
    free(out);
}

static void
log_escapes_control_characters(void **state)
{
    (void)state;
    gw_log_error("bad value \"%s\"", "a\nb\tc\x7f");
    char *out = take_output();
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, " error bad value \"a\\x0ab\\x09c\\x7f\"\n"));
    free(out);
}

static void
log_cuts_long_messages(void **state)
{
    char *long_text = malloc(3 * GW_LOG_LINE_MAX);

    (void)state;
    assert_non_null(long_text);
    memset(long_text, 'x', 3 * GW_LOG_LINE_MAX - 1);
    long_text[3 * GW_LOG_LINE_MAX - 1] = '\0';
    gw_log_info("%s", long_text);
    char *out = take_output();
    assert_int_equal(strlen(out), GW_LOG_LINE_MAX);
    assert_int_equal(count_lines(out), 1);
    assert_int_equal(out[GW_LOG_LINE_MAX - 1], '\n');
    free(out);
    free(long_text);
}

static void
log_skips_disabled_levels(void **state)
{
    int evaluated = 0;

    (void)state;
    gw_log_set_level(GW_LOG_WARN);
    gw_log_info("not written %d", ++evaluated);
    gw_log_debug("not written %d", ++evaluated);
    gw_log_limited(GW_LOG_INFO, "k", "not written %d", ++evaluated);
    gw_log_error("written");
    gw_log_set_level(GW_LOG_INFO);
    assert_int_equal(evaluated, 0); /* arguments are not even evaluated */
    char *out = take_output();
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, " error written\n"));
    free(out);
}

/* --- repeats ---------------------------------------------------------- */

struct repeat_step {
    const char *what;
    int64_t at_ms; /* clock time, from the start of the test */
    const char *key;
    bool written;
    unsigned suppressed; /* the count on the written line, 0 for none */
};

static const struct repeat_step repeat_steps[] = {
    {"the first message is written", 0, "a", true, 0},
    {"a repeat within the interval is counted", 1000, "a", false, 0},
    {"a second repeat is counted", 2000, "a", false, 0},
    {"another key is independent", 3000, "b", true, 0},
    {"after the interval the count comes with the line", 10000, "a", true, 2},
    {"the interval restarts at the written line", 10500, "a", false, 0},
    {"just before the next interval ends", 19999, "a", false, 0},
    {"the interval ends exactly", 20000, "a", true, 2},
    {"a line after a quiet interval has no count", 40000, "a", true, 0},
    {"the other key's interval is its own", 40001, "b", true, 0},
};

static void
limited_writes_once_per_interval(void **state)
{
    wk_time start = wk_clock_now(&manual_clock.clock);

    (void)state;
    for (size_t i = 0; i < sizeof(repeat_steps) / sizeof(repeat_steps[0]);
         i++) {
        const struct repeat_step *s = &repeat_steps[i];
        wk_manual_clock_set(&manual_clock, start + WK_MSEC(s->at_ms));
        gw_log_limited(GW_LOG_WARN, s->key, "upstream down key=%s", s->key);
        char *out = take_output();
        if (!s->written) {
            if (out[0] != '\0')
                fail_msg("%s: wrote %s", s->what, out);
            free(out);
            continue;
        }
        char expected[128];
        if (s->suppressed > 0)
            snprintf(expected, sizeof(expected),
                     " warn upstream down key=%s (%u repeats suppressed)\n",
                     s->key, s->suppressed);
        else
            snprintf(expected, sizeof(expected), " warn upstream down key=%s\n",
                     s->key);
        if (count_lines(out) != 1 || strstr(out, expected) == NULL)
            fail_msg("%s: expected \"%s\", got \"%s\"", s->what, expected, out);
        free(out);
    }
}

static void
flush_reports_pending_repeats(void **state)
{
    (void)state;
    gw_log_limited(GW_LOG_WARN, "c", "first");
    gw_log_limited(GW_LOG_WARN, "c", "second");
    gw_log_limited(GW_LOG_WARN, "c", "third");
    gw_log_limited(GW_LOG_WARN, "d", "only");
    char *out = take_output();
    assert_int_equal(count_lines(out), 2);
    free(out);

    gw_log_flush_repeats();
    out = take_output();
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(
        out, " warn log: 2 repeats suppressed since the last line: c\n"));
    free(out);

    gw_log_flush_repeats();
    out = take_output();
    assert_string_equal(out, "");
    free(out);
    /* Flushing clears the table, so the next message is a first again. */
    gw_log_limited(GW_LOG_WARN, "c", "again");
    out = take_output();
    assert_int_equal(count_lines(out), 1);
    free(out);
}

/* Adds up the counts of every "log: N repeats suppressed" line in text. */
static unsigned long
reported_repeats(const char *text)
{
    static const char marker[] = " log: ";
    unsigned long total = 0;

    for (const char *p = strstr(text, marker); p != NULL;
         p = strstr(p + 1, marker))
        total += strtoul(p + sizeof(marker) - 1, NULL, 10);
    return total;
}

static void
evicted_keys_report_their_repeats(void **state)
{
    enum { KEYS = 700 };
    char key[32];

    (void)state;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < KEYS; i++) {
            snprintf(key, sizeof(key), "route-%d", i);
            gw_log_limited(GW_LOG_WARN, key, "failed %s", key);
        }
    }
    gw_log_flush_repeats();
    char *out = take_output();
    /* More keys than slots: some second rounds were firsts again, the rest
     * were counted, and every count is reported exactly once. */
    unsigned long reported = reported_repeats(out);
    size_t lines = count_lines(out);
    size_t report_lines = 0;
    for (const char *p = strstr(out, " log: "); p != NULL;
         p = strstr(p + 1, " log: "))
        report_lines++;
    size_t written = lines - report_lines;
    assert_true(written > KEYS); /* some keys were evicted */
    assert_true(reported > 0);   /* and some repeats were counted */
    assert_int_equal(written - KEYS + reported, KEYS);
    free(out);
}

/* --- access log ------------------------------------------------------- */

static const struct gw_access_entry base_entry = {
    .request_id = 7,
    .client = "127.0.0.1",
    .method = "GET",
    .target = "/api/x?y=1",
    .route = "users",
    .status = 200,
    .upstream_status = 200,
    .attempts = 1,
    .duration_ns = 1500000,
    .fallback = NULL,
    .error = NULL,
};

/* Returns the text after the timestamp of the only line written. */
static char *
access_line(enum gw_access_log format, const struct gw_access_entry *e)
{
    gw_access_log_write(format, e);
    char *out = take_output();
    assert_int_equal(count_lines(out), 1);
    return out;
}

static void
access_text_has_every_field(void **state)
{
    (void)state;
    char *out = access_line(GW_ACCESS_LOG_TEXT, &base_entry);
    assert_non_null(strstr(out, "Z access 127.0.0.1 \"GET /api/x?y=1\" "
                                "route=users status=200 upstream_status=200 "
                                "attempts=1 duration_ms=1.500 fallback=- "
                                "error=- request_id=7\n"));
    free(out);
}

static void
access_text_escapes_request_data(void **state)
{
    struct gw_access_entry e = base_entry;

    (void)state;
    e.target = "/a\"b\\c\nd e\xff";
    e.route = NULL;
    e.upstream_status = 0;
    e.fallback = "breaker_open";
    e.error = "breaker_open";
    char *out = access_line(GW_ACCESS_LOG_TEXT, &e);
    assert_non_null(strstr(out, "\"GET /a\\x22b\\x5cc\\x0ad\\x20e\\xff\" "
                                "route=- status=200 upstream_status=- "));
    assert_non_null(
        strstr(out, " fallback=breaker_open error=breaker_open request_id="));
    free(out);
}

static cJSON *
access_json(const struct gw_access_entry *e)
{
    char *out = access_line(GW_ACCESS_LOG_JSON, e);
    cJSON *line = cJSON_Parse(out);

    if (line == NULL)
        fail_msg("not JSON: %s", out);
    free(out);
    return line;
}

static void
access_json_has_every_field(void **state)
{
    struct gw_access_entry e = base_entry;

    (void)state;
    e.route = NULL;
    e.upstream_status = 0;
    e.fallback = "status_5xx";
    e.attempts = 3;
    cJSON *line = access_json(&e);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(line, "time")));
    assert_int_equal(cJSON_GetObjectItem(line, "request_id")->valueint, 7);
    assert_string_equal(cJSON_GetObjectItem(line, "client")->valuestring,
                        "127.0.0.1");
    assert_string_equal(cJSON_GetObjectItem(line, "method")->valuestring,
                        "GET");
    assert_string_equal(cJSON_GetObjectItem(line, "target")->valuestring,
                        "/api/x?y=1");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(line, "route")));
    assert_int_equal(cJSON_GetObjectItem(line, "status")->valueint, 200);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(line, "upstream_status")));
    assert_int_equal(cJSON_GetObjectItem(line, "attempts")->valueint, 3);
    assert_true(cJSON_GetObjectItem(line, "duration_ms")->valuedouble == 1.5);
    assert_string_equal(cJSON_GetObjectItem(line, "fallback")->valuestring,
                        "status_5xx");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(line, "error")));
    cJSON_Delete(line);
}

struct escape_case {
    const char *what;
    const char *target;
    const char *decoded; /* the target as a JSON parser reads it back */
};

static const struct escape_case escape_cases[] = {
    {"quote and backslash", "/a\"b\\c", "/a\"b\\c"},
    {"control characters", "/a\nb\rc\td\x01", "/a\nb\rc\td\x01"},
    {"valid UTF-8 passes through", "/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80",
     "/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80"},
    {"an invalid byte becomes U+FFFD", "/a\xff", "/a\xef\xbf\xbd"},
    {"an overlong form is invalid", "/\xc0\xaf", "/\xef\xbf\xbd\xef\xbf\xbd"},
    {"a surrogate is invalid", "/\xed\xa0\x80",
     "/\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    {"a cut sequence at the end", "/\xe2\x82", "/\xef\xbf\xbd\xef\xbf\xbd"},
};

static void
access_json_escapes_target(void **state)
{
    struct gw_access_entry e = base_entry;

    (void)state;
    for (size_t i = 0; i < sizeof(escape_cases) / sizeof(escape_cases[0]);
         i++) {
        e.target = escape_cases[i].target;
        cJSON *line = access_json(&e);
        const char *target =
            cJSON_GetStringValue(cJSON_GetObjectItem(line, "target"));
        if (target == NULL || strcmp(target, escape_cases[i].decoded) != 0)
            fail_msg("%s: read back \"%s\"", escape_cases[i].what,
                     target != NULL ? target : "(none)");
        cJSON_Delete(line);
    }
}

static void
access_json_cuts_long_target(void **state)
{
    struct gw_access_entry e = base_entry;
    char *target = malloc(3 * GW_LOG_LINE_MAX);

    (void)state;
    assert_non_null(target);
    memset(target, '"', 3 * GW_LOG_LINE_MAX - 1); /* each escapes to 2 */
    target[3 * GW_LOG_LINE_MAX - 1] = '\0';
    e.target = target;
    gw_access_log_write(GW_ACCESS_LOG_JSON, &e);
    char *out = take_output();
    assert_true(strlen(out) <= GW_LOG_LINE_MAX);
    cJSON *line = cJSON_Parse(out);
    assert_non_null(line);
    const char *logged =
        cJSON_GetStringValue(cJSON_GetObjectItem(line, "target"));
    assert_non_null(logged);
    size_t len = strlen(logged);
    assert_true(len > 900);
    assert_string_equal(logged + len - 3, "...");
    assert_int_equal(cJSON_GetObjectItem(line, "request_id")->valueint, 7);
    cJSON_Delete(line);
    free(out);
    free(target);
}

static void
access_off_writes_nothing(void **state)
{
    (void)state;
    gw_access_log_write(GW_ACCESS_LOG_OFF, &base_entry);
    char *out = take_output();
    assert_string_equal(out, "");
    free(out);
}

int
main(void)
{
#define TEST(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        TEST(log_line_has_time_level_message),
        TEST(log_escapes_control_characters),
        TEST(log_cuts_long_messages),
        TEST(log_skips_disabled_levels),
        TEST(limited_writes_once_per_interval),
        TEST(flush_reports_pending_repeats),
        TEST(evicted_keys_report_their_repeats),
        TEST(access_text_has_every_field),
        TEST(access_text_escapes_request_data),
        TEST(access_json_has_every_field),
        TEST(access_json_escapes_target),
        TEST(access_json_cuts_long_target),
        TEST(access_off_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
