/*
 * Hop-by-hop header filtering.
 */
#include "headers.h"

#include <limits.h>
#include <string.h>
#include <strings.h>

static const char *const hop_by_hop[] = {
    "Connection", "Keep-Alive",        "Proxy-Connection", "TE",
    "Trailer",    "Transfer-Encoding", "Upgrade",
};

bool
gw_header_is_hop_by_hop(const char *name)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++) {
        if (strcasecmp(name, hop_by_hop[i]) == 0)
            return true;
    }
    return false;
}

static bool
is_space(char c)
{
    return c == ' ' || c == '\t';
}

bool
gw_connection_lists(const char *value, const char *name)
{
    size_t name_len = strlen(name);
    const char *p = value;

    while (*p != '\0') {
        while (is_space(*p) || *p == ',')
            p++;
        const char *start = p;
        while (*p != '\0' && *p != ',')
            p++;
        const char *end = p;
        while (end > start && is_space(end[-1]))
            end--;
        if ((size_t)(end - start) == name_len &&
            strncasecmp(start, name, name_len) == 0)
            return true;
    }
    return false;
}

void
gw_connection_values_add(struct gw_connection_values *cv, const char *value)
{
    if (cv->count < GW_CONNECTION_VALUES_MAX)
        cv->values[cv->count++] = value;
    else
        cv->overflow = true;
}

bool
gw_header_forwarded(const struct gw_connection_values *cv, const char *name)
{
    if (gw_header_is_hop_by_hop(name))
        return false;
    for (size_t i = 0; i < cv->count; i++) {
        if (gw_connection_lists(cv->values[i], name))
            return false;
    }
    return true;
}

bool
gw_parse_content_length(const char *text, unsigned long long *out)
{
    unsigned long long v = 0;

    if (*text == '\0')
        return false;
    for (const char *c = text; *c != '\0'; c++) {
        if (*c < '0' || *c > '9' || v > (ULLONG_MAX - 9) / 10)
            return false;
        v = v * 10 + (unsigned long long)(*c - '0');
    }
    *out = v;
    return true;
}
