/*
 * Config validation: every kind of bad input gives an error naming the file,
 * the JSON path and the value; good input loads with the right defaults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "config.h"

#define ROUTE(extra)                                                           \
    "{\"name\":\"users\",\"match\":{\"prefix\":\"/api\"},"                     \
    "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"}" extra "}"

struct bad_case {
    const char *what;
    const char *json;
    const char *expected; /* a substring the message must contain */
};

static const struct bad_case bad_cases[] = {
    {"invalid JSON names line and column", "{\"routes\": [}",
     "test.json: line 1, column 13: invalid JSON"},
    {"trailing text after the document", "{\"routes\":[" ROUTE("") "]} x",
     "invalid JSON"},
    {"document is not an object", "[1]", "the document is an array"},
    {"unknown top-level key", "{\"bogus\":1,\"routes\":[" ROUTE("") "]}",
     "test.json: bogus: unknown key; allowed keys here: listen, admin"},
    {"unknown route key", "{\"routes\":[" ROUTE(",\"retries\":3") "]}",
     "routes[0].retries: unknown key"},
    {"unknown upstream key",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\",\"timeout\":5}}]}",
     "routes[0].upstream.timeout: unknown key"},
    {"duplicate key",
     "{\"listen\":\"1.2.3.4:1\",\"listen\":\"1.2.3.4:2\","
     "\"routes\":[" ROUTE("") "]}",
     "listen: appears twice"},
    {"listen of the wrong type", "{\"listen\":8080,\"routes\":[" ROUTE("") "]}",
     "listen: 8080 is a number; expected a string"},
    {"listen without a port",
     "{\"listen\":\"127.0.0.1\",\"routes\":[" ROUTE("") "]}",
     "listen: \"127.0.0.1\" is not a valid listen address"},
    {"listen with a port out of range",
     "{\"listen\":\"127.0.0.1:70000\",\"routes\":[" ROUTE("") "]}",
     "listen: \"127.0.0.1:70000\" is not a valid listen address"},
    {"listen with a host name",
     "{\"listen\":\"localhost:80\",\"routes\":[" ROUTE("") "]}",
     "is not a valid listen address"},
    {"admin listen invalid",
     "{\"admin\":{\"listen\":\"[::1:80\"},\"routes\":[" ROUTE("") "]}",
     "admin.listen: \"[::1:80\" is not a valid listen address"},
    {"admin of the wrong type", "{\"admin\":true,\"routes\":[" ROUTE("") "]}",
     "admin: true is a boolean; expected an object"},
    {"missing routes", "{}", "routes: is missing"},
    {"empty routes", "{\"routes\":[]}", "routes: [] is not a non-empty array"},
    {"route not an object", "{\"routes\":[\"x\"]}",
     "routes[0]: \"x\" is a string; expected an object"},
    {"missing name",
     "{\"routes\":[{\"match\":{\"prefix\":\"/\"},\"upstream\":{\"url\":"
     "\"http://h\"}}]}",
     "routes[0].name: is missing"},
    {"name with a space",
     "{\"routes\":[{\"name\":\"a b\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[0].name: \"a b\" contains ' '"},
    {"duplicate route name",
     "{\"routes\":[" ROUTE("") ",{\"name\":\"users\",\"match\":{\"prefix\":"
                               "\"/b\"},\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[1].name: name \"users\" is already used by routes[0]"},
    {"prefix without a slash",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"api\"},"
     "\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[0].match.prefix: \"api\" does not start with '/'"},
    {"prefix with a query",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/a?b\"},"
     "\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[0].match.prefix: \"/a?b\" contains"},
    {"methods not an array",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\",\"methods\":"
     "\"GET\"},\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[0].match.methods: \"GET\" is not a non-empty array"},
    {"lowercase method",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\",\"methods\":"
     "[\"GET\",\"post\"]},\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[0].match.methods[1]: \"post\" is not a method name"},
    {"method listed twice",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\",\"methods\":"
     "[\"GET\",\"GET\"]},\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[0].match.methods[1]: \"GET\" is listed twice"},
    {"missing upstream",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"}}]}",
     "routes[0].upstream: is missing"},
    {"malformed URL",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http//nohost\"}}]}",
     "routes[0].upstream.url: \"http//nohost\""},
    {"URL with another scheme",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"ftp://h\"}}]}",
     "routes[0].upstream.url: \"ftp://h\" does not use the http or https "
     "scheme"},
    {"URL with a query",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h/x?y=1\"}}]}",
     "routes[0].upstream.url: \"http://h/x?y=1\" has a query"},
    {"URL with credentials",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://u:p@h\"}}]}",
     "contains credentials"},
    {"timeout as a string",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\",\"timeout_ms\":\"5s\"}}]}",
     "routes[0].upstream.timeout_ms: \"5s\" is a string; expected an integer "
     "(milliseconds)"},
    {"timeout out of range",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\",\"timeout_ms\":0}}]}",
     "routes[0].upstream.timeout_ms: 0 is out of range; allowed 1 to 3600000 "
     "(milliseconds)"},
    {"timeout not whole",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\",\"timeout_ms\":1.5}}]}",
     "routes[0].upstream.timeout_ms: 1.5 is not a whole number"},
    {"connect timeout over the total",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\",\"connect_timeout_ms\":500,"
     "\"timeout_ms\":100}}]}",
     "routes[0].upstream.connect_timeout_ms: 500 is larger than timeout_ms"},
    {"strip_prefix not a boolean",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/\"},"
     "\"upstream\":{\"url\":\"http://h\",\"strip_prefix\":1}}]}",
     "routes[0].upstream.strip_prefix: 1 is a number; expected true or "
     "false"},
    {"limit out of range",
     "{\"limits\":{\"max_header_bytes\":10},\"routes\":[" ROUTE("") "]}",
     "limits.max_header_bytes: 10 is out of range; allowed 1024 to 1048576 "
     "(bytes)"},
    {"response buffer too small",
     "{\"limits\":{\"response_buffer_bytes\":100},\"routes\":[" ROUTE("") "]}",
     "limits.response_buffer_bytes: 100 is out of range; allowed 4096 to "
     "67108864 (bytes)"},
    {"unknown limit",
     "{\"limits\":{\"max_headers\":10},\"routes\":[" ROUTE("") "]}",
     "limits.max_headers: unknown key"},
    {"same prefix and method twice",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/x\",\"methods\":"
     "[\"GET\"]},\"upstream\":{\"url\":\"http://h\"}},{\"name\":\"b\","
     "\"match\":{\"prefix\":\"/x\",\"methods\":[\"POST\",\"GET\"]},"
     "\"upstream\":{\"url\":\"http://h\"}}]}",
     "routes[1].match: prefix \"/x\" with method GET is already routed by "
     "routes[0]"},
    {"same prefix, one with every method",
     "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/x\"},"
     "\"upstream\":{\"url\":\"http://h\"}},{\"name\":\"b\",\"match\":{"
     "\"prefix\":\"/x\",\"methods\":[\"POST\"]},\"upstream\":{\"url\":"
     "\"http://h\"}}]}",
     "takes every method"},
    {"rate limit of zero",
     "{\"routes\":[" ROUTE(",\"rate_limit\":{\"rate\":0}") "]}",
     "routes[0].rate_limit.rate: 0 is out of range; allowed 0.001 to 1000000 "
     "(requests per second)"},
    {"unknown limiter key",
     "{\"routes\":[" ROUTE(",\"rate_limit\":{\"key\":\"cookie\"}") "]}",
     "routes[0].rate_limit.key: \"cookie\" is not a limiter key"},
    {"max_keys on a global limiter",
     "{\"routes\":[" ROUTE(",\"rate_limit\":{\"max_keys\":5}") "]}",
     "routes[0].rate_limit.max_keys: 5 is set but key is \"global\""},
    {"breaker percent over 100",
     "{\"routes\":[" ROUTE(",\"breaker\":{\"error_percent\":150}") "]}",
     "routes[0].breaker.error_percent: 150 is out of range; allowed 1 to "
     "100 (percent)"},
    {"breaker window not a multiple of buckets",
     "{\"routes\":[" ROUTE(",\"breaker\":{\"window_ms\":1001,"
                           "\"buckets\":10}") "]}",
     "routes[0].breaker.window_ms: 1001 is not a multiple of buckets (10)"},
    {"unknown breaker trip",
     "{\"routes\":[" ROUTE(",\"breaker\":{\"trip\":\"sometimes\"}") "]}",
     "routes[0].breaker.trip: \"sometimes\" is not a trip rule"},
    {"unknown breaker key",
     "{\"routes\":[" ROUTE(",\"breaker\":{\"threshold\":3}") "]}",
     "routes[0].breaker.threshold: unknown key"},
    {"bulkhead of zero",
     "{\"routes\":[" ROUTE(",\"bulkhead\":{\"max_concurrent\":0}") "]}",
     "routes[0].bulkhead.max_concurrent: 0 is out of range"},
    {"retry attempts over the cap",
     "{\"routes\":[" ROUTE(",\"retry\":{\"attempts\":11}") "]}",
     "routes[0].retry.attempts: 11 is out of range; allowed 1 to 10"},
    {"unknown retry condition",
     "{\"routes\":[" ROUTE(",\"retry\":{\"on\":[\"4xx\"]}") "]}",
     "routes[0].retry.on[0]: \"4xx\" is not a retry condition"},
    {"retry status out of range",
     "{\"routes\":[" ROUTE(",\"retry\":{\"on\":[\"timeout\",700]}") "]}",
     "routes[0].retry.on[1]: 700 is not an HTTP status"},
    {"max backoff under the base",
     "{\"routes\":[" ROUTE(",\"retry\":{\"backoff_ms\":100,"
                           "\"max_backoff_ms\":10}") "]}",
     "routes[0].retry.max_backoff_ms: 10 (the default when not set is 250) "
     "is less than backoff_ms (100)"},
    {"unknown fallback reason",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"on\":[\"oops\"]}") "]}",
     "routes[0].fallback.on[0]: \"oops\" is not a fallback reason"},
    {"fallback mixing kinds",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"status\":503,\"stale\":{}}") "]}",
     "routes[0].fallback: mixes kinds"},
    {"fallback status out of range",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"status\":99}") "]}",
     "routes[0].fallback.status: 99 is out of range; allowed 200 to 599"},
    {"fallback body and body_file",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"body\":\"x\","
                           "\"body_file\":\"/etc/hostname\"}") "]}",
     "routes[0].fallback.body: and body_file are both set"},
    {"fallback body_file missing",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"body_file\":"
                           "\"/nonexistent/f\"}") "]}",
     "routes[0].fallback.body_file: \"/nonexistent/f\" cannot be opened"},
    {"fallback header with CR",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"headers\":{\"X-A\":"
                           "\"a\\rb\"}}") "]}",
     "routes[0].fallback.headers.X-A: \"a\\rb\" is not a header value"},
    {"fallback upstream invalid URL",
     "{\"routes\":[" ROUTE(",\"fallback\":{\"upstream\":{\"url\":"
                           "\"gopher://h\"}}") "]}",
     "routes[0].fallback.upstream.url: \"gopher://h\" does not use the http"},
    {"two stale fallbacks",
     "{\"routes\":[" ROUTE(",\"fallback\":[{\"stale\":{}},"
                           "{\"stale\":{}}]") "]}",
     "routes[0].fallback[1]: is a second stale fallback"},
    {"empty fallback array", "{\"routes\":[" ROUTE(",\"fallback\":[]") "]}",
     "routes[0].fallback: [] is not a fallback object or an array"},
    {"unknown access log format",
     "{\"log\":{\"access\":\"xml\"},\"routes\":[" ROUTE("") "]}",
     "log.access: \"xml\" is not an access log format"},
};

static void
config_rejects_bad_input(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct gw_config *config = NULL;
        char err[1024] = "";

        if (c->expected == NULL)
            continue;
        int rc = gw_config_parse(c->json, strlen(c->json), "test.json", &config,
                                 err, sizeof(err));
        if (rc == 0 || strstr(err, c->expected) == NULL ||
            strncmp(err, "test.json: ", 11) != 0)
            fail_msg("case '%s': expected an error containing [%s], got rc=%d "
                     "[%s]",
                     c->what, c->expected, rc, err);
        assert_null(config);
    }
}

static void
config_loads_defaults(void **state)
{
    const char *json = "{\"routes\":[" ROUTE("") "]}";
    struct gw_config *c = NULL;
    char err[512];

    (void)state;
    assert_int_equal(
        gw_config_parse(json, strlen(json), "t.json", &c, err, sizeof(err)), 0);
    assert_string_equal(c->listen.text, "0.0.0.0:8080");
    assert_string_equal(c->admin_listen.text, "127.0.0.1:9901");
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->limits.max_header_bytes, 16384);
    assert_int_equal(c->limits.max_body_bytes, 10485760);
    assert_int_equal(c->drain_timeout_ms, 10000);
    assert_int_equal(c->route_count, 1);
    assert_string_equal(c->routes[0].name, "users");
    assert_string_equal(c->routes[0].prefix, "/api");
    assert_null(c->routes[0].methods);
    assert_string_equal(c->routes[0].upstream_url, "http://127.0.0.1:9000");
    assert_string_equal(c->routes[0].upstream_base, "");
    assert_false(c->routes[0].strip_prefix);
    assert_int_equal(c->routes[0].connect_timeout_ms, 1000);
    assert_int_equal(c->routes[0].timeout_ms, 30000);
    gw_config_free(&c);
    assert_null(c);
}

static void
config_loads_every_key(void **state)
{
    const char *json =
        "{\"listen\":\"[::1]:8081\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
        "\"limits\":{\"max_connections\":5,\"max_header_bytes\":2048,"
        "\"max_body_bytes\":0,\"max_response_bytes\":100,"
        "\"response_buffer_bytes\":8192,\"client_timeout_ms\":1500},"
        "\"drain_timeout_ms\":0,"
        "\"routes\":[{\"name\":\"a.b-c_d\",\"match\":{\"prefix\":\"/x/\","
        "\"methods\":[\"GET\",\"POST\"]},\"upstream\":{\"url\":"
        "\"https://example.test:8443/base/\",\"strip_prefix\":true,"
        "\"connect_timeout_ms\":5,\"timeout_ms\":7}}]}";
    struct gw_config *c = NULL;
    char err[512] = "";

    (void)state;
    int rc =
        gw_config_parse(json, strlen(json), "t.json", &c, err, sizeof(err));
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    assert_int_equal(c->listen.addr.ss_family, AF_INET6);
    assert_int_equal(c->limits.max_connections, 5);
    assert_int_equal(c->limits.max_body_bytes, 0);
    assert_int_equal(c->limits.max_response_bytes, 100);
    assert_int_equal(c->limits.response_buffer_bytes, 8192);
    assert_int_equal(c->limits.client_timeout_ms, 1500);
    assert_int_equal(c->drain_timeout_ms, 0);
    assert_int_equal(c->routes[0].method_count, 2);
    assert_string_equal(c->routes[0].methods[1], "POST");
    assert_string_equal(c->routes[0].upstream_url, "https://example.test:8443");
    assert_string_equal(c->routes[0].upstream_base, "/base");
    assert_true(c->routes[0].strip_prefix);
    assert_int_equal(c->routes[0].connect_timeout_ms, 5);
    assert_int_equal(c->routes[0].timeout_ms, 7);
    gw_config_free(&c);
}

static void
config_loads_policies(void **state)
{
    const char *json = "{\"routes\":[" ROUTE(
        ",\"rate_limit\":{\"rate\":2.5,\"burst\":7,\"key\":"
        "\"header:X-Api-Key\"},\"breaker\":{\"trip\":\"failure_rate\","
        "\"failures_per_second\":0.5,\"burst\":4},\"bulkhead\":{"
        "\"max_concurrent\":3,\"max_wait\":2,\"max_wait_ms\":50},"
        "\"retry\":{\"attempts\":2,\"on\":[\"5xx\",429],"
        "\"per_try_timeout_ms\":100},\"fallback\":[{\"on\":["
        "\"timeout\"],\"upstream\":{\"url\":\"http://b:1/x\"}},"
        "{\"stale\":{\"max_age_ms\":5}},{\"status\":200,\"body\":"
        "\"ok\"}]") "]}";
    struct gw_config *c = NULL;
    char err[512] = "";

    (void)state;
    if (gw_config_parse(json, strlen(json), "t.json", &c, err, sizeof(err)))
        fail_msg("unexpected error: %s", err);
    const struct gw_route *r = &c->routes[0];
    assert_true(r->rate_limit.enabled);
    assert_true(r->rate_limit.lib.rate == 2.5);
    assert_int_equal(r->rate_limit.lib.burst, 7);
    assert_int_equal(r->rate_limit.key, GW_LIMIT_KEY_HEADER);
    assert_string_equal(r->rate_limit.header, "X-Api-Key");
    assert_int_equal(r->rate_limit.lib.max_keys, 10000);
    assert_int_equal(r->breaker.lib.trip, WK_BREAKER_TRIP_FAILURE_RATE);
    assert_int_equal(r->breaker.lib.burst, 4);
    assert_int_equal(r->bulkhead.lib.max_wait, 2);
    assert_int_equal(r->retry.lib.attempts, 2);
    assert_int_equal(r->retry.lib.on, WK_RETRY_ON_5XX | WK_RETRY_ON_STATUSES);
    assert_int_equal(r->retry.lib.status_count, 1);
    assert_int_equal(r->retry.lib.statuses[0], 429);
    assert_int_equal(r->retry.per_try_timeout_ms, 100);
    assert_int_equal(r->fallback_count, 3);
    assert_int_equal(r->fallbacks[0].kind, GW_FALLBACK_UPSTREAM);
    assert_int_equal(r->fallbacks[0].on, GW_REASON_TIMEOUT);
    assert_string_equal(r->fallbacks[0].upstream_base, "/x");
    assert_int_equal(r->fallbacks[1].kind, GW_FALLBACK_STALE);
    assert_int_equal(r->fallbacks[1].on, GW_REASON_DEFAULT);
    assert_int_equal(r->fallbacks[2].kind, GW_FALLBACK_STATIC);
    assert_int_equal(r->fallbacks[2].status, 200);
    assert_int_equal(r->fallbacks[2].body_len, 2);
    assert_non_null(r->policy_settings);
    assert_non_null(strstr(r->policy_settings, "\"rate_limit\""));
    gw_config_free(&c);
}

static void
config_shipped_files_valid(void **state)
{
    static const char *const files[] = {"config/gateway.json",
                                        "config/docker.json"};
    (void)state;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct gw_config *c = NULL;
        char err[1024] = "";
        FILE *f = fopen(files[i], "r");

        if (f == NULL)
            continue; /* docker.json arrives with the container image */
        fclose(f);
        if (gw_config_load(files[i], &c, err, sizeof(err)) != 0)
            fail_msg("%s", err);
        gw_config_free(&c);
    }
}

static void
config_missing_file_named(void **state)
{
    struct gw_config *c = NULL;
    char err[512] = "";

    (void)state;
    assert_int_equal(
        gw_config_load("/nonexistent/gw.json", &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/gw.json: cannot open"));
}

static void
route_allows_head_with_get(void **state)
{
    char get[] = "GET";
    char *methods[] = {get, NULL};
    struct gw_route r = {.methods = methods, .method_count = 1};

    (void)state;
    assert_true(gw_route_allows(&r, "GET"));
    assert_true(gw_route_allows(&r, "HEAD"));
    assert_false(gw_route_allows(&r, "POST"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_rejects_bad_input),
        cmocka_unit_test(config_loads_defaults),
        cmocka_unit_test(config_loads_every_key),
        cmocka_unit_test(config_loads_policies),
        cmocka_unit_test(config_shipped_files_valid),
        cmocka_unit_test(config_missing_file_named),
        cmocka_unit_test(route_allows_head_with_get),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
