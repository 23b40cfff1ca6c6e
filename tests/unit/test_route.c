/*
 * Route matching: longest prefix, segment boundaries, 405 with Allow, and the
 * path sent upstream.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "config.h"
#include "route.h"

static const char routes_json[] =
    "{\"routes\":["
    "{\"name\":\"root\",\"match\":{\"prefix\":\"/\"},"
    "\"upstream\":{\"url\":\"http://h\"}},"
    "{\"name\":\"api\",\"match\":{\"prefix\":\"/api\",\"methods\":[\"GET\"]},"
    "\"upstream\":{\"url\":\"http://h\"}},"
    "{\"name\":\"api-write\",\"match\":{\"prefix\":\"/api\",\"methods\":"
    "[\"POST\",\"PUT\"]},\"upstream\":{\"url\":\"http://h\"}},"
    "{\"name\":\"users\",\"match\":{\"prefix\":\"/api/users\"},"
    "\"upstream\":{\"url\":\"http://h\"}},"
    "{\"name\":\"static\",\"match\":{\"prefix\":\"/static/\",\"methods\":"
    "[\"GET\"]},\"upstream\":{\"url\":\"http://h\"}}"
    "]}";

static int
setup(void **state)
{
    struct gw_config *c = NULL;
    char err[512];

    if (gw_config_parse(routes_json, strlen(routes_json), "t.json", &c, err,
                        sizeof(err)) != 0) {
        print_error("%s\n", err);
        return -1;
    }
    *state = c;
    return 0;
}

static int
teardown(void **state)
{
    struct gw_config *c = *state;

    gw_config_free(&c);
    return 0;
}

struct match_case {
    const char *what;
    const char *path;
    const char *method;
    enum gw_match_result result;
    const char *route; /* expected route, or the Allow value for 405 */
};

static const struct match_case match_cases[] = {
    {"root catches unrelated paths", "/x", "GET", GW_MATCH_OK, "root"},
    {"exact prefix", "/api", "GET", GW_MATCH_OK, "api"},
    {"prefix then slash", "/api/x", "GET", GW_MATCH_OK, "api"},
    {"prefix must end at a segment", "/apix", "GET", GW_MATCH_OK, "root"},
    {"longest prefix wins", "/api/users/7", "DELETE", GW_MATCH_OK, "users"},
    {"same prefix, other method", "/api/x", "POST", GW_MATCH_OK,
     "api-write"},
    {"HEAD follows GET", "/api", "HEAD", GW_MATCH_OK, "api"},
    {"method not listed", "/api/x", "DELETE", GW_MATCH_METHOD_NOT_ALLOWED,
     "GET, HEAD, POST, PUT"},
    {"slash-terminated prefix", "/static/a.css", "GET", GW_MATCH_OK,
     "static"},
    {"slash-terminated prefix needs the slash", "/static", "GET",
     GW_MATCH_OK, "root"},
    {"405 does not fall back to a shorter prefix", "/static/a", "POST",
     GW_MATCH_METHOD_NOT_ALLOWED, "GET, HEAD"},
};

static void
route_match_table(void **state)
{
    const struct gw_config *c = *state;

    for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]);
         i++) {
        const struct match_case *m = &match_cases[i];
        const struct gw_route *route = NULL;
        char allow[128] = "";

        enum gw_match_result got =
            gw_route_match(c, m->path, strlen(m->path), m->method, &route,
                           allow, sizeof(allow));
        if (got != m->result)
            fail_msg("case '%s': result %d, expected %d", m->what, got,
                     m->result);
        if (got == GW_MATCH_OK && strcmp(route->name, m->route) != 0)
            fail_msg("case '%s': route %s, expected %s", m->what, route->name,
                     m->route);
        if (got == GW_MATCH_METHOD_NOT_ALLOWED && strcmp(allow, m->route) != 0)
            fail_msg("case '%s': Allow [%s], expected [%s]", m->what, allow,
                     m->route);
    }
}

static void
route_no_match_is_404(void **state)
{
    const char json[] =
        "{\"routes\":[{\"name\":\"a\",\"match\":{\"prefix\":\"/a\"},"
        "\"upstream\":{\"url\":\"http://h\"}}]}";
    struct gw_config *c = NULL;
    const struct gw_route *route = NULL;
    char err[256], allow[64];

    (void)state;
    assert_int_equal(
        gw_config_parse(json, strlen(json), "t", &c, err, sizeof(err)), 0);
    assert_int_equal(gw_route_match(c, "/b", 2, "GET", &route, allow,
                                    sizeof(allow)),
                     GW_MATCH_NOT_FOUND);
    assert_null(route);
    gw_config_free(&c);
}

struct path_case {
    const char *what;
    const char *prefix;
    const char *base;
    bool strip;
    const char *path;
    const char *expected;
};

static const struct path_case path_cases[] = {
    {"unchanged without strip", "/api", "", false, "/api/x", "/api/x"},
    {"strip keeps the slash", "/api", "", true, "/api/x", "/x"},
    {"strip of the bare prefix", "/api", "", true, "/api", "/"},
    {"strip under a base path", "/api", "/v1", true, "/api/x", "/v1/x"},
    {"bare prefix under a base path", "/api", "/v1", true, "/api", "/v1"},
    {"base path without strip", "/api", "/v1", false, "/api/x",
     "/v1/api/x"},
    {"strip of a slash-terminated prefix", "/s/", "", true, "/s/a.css",
     "/a.css"},
    {"strip of the root prefix", "/", "", true, "/a", "/a"},
    {"encoded bytes pass unchanged", "/api", "", true, "/api/a%2Fb",
     "/a%2Fb"},
};

static void
route_upstream_path_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(path_cases) / sizeof(path_cases[0]); i++) {
        const struct path_case *p = &path_cases[i];
        char prefix[64], base[64], out[128];
        struct gw_route r = {.prefix = prefix,
                             .prefix_len = strlen(p->prefix),
                             .upstream_base = base,
                             .strip_prefix = p->strip};

        snprintf(prefix, sizeof(prefix), "%s", p->prefix);
        snprintf(base, sizeof(base), "%s", p->base);
        int n = gw_route_upstream_path(&r, p->path, strlen(p->path), out,
                                       sizeof(out));
        if (n < 0 || strcmp(out, p->expected) != 0)
            fail_msg("case '%s': got [%s], expected [%s]", p->what,
                     n < 0 ? "(error)" : out, p->expected);
        assert_int_equal((size_t)n, strlen(out));
    }
}

static void
route_upstream_path_too_long(void **state)
{
    char prefix[] = "/a", base[] = "/base";
    char out[8];
    struct gw_route r = {.prefix = prefix, .prefix_len = 2,
                         .upstream_base = base};

    (void)state;
    assert_int_equal(gw_route_upstream_path(&r, "/a/long/path", 12, out,
                                            sizeof(out)),
                     -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(route_match_table, setup, teardown),
        cmocka_unit_test(route_no_match_is_404),
        cmocka_unit_test(route_upstream_path_table),
        cmocka_unit_test(route_upstream_path_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
