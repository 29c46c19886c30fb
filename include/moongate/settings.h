/* Server-wide settings. The Lua loader (lua/moongate/config.lua) validates the
 * operator's config and normalizes it into plain numbers; this file reads that
 * normalized table into a C struct the HTTP layer can use without Lua. */
#ifndef MG_SETTINGS_H
#define MG_SETTINGS_H

#include <stddef.h>
#include <stdint.h>

struct lua_State;

typedef struct {
  char listen_host[256];       /* "" = all interfaces */
  int listen_port;
  int workers;
  size_t max_head;             /* request line + headers, bytes (414/431) */
  size_t max_body;             /* default per-route body limit (413) */
  uint64_t header_timeout_ms;  /* whole head must arrive within this (408) */
  uint64_t body_timeout_ms;    /* max gap between body reads (408) */
  uint64_t keepalive_timeout_ms;
  uint64_t send_timeout_ms;    /* max gap between successful writes */
  uint64_t shutdown_timeout_ms;
  char health_path[256];       /* "" disables the built-in health check */
  int access_log;
  int upstream_pool;           /* idle upstream connections kept per worker */
  char redis_host[256];        /* "" = no Redis configured */
  int redis_port, redis_db, redis_pool;
  char redis_password[256];
  uint64_t redis_timeout_ms;
  char pg_dsn[1024];           /* "" = no database configured */
  int pg_pool;
  uint64_t pg_timeout_ms, pg_wait_ms;
} mg_settings;

/* Hard ceiling on the head size whatever the config says. */
#define MG_MAX_HEAD_CEILING (64 * 1024)

void mg_settings_defaults(mg_settings *s);
/* Reads the table at stack index `idx` (the loader's `settings`). Returns 0,
 * or -1 and writes a message naming the field into err. */
int mg_settings_from_lua(struct lua_State *L, int idx, mg_settings *s,
                         char *err, size_t errlen);

#endif
