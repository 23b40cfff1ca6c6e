/*
 * Integration-test harness, first half: child processes, their logs and
 * the temporary folder. harness_http.c has the HTTP client. See harness.h
 * for the contract. Everything here is for the test's main thread.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* Maximum children alive at once. More would be a bug in a test. */
#define MAX_CHILDREN 64
/* How long a child may take to print its port or ready line. */
#define UPSTREAM_START_MS 30000
#define GATEWAY_START_MS  60000
/* Maximum length of the wrapper command, in words. */
#define MAX_WRAPPER_WORDS 32

static pid_t children[MAX_CHILDREN];
static char temp_dir[200];
static unsigned file_counter;
static bool exit_hook_set;

const char *
h_build_dir(void)
{
    const char *dir = getenv("WK_BUILD");
    return dir != NULL && dir[0] != '\0' ? dir : "build";
}

long long
h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

char *
h_format(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;

    char *s = malloc((size_t)n + 1);
    if (s == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* --- children ----------------------------------------------------------- */

static void
track_child(pid_t pid)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    }
    /* Untracked, the child would survive a failed test. */
    fprintf(stderr, "harness: more than %d children, killing pid %d\n",
            MAX_CHILDREN, (int)pid);
    kill(pid, SIGKILL);
}

static void
untrack_child(pid_t pid)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] == pid)
            children[i] = 0;
    }
}

void
h_kill_all(void)
{
    for (size_t i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] <= 0)
            continue;
        kill(children[i], SIGKILL);
        waitpid(children[i], NULL, 0);
        children[i] = 0;
    }
}

int
h_teardown(void **state)
{
    (void)state;
    h_kill_all();
    return 0;
}

static void
remove_temp_dir(void)
{
    DIR *d = opendir(temp_dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
    rmdir(temp_dir);
}

/* Runs at exit: kills stragglers, then removes or keeps the files. */
static void
on_exit_cleanup(int status, void *arg)
{
    (void)arg;
    h_kill_all();
    if (temp_dir[0] == '\0')
        return;
    if (status == 0)
        remove_temp_dir();
    else
        fprintf(stderr, "harness: kept logs and configs in %s\n", temp_dir);
}

/* Creates the temporary folder on first use. NULL on failure. */
static const char *
get_temp_dir(void)
{
    if (temp_dir[0] != '\0')
        return temp_dir;
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    int n = snprintf(temp_dir, sizeof(temp_dir), "%s/wk-%s-XXXXXX", base,
                     program_invocation_short_name);
    if (n < 0 || (size_t)n >= sizeof(temp_dir) || mkdtemp(temp_dir) == NULL) {
        fprintf(stderr, "harness: cannot create a folder under %s: %s\n", base,
                strerror(errno));
        temp_dir[0] = '\0';
        return NULL;
    }
    return temp_dir;
}

static void
set_exit_hook(void)
{
    if (!exit_hook_set && on_exit(on_exit_cleanup, NULL) == 0)
        exit_hook_set = true;
}

/* Fills out with DIR/NAME-N.EXT for a new file. False if it does not fit. */
static bool
temp_file_path(char *out, size_t size, const char *name, unsigned n,
               const char *ext)
{
    const char *dir = get_temp_dir();
    if (dir == NULL)
        return false;
    int len = snprintf(out, size, "%s/%s-%u.%s", dir, name, n, ext);
    return len > 0 && (size_t)len < size;
}

/* Finds program in $PATH unless it contains a '/'. False if absent. */
static bool
resolve_program(const char *program, char *out, size_t size)
{
    if (strchr(program, '/') != NULL) {
        int n = snprintf(out, size, "%s", program);
        return n > 0 && (size_t)n < size && access(out, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/bin:/bin";
    while (*path != '\0') {
        size_t len = strcspn(path, ":");
        int n = snprintf(out, size, "%.*s/%s", (int)len, path, program);
        if (n > 0 && (size_t)n < size && access(out, X_OK) == 0)
            return true;
        path += len + (path[len] == ':');
    }
    return false;
}

/*
 * Starts argv with stdout and stderr appended to log_path and stdin from
 * /dev/null. Returns the pid, or -1 with a message on stderr.
 */
static pid_t
spawn(char *const argv[], const char *log_path)
{
    char program[1024];
    if (!resolve_program(argv[0], program, sizeof(program))) {
        fprintf(stderr, "harness: %s: not found or not executable\n", argv[0]);
        return -1;
    }
    int log_fd =
        open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) {
        fprintf(stderr, "harness: open %s failed: %s\n", log_path,
                strerror(errno));
        if (log_fd >= 0)
            close(log_fd);
        if (null_fd >= 0)
            close(null_fd);
        return -1;
    }

    set_exit_hook();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(null_fd, STDIN_FILENO);
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
        execv(program, argv);
        _exit(127);
    }
    close(log_fd);
    close(null_fd);
    if (pid < 0) {
        fprintf(stderr, "harness: fork failed: %s\n", strerror(errno));
        return -1;
    }
    track_child(pid);
    return pid;
}

int
h_exit_code(int status)
{
    if (status == -1)
        return -1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* Reaps p if it exited, and then returns true with *status set. */
static bool
try_reap(struct h_proc *p, int *status)
{
    pid_t r = waitpid(p->pid, status, WNOHANG);
    if (r != p->pid)
        return false;
    untrack_child(p->pid);
    p->pid = 0;
    return true;
}

int
h_proc_wait(struct h_proc *p, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    long long deadline = h_now_ms() + timeout_ms;
    int status;
    for (;;) {
        if (try_reap(p, &status))
            return status;
        if (h_now_ms() >= deadline)
            return -1;
        sleep_ms(5);
    }
}

int
h_proc_stop(struct h_proc *p, int sig, int timeout_ms)
{
    if (p->pid <= 0)
        return -1;
    kill(p->pid, sig);
    int status = h_proc_wait(p, timeout_ms);
    if (status != -1)
        return status;

    fprintf(stderr, "harness: pid %d ignored signal %d for %d ms, killing\n",
            (int)p->pid, sig, timeout_ms);
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    untrack_child(p->pid);
    p->pid = 0;
    return -1;
}

char *
h_proc_read_log(const struct h_proc *p)
{
    FILE *f = fopen(p->log_path, "rb");
    if (f == NULL)
        return NULL;
    size_t cap = 4096;
    size_t len = 0;
    char *text = malloc(cap);
    while (text != NULL) {
        size_t n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (len + 1 < cap)
            break;
        char *bigger = realloc(text, cap * 2);
        if (bigger == NULL) {
            free(text);
            text = NULL;
            break;
        }
        text = bigger;
        cap *= 2;
    }
    fclose(f);
    if (text != NULL)
        text[len] = '\0';
    return text;
}

void
h_proc_dump_log(const struct h_proc *p)
{
    char *text = h_proc_read_log(p);
    fprintf(stderr, "---- %s ----\n%s\n---- end of %s ----\n", p->log_path,
            text != NULL ? text : "(cannot read the log)", p->log_path);
    free(text);
}

int
h_proc_threads(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[256];
    int threads = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "Threads:", 8) == 0) {
            threads = (int)strtol(line + 8, NULL, 10);
            break;
        }
    }
    fclose(f);
    return threads;
}

/* Parses the port after the last ':' of the word that starts at s. */
static int
word_port(const char *s)
{
    size_t len = strcspn(s, " \t\r\n");
    const char *colon = NULL;
    for (const char *c = s; c < s + len; c++) {
        if (*c == ':')
            colon = c;
    }
    if (colon == NULL)
        return -1;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end != s + len || port <= 0 || port > 65535)
        return -1;
    return (int)port;
}

/* Scans a log for the ports a child prints once it serves. */
typedef bool (*ready_fn)(const char *log, struct h_proc *p);

static bool
upstream_ready(const char *log, struct h_proc *p)
{
    const char *line = strstr(log, "port=");
    if (line == NULL || (line != log && line[-1] != '\n') ||
        strchr(line, '\n') == NULL)
        return false;
    char *end;
    long port = strtol(line + 5, &end, 10);
    if (*end != '\n' || port <= 0 || port > 65535)
        return false;
    p->port = (int)port;
    return true;
}

static bool
gateway_ready(const char *log, struct h_proc *p)
{
    const char *ready = strstr(log, "ready traffic=");
    const char *admin = ready != NULL ? strstr(ready, " admin=") : NULL;
    if (admin == NULL || strchr(admin, '\n') == NULL)
        return false;
    int port = word_port(ready + strlen("ready traffic="));
    int admin_port = word_port(admin + strlen(" admin="));
    if (port < 0 || admin_port < 0)
        return false;
    p->port = port;
    p->admin_port = admin_port;
    return true;
}

/* Polls p's log until ready() finds its ports. Kills p on failure. */
static int
wait_ready(struct h_proc *p, ready_fn ready, int timeout_ms)
{
    long long deadline = h_now_ms() + timeout_ms;
    int status;
    for (;;) {
        char *log = h_proc_read_log(p);
        bool ok = log != NULL && ready(log, p);
        free(log);
        if (ok)
            return 0;
        if (try_reap(p, &status)) {
            fprintf(stderr,
                    "harness: %s exited with code %d before it "
                    "was ready\n",
                    p->log_path, h_exit_code(status));
            break;
        }
        if (h_now_ms() >= deadline) {
            fprintf(stderr, "harness: %s: not ready after %d ms\n", p->log_path,
                    timeout_ms);
            h_proc_stop(p, SIGKILL, 5000);
            break;
        }
        sleep_ms(10);
    }
    h_proc_dump_log(p);
    return -1;
}

int
h_upstream_start(struct h_proc *p)
{
    *p = (struct h_proc){0};
    char program[512];
    int n =
        snprintf(program, sizeof(program), "%s/test-upstream", h_build_dir());
    if (n < 0 || (size_t)n >= sizeof(program) ||
        !temp_file_path(p->log_path, sizeof(p->log_path), "upstream",
                        ++file_counter, "log"))
        return -1;

    char *argv[] = {program, NULL};
    p->pid = spawn(argv, p->log_path);
    if (p->pid < 0) {
        p->pid = 0;
        return -1;
    }
    return wait_ready(p, upstream_ready, UPSTREAM_START_MS);
}

static int
write_file(const char *path, const char *text)
{
    /* Written beside and renamed, so a reload never reads half a file. */
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        fprintf(stderr, "harness: cannot write %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "harness: cannot write %s\n", path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

const char *
h_gateway_config_path(const struct h_proc *p)
{
    return p->config_path;
}

int
h_gateway_write_config(const struct h_proc *p, const char *config_json)
{
    if (p->config_path[0] == '\0' || config_json == NULL)
        return -1;
    return write_file(p->config_path, config_json);
}

/* Splits $WK_GATEWAY_WRAPPER into words in copy. Returns the count. */
static size_t
split_wrapper(char *copy, char **words, size_t max)
{
    size_t n = 0;
    char *save = NULL;
    for (char *w = strtok_r(copy, " \t", &save); w != NULL && n < max;
         w = strtok_r(NULL, " \t", &save))
        words[n++] = w;
    return n;
}

int
h_gateway_start(struct h_proc *p, const char *config_json)
{
    *p = (struct h_proc){0};
    unsigned n = ++file_counter;
    char program[512];
    int len = snprintf(program, sizeof(program), "%s/workshop-gateway",
                       h_build_dir());
    if (len < 0 || (size_t)len >= sizeof(program) ||
        !temp_file_path(p->log_path, sizeof(p->log_path), "gateway", n,
                        "log") ||
        !temp_file_path(p->config_path, sizeof(p->config_path), "gateway", n,
                        "json") ||
        h_gateway_write_config(p, config_json) != 0)
        return -1;

    static char config_flag[] = "--config";
    const char *wrapper = getenv("WK_GATEWAY_WRAPPER");
    char *wrapper_copy = strdup(wrapper != NULL ? wrapper : "");
    if (wrapper_copy == NULL)
        return -1;
    char *argv[MAX_WRAPPER_WORDS + 4];
    size_t argc = split_wrapper(wrapper_copy, argv, MAX_WRAPPER_WORDS);
    argv[argc++] = program;
    argv[argc++] = config_flag;
    argv[argc++] = p->config_path;
    argv[argc] = NULL;

    p->pid = spawn(argv, p->log_path);
    free(wrapper_copy);
    if (p->pid < 0) {
        p->pid = 0;
        return -1;
    }
    return wait_ready(p, gateway_ready, GATEWAY_START_MS);
}

static bool
under_valgrind(void)
{
    const char *v = getenv("WK_VALGRIND");
    return v != NULL && strcmp(v, "1") == 0;
}

/* Stops p with SIGTERM and fails the test unless it exits 0. */
static void
stop_checked(struct h_proc *p, const char *what)
{
    if (p->pid <= 0) {
        fail_msg("%s: no running process to stop", what);
        return;
    }
    int timeout_ms = under_valgrind() ? 60000 : 15000;
    int code = h_exit_code(h_proc_stop(p, SIGTERM, timeout_ms));
    if (code == 0)
        return;

    h_proc_dump_log(p);
    if (code == -1)
        fail_msg("%s did not exit within %d ms of SIGTERM", what, timeout_ms);
    else if (code == 99 && under_valgrind())
        fail_msg("%s: valgrind reported errors (exit 99), see the log", what);
    else
        fail_msg("%s exited with code %d after SIGTERM, expected 0", what,
                 code);
}

void
h_gateway_stop_checked(struct h_proc *p)
{
    stop_checked(p, "workshop-gateway");
}

void
h_upstream_stop_checked(struct h_proc *p)
{
    stop_checked(p, "test-upstream");
}

bool
h_wait_until(bool (*fn)(void *), void *arg, int timeout_ms)
{
    long long deadline = h_now_ms() + timeout_ms;
    for (;;) {
        if (fn(arg))
            return true;
        if (h_now_ms() >= deadline)
            return false;
        sleep_ms(10);
    }
}
