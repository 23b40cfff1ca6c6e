/*
 * libFuzzer target for the config parser: gw_config_parse() on arbitrary
 * bytes, which are not NUL-terminated, so AddressSanitizer reports any read
 * past the end.
 *
 * Besides crashes and sanitizer reports, it checks the parser's contract
 * (config.h) and aborts when the contract is broken:
 * - a failure sets no config and writes a non-empty one-line message that
 *   starts with the file name;
 * - a success gives at least one route, and every route has its strings, a
 *   prefix that starts with '/' and matches itself, and a NULL-terminated
 *   method list;
 * - each listen address, as written in the config, parses again to the same
 *   port;
 * - parsing the same bytes twice gives the same result and message.
 */
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "route.h"

#define FUZZ_PATH "fuzz.json"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Prints which contract broke and aborts, so libFuzzer saves the input as
 * a crash. */
static _Noreturn void
contract_broken(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_config: contract broken: %s: %s\n", what,
            detail != NULL ? detail : "");
    abort();
}

static uint16_t
listen_port(const struct gw_listen *listen)
{
    const struct sockaddr_storage *ss = &listen->addr;

    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_port;
    if (ss->ss_family == AF_INET6)
        return ((const struct sockaddr_in6 *)ss)->sin6_port;
    contract_broken("listen address has an unknown family", listen->text);
}

static void
check_listen(const struct gw_listen *listen)
{
    struct gw_listen again;

    if (memchr(listen->text, '\0', sizeof(listen->text)) == NULL)
        contract_broken("listen text is not NUL-terminated", NULL);
    if (gw_listen_parse(listen->text, &again) != 0)
        contract_broken("listen text does not parse again", listen->text);
    if (again.addr.ss_family != listen->addr.ss_family ||
        listen_port(&again) != listen_port(listen))
        contract_broken("listen text parses to another address", listen->text);
}

static void
check_route(const struct gw_config *config, const struct gw_route *route)
{
    if (route->name == NULL || route->name[0] == '\0')
        contract_broken("route without a name", NULL);
    if (route->prefix == NULL || route->prefix[0] != '/' ||
        strlen(route->prefix) != route->prefix_len)
        contract_broken("route prefix is invalid", route->name);
    if (route->upstream_url == NULL || route->upstream_base == NULL)
        contract_broken("route without an upstream URL", route->name);
    if (route->connect_timeout_ms <= 0 || route->timeout_ms <= 0)
        contract_broken("route timeout is not positive", route->name);
    if ((route->methods == NULL) != (route->method_count == 0) ||
        (route->methods != NULL && route->methods[route->method_count] != NULL))
        contract_broken("route method list is not NULL-terminated",
                        route->name);

    /* A route serves its own prefix with the first method it lists. */
    const char *method = route->method_count > 0 ? route->methods[0] : "GET";
    if (!gw_route_allows(route, method))
        contract_broken("route rejects a method it lists", route->name);
    const struct gw_route *matched = NULL;
    char allow[256];
    if (gw_route_match(config, route->prefix, route->prefix_len, method,
                       &matched, allow, sizeof(allow)) != GW_MATCH_OK ||
        matched == NULL || matched->prefix_len != route->prefix_len)
        contract_broken("route does not match its own prefix", route->name);

    char upstream_path[8192];
    if (gw_route_upstream_path(route, route->prefix, route->prefix_len,
                               upstream_path, sizeof(upstream_path)) < 0)
        contract_broken("upstream path of the prefix does not fit",
                        route->name);
}

static void
check_config(const struct gw_config *config)
{
    if (config->path == NULL || strcmp(config->path, FUZZ_PATH) != 0)
        contract_broken("config path is not the one given", config->path);
    if (config->route_count == 0 || config->routes == NULL)
        contract_broken("config without routes", NULL);
    check_listen(&config->listen);
    check_listen(&config->admin_listen);
    for (size_t i = 0; i < config->route_count; i++)
        check_route(config, &config->routes[i]);
}

static void
check_message(const char *err, size_t err_size)
{
    if (memchr(err, '\0', err_size) == NULL)
        contract_broken("message is not NUL-terminated", NULL);
    if (err[0] == '\0')
        contract_broken("failure without a message", NULL);
    if (strncmp(err, FUZZ_PATH ": ", strlen(FUZZ_PATH ": ")) != 0)
        contract_broken("message does not start with the file name", err);
    if (strpbrk(err, "\r\n") != NULL)
        contract_broken("message spans more than one line", err);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    char err_again[1024];
    struct gw_config *config = NULL;
    struct gw_config *again = NULL;

    /* Not NUL-terminated on purpose: the parser must stay within size. */
    const char *text = (const char *)data;
    memset(err, 0x55, sizeof(err));
    int rc = gw_config_parse(text, size, FUZZ_PATH, &config, err, sizeof(err));
    if (rc != 0 && rc != -1)
        contract_broken("result is neither 0 nor -1", NULL);
    if (rc == 0) {
        if (config == NULL)
            contract_broken("success without a config", NULL);
        check_config(config);
    } else {
        if (config != NULL)
            contract_broken("failure with a config", NULL);
        check_message(err, sizeof(err));
    }

    int rc_again = gw_config_parse(text, size, FUZZ_PATH, &again, err_again,
                                   sizeof(err_again));
    if (rc_again != rc)
        contract_broken("a second parse gives another result", NULL);
    if (rc != 0 && strcmp(err, err_again) != 0)
        contract_broken("a second parse gives another message", err_again);

    gw_config_free(&again);
    gw_config_free(&config);
    if (config != NULL)
        contract_broken("gw_config_free does not clear the pointer", NULL);
    return 0;
}
