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
