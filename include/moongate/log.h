/* Logging. Errors go to stderr and access lines to stdout, both as one JSON
 * object per line. Each worker buffers its access lines and flushes them once
 * per loop iteration; the write itself is serialized by a process-wide lock so
 * lines from different workers never interleave. */
#ifndef MG_LOG_H
#define MG_LOG_H

#include "util.h"

enum { MG_LOG_DEBUG, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR };

/* One error-log line: {"time":..,"level":..,"msg":..} plus `extra`, which is
 * either NULL or a string of additional `"key":value` members (already JSON). */
void mg_log(int level, const char *extra_json, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes a whole buffer of lines to fd 1 or 2 under the log lock. */
void mg_log_write(int fd, const char *data, size_t len);

/* Appends the current time as an ISO-8601 UTC string with milliseconds. */
void mg_log_time(mg_buf *b);

#endif
