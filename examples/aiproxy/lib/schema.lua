-- The aiproxy schema, created/migrated idempotently. Groups and tokens are
-- tied by tokens.group_id WITHOUT a foreign key: deleting a group deletes its
-- tokens explicitly, in the same transaction (routes/group.lua).
local pg = require "moongate.postgres"
local core = require "moongate.core"
local util = require "lib.util"

local M = {}

local MIGRATIONS = {
  [[CREATE TABLE IF NOT EXISTS groups (
      id            text PRIMARY KEY,
      status        integer NOT NULL DEFAULT 1,
      created_at    bigint NOT NULL,
      accessed_at   bigint NOT NULL DEFAULT 0,
      request_count bigint NOT NULL DEFAULT 0,
      used_amount   double precision NOT NULL DEFAULT 0)]],
  [[CREATE TABLE IF NOT EXISTS tokens (
      id            bigserial PRIMARY KEY,
      group_id      text NOT NULL,
      key           text NOT NULL UNIQUE,
      name          text NOT NULL,
      status        integer NOT NULL DEFAULT 1,
      quota         double precision NOT NULL DEFAULT 0,
      used_amount   double precision NOT NULL DEFAULT 0,
      request_count bigint NOT NULL DEFAULT 0,
      models        jsonb NOT NULL DEFAULT '[]',
      subnets       jsonb NOT NULL DEFAULT '[]',
      created_at    bigint NOT NULL,
      accessed_at   bigint NOT NULL DEFAULT 0,
      expired_at    bigint NOT NULL DEFAULT -1)]],
  -- later migrations: ALTER TABLE ... ADD COLUMN IF NOT EXISTS ...
  [[CREATE UNIQUE INDEX IF NOT EXISTS tokens_group_name ON tokens (group_id, name)]],
  [[CREATE INDEX IF NOT EXISTS tokens_group ON tokens (group_id)]],
  -- The relay: upstream provider accounts, optional per-model settings, and
  -- one log row per relayed request (uid: the row's own unique id, so a
  -- replayed batch inserts nothing twice; request_id may come from a client).
  [[CREATE TABLE IF NOT EXISTS channels (
      id            bigserial PRIMARY KEY,
      type          text NOT NULL DEFAULT 'openai',
      name          text NOT NULL,
      key           text NOT NULL,
      base_url      text NOT NULL,
      models        jsonb NOT NULL DEFAULT '[]',
      model_mapping jsonb NOT NULL DEFAULT '{}',
      priority      integer NOT NULL DEFAULT 10,
      status        integer NOT NULL DEFAULT 1,
      created_at    bigint NOT NULL,
      accessed_at   bigint NOT NULL DEFAULT 0,
      request_count bigint NOT NULL DEFAULT 0,
      used_amount   double precision NOT NULL DEFAULT 0)]],
  [[CREATE TABLE IF NOT EXISTS model_configs (
      model         text PRIMARY KEY,
      rpm           integer NOT NULL DEFAULT 0,
      tpm           integer NOT NULL DEFAULT 0,
      input_price   double precision NOT NULL DEFAULT 0,
      output_price  double precision NOT NULL DEFAULT 0,
      retry_times   integer NOT NULL DEFAULT 1,
      timeout       integer NOT NULL DEFAULT 0,
      fallbacks     jsonb NOT NULL DEFAULT '[]',
      created_at    bigint NOT NULL,
      updated_at    bigint NOT NULL)]],
  [[CREATE TABLE IF NOT EXISTS logs (
      id                bigserial PRIMARY KEY,
      uid               text NOT NULL UNIQUE,
      request_id        text NOT NULL,
      created_at        bigint NOT NULL,
      group_id          text NOT NULL DEFAULT '',
      token_id          bigint NOT NULL DEFAULT 0,
      token_name        text NOT NULL DEFAULT '',
      model             text NOT NULL DEFAULT '',
      upstream_model    text NOT NULL DEFAULT '',
      channel_id        bigint NOT NULL DEFAULT 0,
      endpoint          text NOT NULL DEFAULT '',
      code              integer NOT NULL DEFAULT 0,
      content           text NOT NULL DEFAULT '',
      prompt_tokens     integer NOT NULL DEFAULT 0,
      completion_tokens integer NOT NULL DEFAULT 0,
      total_tokens      integer NOT NULL DEFAULT 0,
      usage_estimated   boolean NOT NULL DEFAULT false,
      amount            double precision NOT NULL DEFAULT 0,
      latency_ms        integer NOT NULL DEFAULT 0,
      ttfb_ms           integer NOT NULL DEFAULT 0,
      retries           integer NOT NULL DEFAULT 0,
      stream            boolean NOT NULL DEFAULT false,
      client_aborted    boolean NOT NULL DEFAULT false,
      ip                text NOT NULL DEFAULT '')]],
  [[CREATE INDEX IF NOT EXISTS logs_created ON logs (created_at)]],
  [[CREATE INDEX IF NOT EXISTS logs_group_created ON logs (group_id, created_at)]],
}

local ready = false

-- Runs the migrations once per worker state (every worker may run it at the
-- same time: an advisory lock serialises them). Returns true or nil, err, state.
function M.ensure()
  if ready then return true end
  local ok, err, state = util.tx(function(tx)
    tx.query("SELECT pg_advisory_xact_lock(727274)")
    for _, sql in ipairs(MIGRATIONS) do tx.query(sql) end
  end)
  if ok then ready = true; return true end
  return nil, err, state
end

function M.migrate_logged()
  local ok, err = M.ensure()
  if ok then
    core.log("info", "aiproxy: schema ready")
  else
    core.log("error", "aiproxy: schema migration failed (will retry on the next request): " .. tostring(err))
  end
end

return M
