/*
 * Helpers shared by the config parser's files (config.c for the core keys,
 * config_policy.c for policies and fallbacks). Each returns 0, or -1 after
 * writing "FILE: JSON.PATH: VALUE what is wrong" into the validator.
 */
#ifndef GATEWAY_CONFIG_INTERNAL_H
#define GATEWAY_CONFIG_INTERNAL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct validator {
    const char *file;
    char *err;
    size_t err_size;
};

/* Longest JSON path kept for messages. */
#define CFG_PATH_MAX 256

int cfg_fail(struct validator *v, const char *path, const cJSON *value,
             const char *fmt, ...) __attribute__((format(printf, 4, 5)));
const char *cfg_type_name(const cJSON *value);
void cfg_path_key(char *out, size_t size, const char *parent, const char *key);
void cfg_path_index(char *out, size_t size, const char *parent, size_t index);
int cfg_check_keys(struct validator *v, const cJSON *obj, const char *path,
                   const char *const *allowed);
int cfg_expect_object(struct validator *v, const cJSON *value,
                      const char *path);
int cfg_int(struct validator *v, const cJSON *obj, const char *path,
            const char *key, long min, long max, long def, const char *unit,
            long *out);
int cfg_bool(struct validator *v, const cJSON *obj, const char *path,
             const char *key, bool def, bool *out);
int cfg_string(struct validator *v, const cJSON *obj, const char *path,
               const char *key, bool required, size_t max_len,
               const char **out);
/* Reads optional number key (fractions allowed) within [min, max]. */
int cfg_double(struct validator *v, const cJSON *obj, const char *path,
               const char *key, double min, double max, double def,
               const char *unit, double *out);

/* Checks an upstream URL and splits it into origin and base path. */
int cfg_url(struct validator *v, const cJSON *item, const char *path,
            char **origin, char **base);

/* Parses a route's policy blocks and fallbacks (config_policy.c). */
int cfg_route_policies(struct validator *v, const cJSON *obj, const char *path,
                       struct gw_route *route);
void cfg_route_policies_free(struct gw_route *route);

#endif /* GATEWAY_CONFIG_INTERNAL_H */
