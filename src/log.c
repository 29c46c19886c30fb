/* JSON line logging. See include/moongate/log.h. */
#include "moongate/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void mg_log_write(int fd, const char *data, size_t len) {
  pthread_mutex_lock(&log_lock);
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;                           /* nowhere left to report it */
    }
    data += n;
    len -= (size_t)n;
  }
  pthread_mutex_unlock(&log_lock);
}

void mg_log_time(mg_buf *b) {
  /* Every access line asks: the date and time of day are formatted once per
   * second per thread, the milliseconds by hand. */
  static __thread time_t cached_sec = -1;
  static __thread char cached[64];   /* 21 used; sized for the compiler's worst case */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ts.tv_sec != cached_sec) {
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_sec = ts.tv_sec;
  }
  long ms = ts.tv_nsec / 1000000;
  char tail[5] = {(char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', 0};
  mg_buf_appends(b, cached);
  mg_buf_append(b, tail, 4);
}

void mg_log(int level, const char *extra_json, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mg_buf b = {0};
  mg_buf_appends(&b, "{\"time\":\"");
  mg_log_time(&b);
  mg_buf_printf(&b, "\",\"level\":\"%s\",\"msg\":\"", names[level & 3]);
  mg_buf_json_escape(&b, msg, strlen(msg));
  mg_buf_appends(&b, "\"");
  if (extra_json && *extra_json) {
    mg_buf_appends(&b, ",");
    mg_buf_appends(&b, extra_json);
  }
  mg_buf_appends(&b, "}\n");
  mg_log_write(2, b.data, b.len);
  mg_buf_free(&b);
}
