/*
 * Starting, draining and stopping the gateway, and the configuration in
 * force.
 */
#include "server.h"

#include <limits.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "policy.h"
#include "upstream.h"

struct gw_config_ref *
gw_server_config_get(struct gw_server *srv)
{
    pthread_mutex_lock(&srv->config_lock);
    struct gw_config_ref *ref = srv->current;
    atomic_fetch_add_explicit(&ref->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&srv->config_lock);
    return ref;
}

void
gw_config_ref_put(struct gw_config_ref **refp)
{
    struct gw_config_ref *ref = *refp;

    if (ref == NULL)
        return;
    *refp = NULL;
    if (atomic_fetch_sub_explicit(&ref->refs, 1, memory_order_acq_rel) != 1)
        return;
    gw_config_free(&ref->config);
    free(ref);
}

static const struct gw_route *
find_route(const struct gw_config *config, const char *name)
{
    for (size_t i = 0; config != NULL && i < config->route_count; i++) {
        if (strcmp(config->routes[i].name, name) == 0)
            return &config->routes[i];
    }
    return NULL;
}

/*
 * Points each route of config at its metrics, which outlive any one config,
 * and at its policies' run-time state: shared with the same route of
 * previous when its policy settings are unchanged, new otherwise.
 */
static int
attach_runtime(struct gw_server *srv, struct gw_config *config,
               const struct gw_config *previous)
{
    for (size_t i = 0; i < config->route_count; i++) {
        struct gw_route *route = &config->routes[i];
        const struct gw_route *old = find_route(previous, route->name);

        route->metrics = gw_metrics_route(&srv->metrics, route->name);
        if (route->metrics == NULL) {
            gw_log_error("server: cannot create metrics for route %s",
                         route->name);
            return -1;
        }
        route->runtime = gw_route_runtime_get(
            route, old != NULL ? old->runtime : NULL, route->metrics);
        if (route->runtime == NULL)
            return -1;
    }
    return 0;
}

/* The traffic listener as the upstream loop's event source. */
static void
run_traffic(void *arg)
{
    struct gw_server *srv = arg;

    MHD_run(srv->traffic);
}

static long
traffic_timeout(void *arg)
{
    struct gw_server *srv = arg;
    MHD_UNSIGNED_LONG_LONG ms;

    if (MHD_get_timeout(srv->traffic, &ms) != MHD_YES)
        return -1;
    return ms > LONG_MAX ? LONG_MAX : (long)ms;
}

static bool
traffic_busy(void *arg)
{
    struct gw_server *srv = arg;

    return atomic_load(&srv->in_flight) > 0;
}

/* Stops accepting; runs on the loop thread, which drives the daemon.
 * libmicrohttpd hands back the listening socket. */
static void
quiesce_traffic(void *arg)
{
    struct gw_server *srv = arg;
    MHD_socket fd = MHD_quiesce_daemon(srv->traffic);

    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

int
gw_server_start(struct gw_server *srv, struct gw_config *config)
{
    memset(srv, 0, sizeof(*srv));
    pthread_mutex_init(&srv->config_lock, NULL);
    if (gw_metrics_init(&srv->metrics) != 0)
        goto fail_config;
    srv->current = calloc(1, sizeof(*srv->current));
    if (srv->current == NULL)
        goto fail_config;
    srv->current->config = config;
    atomic_init(&srv->current->refs, 1);
    config = NULL;
    if (attach_runtime(srv, srv->current->config, NULL) != 0)
        goto fail;

    srv->upstream =
        gw_upstream_new(srv->current->config->limits.max_connections);
    if (srv->upstream == NULL)
        goto fail;
    if (gw_admin_start_daemon(srv) != 0 || gw_proxy_start_daemon(srv) != 0)
        goto fail;
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(srv->traffic, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        gw_log_error("server: the traffic listener has no epoll descriptor");
        goto fail;
    }
    struct gw_loop_source source = {.fd = info->epoll_fd,
                                    .run = run_traffic,
                                    .timeout_ms = traffic_timeout,
                                    .busy = traffic_busy,
                                    .arg = srv};
    gw_upstream_set_source(srv->upstream, &source);
    if (gw_upstream_start(srv->upstream) != 0)
        goto fail;
    atomic_store(&srv->ready, true);
    return 0;

fail_config:
    gw_config_free(&config);
fail:
    gw_server_stop(srv);
    return -1;
}

long
gw_server_drain(struct gw_server *srv, long timeout_ms)
{
    struct timespec start, now;

    atomic_store(&srv->draining, true);
    /* Without a running loop nothing drives the daemon, so this thread may
     * quiesce it itself. */
    if (srv->traffic != NULL &&
        gw_upstream_post(srv->upstream, quiesce_traffic, srv) != 0)
        quiesce_traffic(srv);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        long left = atomic_load(&srv->in_flight);
        if (left == 0)
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 +
                       (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= timeout_ms)
            return left;
        struct timespec pause = {.tv_nsec = 10 * 1000000};
        nanosleep(&pause, NULL);
    }
}

void
gw_server_stop(struct gw_server *srv)
{
    /* Stopping the upstream loop first settles every call still in flight
     * as cancelled, which resumes its connection with a 503; the loop drives
     * the listener a little longer so those responses go out. Then no
     * thread runs the daemon, and this one may stop it. */
    gw_upstream_stop(srv->upstream);
    if (srv->traffic != NULL) {
        MHD_stop_daemon(srv->traffic);
        srv->traffic = NULL;
    }
    if (srv->admin != NULL) {
        MHD_stop_daemon(srv->admin);
        srv->admin = NULL;
    }
    gw_upstream_destroy(&srv->upstream);
    gw_config_ref_put(&srv->current);
    gw_metrics_destroy(&srv->metrics);
    pthread_mutex_destroy(&srv->config_lock);
}

/* Warns about settings a reload cannot apply to listeners already open. */
static void
warn_fixed_settings(const struct gw_config *old, const struct gw_config *new)
{
    if (strcmp(old->listen.text, new->listen.text) != 0 ||
        strcmp(old->admin_listen.text, new->admin_listen.text) != 0)
        gw_log_warn("server: reload: listen and admin.listen changes take "
                    "effect at the next restart; still serving on %s and %s",
                    old->listen.text, old->admin_listen.text);
    if (old->limits.max_connections != new->limits.max_connections ||
        old->limits.client_timeout_ms != new->limits.client_timeout_ms)
        gw_log_warn("server: reload: limits.max_connections and "
                    "limits.client_timeout_ms changes take effect at the "
                    "next restart");
}

int
gw_server_reload(struct gw_server *srv, const char *path)
{
    char err[1024];
    struct gw_config *config = NULL;
    struct gw_config_ref *ref = NULL;
    struct gw_config_ref *old = gw_server_config_get(srv);
    int rc = -1;

    if (gw_config_load(path, &config, err, sizeof(err)) != 0) {
        gw_log_error("server: reload failed, the running configuration "
                     "stays: %s",
                     err);
        goto out;
    }
    ref = calloc(1, sizeof(*ref));
    if (ref == NULL || attach_runtime(srv, config, old->config) != 0) {
        gw_log_error("server: reload failed, the running configuration "
                     "stays: out of memory");
        goto out;
    }
    warn_fixed_settings(old->config, config);
    ref->config = config;
    config = NULL;
    atomic_init(&ref->refs, 1);

    /* Requests that started under the old config keep their reference to
     * it; new requests take the new one from here on. */
    pthread_mutex_lock(&srv->config_lock);
    struct gw_config_ref *replaced = srv->current;
    srv->current = ref;
    pthread_mutex_unlock(&srv->config_lock);
    gw_config_ref_put(&replaced);
    ref = NULL;
    rc = 0;
    gw_log_info("server: reloaded %s: %zu routes", path,
                srv->current->config->route_count);
out:
    atomic_fetch_add(
        rc == 0 ? &srv->metrics.reloads_ok : &srv->metrics.reloads_failed, 1);
    free(ref);
    gw_config_free(&config);
    gw_config_ref_put(&old);
    return rc;
}
