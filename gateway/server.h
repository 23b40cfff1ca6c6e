/*
 * The running gateway: the traffic and admin listeners (libmicrohttpd, one
 * epoll thread each), the upstream loop, and the configuration in force.
 *
 * Threads: gw_server_start() and the lifecycle calls run on the main thread;
 * request handlers run on libmicrohttpd's threads; upstream completions run
 * on the upstream loop thread. The thread count does not grow with the
 * number of requests in flight.
 */
#ifndef GATEWAY_SERVER_H
#define GATEWAY_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"

struct MHD_Daemon;
struct gw_upstream;

/* A configuration shared by the requests that started under it. */
struct gw_config_ref {
    struct gw_config *config;
    _Atomic long refs;
};

struct gw_server {
    pthread_mutex_t config_lock; /* guards the current pointer only */
    struct gw_config_ref *current;

    struct MHD_Daemon *traffic;
    struct MHD_Daemon *admin;
    struct gw_upstream *upstream;
    struct gw_metrics metrics;

    _Atomic long in_flight;   /* requests between start and completion */
    _Atomic long connections; /* open client connections */
    _Atomic uint64_t connections_refused; /* past limits.max_connections */
    _Atomic uint64_t next_request_id;
    _Atomic bool ready;     /* config loaded and listeners up */
    _Atomic bool draining;  /* shutting down: /readyz answers 503 */
    long max_connections;   /* fixed at start, like the listener */
    long client_timeout_ms; /* fixed at start, like the listener */
    uint16_t traffic_port;
    uint16_t admin_port;
};

/*
 * Starts listeners and the upstream loop with config, whose ownership moves
 * to the server. Returns 0, or -1 after logging why.
 */
int gw_server_start(struct gw_server *srv, struct gw_config *config);

/*
 * Stops accepting, marks the server as draining and waits up to timeout_ms
 * for the requests in flight to finish. Returns the number still in flight.
 */
long gw_server_drain(struct gw_server *srv, long timeout_ms);

/*
 * Loads path and, when it is valid, makes it the configuration for new
 * requests; requests in flight finish on theirs. Routes whose name and
 * policy settings are unchanged keep their breaker, limiter and cache
 * state. On an invalid file logs the error, keeps the running
 * configuration and returns -1. Call from the main thread.
 */
int gw_server_reload(struct gw_server *srv, const char *path);

/* Stops everything and frees what the server owns. */
void gw_server_stop(struct gw_server *srv);

/* Takes a reference to the configuration in force. */
struct gw_config_ref *gw_server_config_get(struct gw_server *srv);
void gw_config_ref_put(struct gw_config_ref **ref);

/* libmicrohttpd handlers of the traffic listener (proxy.c). */
int gw_proxy_start_daemon(struct gw_server *srv);

/* libmicrohttpd handlers of the admin listener (admin.c). */
int gw_admin_start_daemon(struct gw_server *srv);

#endif /* GATEWAY_SERVER_H */
