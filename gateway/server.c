/*
 * Starting, draining and stopping the gateway, and the configuration in
 * force.
 */
#include "server.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
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

/* Points each route at its metrics, which outlive any one config. */
static int
attach_metrics(struct gw_server *srv, struct gw_config *config)
{
    for (size_t i = 0; i < config->route_count; i++) {
        config->routes[i].metrics =
            gw_metrics_route(&srv->metrics, config->routes[i].name);
        if (config->routes[i].metrics == NULL) {
            gw_log_error("server: cannot create metrics for route %s",
                         config->routes[i].name);
            return -1;
        }
    }
    return 0;
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
    if (attach_metrics(srv, srv->current->config) != 0)
        goto fail;

    srv->upstream =
        gw_upstream_new(srv->current->config->limits.max_connections);
    if (srv->upstream == NULL)
        goto fail;
    if (gw_admin_start_daemon(srv) != 0 || gw_proxy_start_daemon(srv) != 0)
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
    if (srv->traffic != NULL) {
        /* Stop accepting: libmicrohttpd hands back the listening socket. */
        MHD_socket fd = MHD_quiesce_daemon(srv->traffic);
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
    }
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
     * as cancelled, which resumes its connection with a 503. */
    gw_upstream_destroy(&srv->upstream);
    if (srv->traffic != NULL) {
        /* Give resumed connections a moment to send their responses. */
        for (int i = 0; i < 50 && atomic_load(&srv->in_flight) > 0; i++) {
            struct timespec pause = {.tv_nsec = 10 * 1000000};
            nanosleep(&pause, NULL);
        }
        MHD_stop_daemon(srv->traffic);
        srv->traffic = NULL;
    }
    if (srv->admin != NULL) {
        MHD_stop_daemon(srv->admin);
        srv->admin = NULL;
    }
    gw_config_ref_put(&srv->current);
    gw_metrics_destroy(&srv->metrics);
    pthread_mutex_destroy(&srv->config_lock);
}
