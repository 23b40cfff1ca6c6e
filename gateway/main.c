/*
 * workshop-gateway: command line, signals and the process lifecycle.
 *
 * Signals are blocked in every thread and taken by the main thread with
 * sigtimedwait(), so no handler runs at an arbitrary point of another
 * thread's work.
 */
#include <curl/curl.h>
#include <microhttpd.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "config.h"
#include "log.h"
#include "server.h"
#include "version.h"

#define DEFAULT_CONFIG "/etc/workshop-gateway/gateway.json"

static void
usage(FILE *out)
{
    fprintf(out,
            "usage: %s --config FILE       run the gateway\n"
            "       %s --check-config FILE validate FILE; exit 0 if valid, "
            "2 if not\n"
            "       %s --health [--config FILE]\n"
            "                                 probe the admin listener's "
            "/healthz; exit 0 if healthy\n"
            "       %s --version | --help\n"
            "\n"
            "options:\n"
            "  -c, --config FILE        configuration file (JSON); required,\n"
            "                           except with --health (default %s)\n"
            "      --check-config FILE  validate a configuration and exit\n"
            "      --health             exit 0 when the running gateway's "
            "/healthz answers 200\n"
            "      --log-level LEVEL    error, warn, info (default) or debug\n"
            "  -V, --version            print the version and exit\n"
            "  -h, --help               print this help and exit\n",
            GW_NAME, GW_NAME, GW_NAME, GW_NAME, DEFAULT_CONFIG);
}

/* Raises the open-file limit to the hard limit: each client connection and
 * each upstream connection needs a descriptor. */
static void
raise_fd_limit(void)
{
    struct rlimit lim;

    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
            gw_log_warn("main: cannot raise the open-file limit to %llu: %s",
                        (unsigned long long)lim.rlim_max, strerror(errno));
    }
}

static int
check_config(const char *path)
{
    char err[1024];
    struct gw_config *config;

    if (gw_config_load(path, &config, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: invalid configuration: %s\n", GW_NAME, err);
        return GW_EXIT_CONFIG;
    }
    printf("%s: %s is valid: %zu route%s\n", GW_NAME, path, config->route_count,
           config->route_count == 1 ? "" : "s");
    gw_config_free(&config);
    return 0;
}

static size_t
discard_body(char *data, size_t size, size_t count, void *arg)
{
    (void)data;
    (void)arg;
    return size * count;
}

/* Probes http://ADMIN/healthz: for container health checks, which have no
 * curl binary in the image. */
static int
health(const char *path)
{
    char err[1024];
    char url[128];
    struct gw_config *config;
    long status = 0;

    if (gw_config_load(path, &config, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s: invalid configuration: %s\n", GW_NAME, err);
        return 1;
    }
    const char *listen = config->admin_listen.text;
    /* A wildcard bind is probed on loopback. */
    if (strncmp(listen, "0.0.0.0:", 8) == 0)
        snprintf(url, sizeof(url), "http://127.0.0.1:%s/healthz", listen + 8);
    else if (strncmp(listen, "[::]:", 5) == 0)
        snprintf(url, sizeof(url), "http://[::1]:%s/healthz", listen + 5);
    else
        snprintf(url, sizeof(url), "http://%s/healthz", listen);
    gw_config_free(&config);

    CURL *easy = curl_easy_init();
    if (easy == NULL)
        return 1;
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard_body);
    CURLcode rc = curl_easy_perform(easy);
    if (rc == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(easy);
    if (rc != CURLE_OK) {
        fprintf(stderr, "%s: health check of %s failed: %s\n", GW_NAME, url,
                curl_easy_strerror(rc));
        return 1;
    }
    if (status != 200) {
        fprintf(stderr, "%s: health check of %s returned status %ld\n", GW_NAME,
                url, status);
        return 1;
    }
    return 0;
}

/* Waits for signals until SIGTERM or SIGINT; returns the exit code. */
static int
serve(struct gw_server *srv, const sigset_t *signals, const char *path)
{
    for (;;) {
        int sig = sigwaitinfo(signals, NULL);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            gw_log_error("main: sigwaitinfo failed: %s", strerror(errno));
            return 1;
        }
        if (sig == SIGHUP) {
            gw_log_info("main: SIGHUP received, reloading %s", path);
            gw_server_reload(srv, path);
            continue;
        }
        const struct gw_config *cfg = srv->current->config;
        gw_log_info("main: %s received, draining for up to %ld ms "
                    "in_flight=%ld",
                    sig == SIGTERM ? "SIGTERM" : "SIGINT",
                    cfg->drain_timeout_ms, atomic_load(&srv->in_flight));
        long left = gw_server_drain(srv, cfg->drain_timeout_ms);
        if (left > 0)
            gw_log_warn("main: drain timed out with %ld requests in flight; "
                        "they get 503",
                        left);
        return 0;
    }
}

/* Writes the host part of a listen address, brackets kept for IPv6. */
static void
listen_host(const struct gw_listen *listen, char *host, size_t size)
{
    const char *colon = strrchr(listen->text, ':');

    snprintf(host, size, "%.*s", (int)(colon - listen->text), listen->text);
}

static int
run(const char *path)
{
    char err[1024];
    struct gw_config *config;
    struct gw_server srv;
    sigset_t signals;

    if (gw_config_load(path, &config, err, sizeof(err)) != 0) {
        gw_log_error("main: invalid configuration: %s", err);
        return GW_EXIT_CONFIG;
    }
    raise_fd_limit();
    /* Block the signals before any thread starts, so every thread inherits
     * the mask and only sigwaitinfo() below takes them. */
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (gw_server_start(&srv, config) != 0)
        return 1;
    const struct gw_config *cfg = srv.current->config;
    char traffic_host[80], admin_host[80];
    listen_host(&cfg->listen, traffic_host, sizeof(traffic_host));
    listen_host(&cfg->admin_listen, admin_host, sizeof(admin_host));
    /* Tests read the bound ports from this line when they ask for port 0. */
    gw_log_info("main: %s %s ready traffic=%s:%u admin=%s:%u routes=%zu "
                "config=%s",
                GW_NAME, GW_VERSION, traffic_host, srv.traffic_port, admin_host,
                srv.admin_port, cfg->route_count, path);
    int code = serve(&srv, &signals, path);
    gw_server_stop(&srv);
    gw_log_flush_repeats();
    gw_log_info("main: stopped");
    return code;
}

int
main(int argc, char **argv)
{
    enum { OPT_CHECK = 256, OPT_HEALTH, OPT_LOG_LEVEL };
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, OPT_CHECK},
        {"health", no_argument, NULL, OPT_HEALTH},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    const char *check = NULL;
    bool want_health = false;
    int opt;

    while ((opt = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config = optarg;
            break;
        case OPT_CHECK:
            check = optarg;
            break;
        case OPT_HEALTH:
            want_health = true;
            break;
        case OPT_LOG_LEVEL:
            if (strcmp(optarg, "error") == 0)
                gw_log_set_level(GW_LOG_ERROR);
            else if (strcmp(optarg, "warn") == 0)
                gw_log_set_level(GW_LOG_WARN);
            else if (strcmp(optarg, "info") == 0)
                gw_log_set_level(GW_LOG_INFO);
            else if (strcmp(optarg, "debug") == 0)
                gw_log_set_level(GW_LOG_DEBUG);
            else {
                fprintf(stderr,
                        "%s: invalid --log-level '%s'; use error, "
                        "warn, info or debug\n",
                        GW_NAME, optarg);
                return 2;
            }
            break;
        case 'V':
            printf("%s %s (libmicrohttpd %s, %s)\n", GW_NAME, GW_VERSION,
                   MHD_get_version(), curl_version());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'; see --help\n", GW_NAME,
                argv[optind]);
        return 2;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "%s: cannot initialise libcurl\n", GW_NAME);
        return 1;
    }
    int code;
    if (check != NULL)
        code = check_config(check);
    else if (want_health)
        code = health(config != NULL ? config : DEFAULT_CONFIG);
    else if (config != NULL)
        code = run(config);
    else {
        fprintf(stderr, "%s: missing --config FILE; see --help\n", GW_NAME);
        code = 2;
    }
    curl_global_cleanup();
    return code;
}
