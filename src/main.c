/* moongate: command line, start-up, and the main thread's job afterwards:
 * signals. SIGHUP validates the config in a fresh Lua state and, only if it
 * is good, asks every worker to switch; SIGTERM/SIGINT stop gracefully.
 * The listening socket is created here once and shared by the workers, so a
 * port already in use is a start-up error and reloads never touch it. */
#include "moongate/app.h"
#include "moongate/log.h"
#include "moongate/shdict.h"
#include "moongate/lua_api.h"
#include "moongate/worker.h"

#include <curl/curl.h>
#include <errno.h>
#include <lua.h>
#include <lauxlib.h>
#include <limits.h>
#include <libgen.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
  "usage: moongate [options] CONFIG.lua\n"
  "       moongate test FILE.lua...\n"
  "\n"
  "options:\n"
  "  -p, --port N       listen on port N (overrides the config's listen port)\n"
  "  -w, --workers N    run N worker threads (overrides the config)\n"
  "  -t, --test-config  check the config and every Lua file it names, print ok\n"
  "  -v, --version      print the version\n"
  "  -h, --help         print this help\n"
  "\n"
  "signals: HUP reloads the config, TERM/INT stop gracefully\n";

static mg_worker *workers;
static int nworkers;
static mg_load_opts opts;
static uv_signal_t sig_hup, sig_term, sig_int;
static int stopping;

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

/* Where lua/ and policies/ live: $MOONGATE_HOME, next to the binary (a
 * build tree or an install prefix), or the source tree it was built from. */
static const char *find_home(const char *argv0) {
  static char home[PATH_MAX];
  char probe[PATH_MAX + 64];
  const char *env = getenv("MOONGATE_HOME");
  if (env && *env) return env;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    char *dir = dirname(exe);
    const char *candidates[] = {"%s/..", "%s/../share/moongate", "%s"};
    for (size_t i = 0; i < 3; i++) {
      snprintf(home, sizeof home, candidates[i], dir);
      snprintf(probe, sizeof probe, "%s/lua/moongate/runtime.lua", home);
      if (file_exists(probe)) {
        char real[PATH_MAX];
        if (realpath(home, real)) snprintf(home, sizeof home, "%s", real);
        return home;
      }
    }
  }
  snprintf(probe, sizeof probe, "%s/lua/moongate/runtime.lua", MG_DATA_DIR);
  if (file_exists(probe)) return MG_DATA_DIR;
  return MG_SOURCE_DIR;
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = (int)v;
  return 0;
}

static int open_listener(const mg_settings *s) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", s->listen_port);
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const char *host = s->listen_host[0] ? s->listen_host : NULL;
  if (!host) hints.ai_family = AF_INET6;     /* "::" with v4-mapped: every address */
  int rc = getaddrinfo(host, portstr, &hints, &res);
  if (rc != 0 && !host) {
    hints.ai_family = AF_INET;
    rc = getaddrinfo(host, portstr, &hints, &res);
  }
  if (rc != 0) {
    fprintf(stderr, "moongate: listen %s:%d: %s\n", s->listen_host, s->listen_port, gai_strerror(rc));
    return -1;
  }
  int fd = -1, err = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
    if (fd < 0) { err = errno; continue; }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6 && !host)
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 511) == 0) break;
    err = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    fprintf(stderr, "moongate: listen %s:%d: %s\n", s->listen_host[0] ? s->listen_host : "*",
            s->listen_port, strerror(err));
  return fd;
}

static void on_signal(uv_signal_t *h, int signum) {
  if (signum == SIGHUP) {
    char err[4096];
    mg_app *app = mg_app_load(&opts, NULL, err, sizeof err);
    if (!app) {
      mg_log(MG_LOG_ERROR, NULL, "reload failed, keeping the running configuration: %s", err);
      return;
    }
    mg_app_free(app);
    for (int i = 0; i < nworkers; i++) {
      atomic_store(&workers[i].reload_requested, 1);
      uv_async_send(&workers[i].wakeup);
    }
    mg_log(MG_LOG_INFO, NULL, "reload: configuration is valid, workers are switching");
    return;
  }
  if (stopping) return;
  stopping = 1;
  mg_log(MG_LOG_INFO, NULL, "stopping: finishing in-flight requests");
  for (int i = 0; i < nworkers; i++) {
    atomic_store(&workers[i].stop_requested, 1);
    uv_async_send(&workers[i].wakeup);
  }
  uv_close((uv_handle_t *)&sig_hup, NULL);
  uv_close((uv_handle_t *)&sig_term, NULL);
  uv_close((uv_handle_t *)&sig_int, NULL);
}

static int run_tests(const char *home, int argc, char **argv) {
  int failed = 0;
  for (int i = 0; i < argc; i++) {
    char real[PATH_MAX], dir[PATH_MAX];
    if (!realpath(argv[i], real)) {
      fprintf(stderr, "moongate: %s: no such file\n", argv[i]);
      return 2;
    }
    snprintf(dir, sizeof dir, "%s", real);
    dirname(dir);
    lua_State *L = mg_lua_newstate(home, dir);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.testing");
    if (lua_pcall(L, 1, 1, 0) != 0) {
      fprintf(stderr, "moongate: %s\n", lua_tostring(L, -1));
      lua_close(L);
      return 2;
    }
    lua_getfield(L, -1, "run_file");
    lua_pushstring(L, argv[i]);
    if (lua_pcall(L, 1, 1, 0) != 0) {
      fprintf(stderr, "moongate: %s\n", lua_tostring(L, -1));
      failed++;
    } else {
      failed += (int)lua_tointeger(L, -1);
    }
    lua_close(L);
  }
  return failed ? 1 : 0;
}

int main(int argc, char **argv) {
  int check_only = 0;
  const char *config = NULL;
  signal(SIGPIPE, SIG_IGN);            /* libuv writes with write(2) */
  curl_global_init(CURL_GLOBAL_DEFAULT);   /* before any thread exists */
  const char *home = find_home(argv[0]);

  if (argc >= 2 && strcmp(argv[1], "test") == 0) {
    if (argc < 3) { fputs(usage, stderr); return 2; }
    return run_tests(home, argc - 2, argv + 2);
  }
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
    if (!strcmp(a, "-v") || !strcmp(a, "--version")) { printf("moongate %s\n", MG_VERSION); return 0; }
    if (!strcmp(a, "-t") || !strcmp(a, "--test-config")) { check_only = 1; continue; }
    int is_port = !strcmp(a, "-p") || !strcmp(a, "--port") || !strncmp(a, "--port=", 7);
    int is_workers = !strcmp(a, "-w") || !strcmp(a, "--workers") || !strncmp(a, "--workers=", 10);
    if (is_port || is_workers) {
      const char *eq = strchr(a, '=');
      if (eq && a[1] == '-') val = eq + 1;
      else if (i + 1 < argc) val = argv[++i];
      else { fprintf(stderr, "moongate: %s needs a value\n%s", a, usage); return 2; }
      int *dst = is_port ? &opts.port_override : &opts.workers_override;
      if (parse_int(val, 1, is_port ? 65535 : 256, dst) != 0) {
        fprintf(stderr, "moongate: %s: invalid value '%s' (expected %s)\n", a, val,
                is_port ? "a port 1-65535" : "a number of workers 1-256");
        return 2;
      }
      continue;
    }
    if (a[0] == '-' && a[1]) { fprintf(stderr, "moongate: unknown option %s\n%s", a, usage); return 2; }
    if (config) { fprintf(stderr, "moongate: more than one config file given\n%s", usage); return 2; }
    config = a;
  }
  if (!config) { fprintf(stderr, "moongate: no config file given\n%s", usage); return 2; }
  opts.config_path = config;
  opts.home = home;

  char err[4096];
  mg_app *app = mg_app_load(&opts, NULL, err, sizeof err);
  if (!app) {
    fprintf(stderr, "moongate: %s\n", err);
    return 1;
  }
  if (check_only) {
    printf("ok: %s (%d routes)\n", config, app->nroutes);
    mg_app_free(app);
    return 0;
  }
  mg_settings settings = app->settings;
  mg_app_free(app);

  int fd = open_listener(&settings);
  if (fd < 0) return 1;

  uv_sem_t ready;
  uv_sem_init(&ready, 0);
  nworkers = settings.workers;
  workers = mg_xcalloc((size_t)nworkers, sizeof(mg_worker));
  int failed = 0, started = 0;
  for (int i = 0; i < nworkers; i++) {
    mg_worker *w = &workers[i];
    w->id = i;
    w->opts = opts;
    w->ready_sem = &ready;
    w->listen_fd = dup(fd);
    if (mg_worker_start(w) != 0) { failed = 1; break; }
    started++;
  }
  for (int i = 0; i < started; i++) uv_sem_wait(&ready);
  for (int i = 0; i < started; i++) if (workers[i].ready != 1) failed = 1;
  close(fd);

  uv_loop_t *loop = uv_default_loop();
  if (!failed) {
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_hup, on_signal, SIGHUP);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    char extra[512];
    snprintf(extra, sizeof extra, "\"listen\":\"%s:%d\",\"workers\":%d,\"pid\":%d",
             settings.listen_host[0] ? settings.listen_host : "*", settings.listen_port,
             nworkers, (int)getpid());
    mg_log(MG_LOG_INFO, extra, "server started on %s:%d with %d worker%s",
           settings.listen_host[0] ? settings.listen_host : "*", settings.listen_port,
           nworkers, nworkers == 1 ? "" : "s");
    uv_run(loop, UV_RUN_DEFAULT);
  } else {
    for (int i = 0; i < started; i++) {
      if (workers[i].ready == 1) {
        atomic_store(&workers[i].stop_requested, 1);
        uv_async_send(&workers[i].wakeup);
      }
    }
  }
  for (int i = 0; i < started; i++) uv_thread_join(&workers[i].thread);
  free(workers);
  uv_sem_destroy(&ready);
  uv_loop_close(loop);
  mg_shdict_free_all();
  if (failed) {
    fprintf(stderr, "moongate: start-up failed (see the errors above)\n");
    return 1;
  }
  mg_log(MG_LOG_INFO, NULL, "stopped");
  return 0;
}
