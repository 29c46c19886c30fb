-- Groups: POST /api/group/ {"id"}, POST /api/group/:id, GET /api/groups/,
-- GET|DELETE /api/group/:id, POST /api/group/:id/status {"status": 1|2}.
local pg = require "moongate.postgres"
local util = require "lib.util"
local tokens = require "lib.tokens"

local ok, fail = util.ok, util.fail
local H = {}

local COLUMNS = "id, status, created_at, accessed_at, request_count, used_amount"

local function format(r)
  return { id = r.id, status = r.status, created_at = r.created_at, accessed_at = r.accessed_at,
           request_count = r.request_count, used_amount = r.used_amount }
end

local check_id = require("lib.groupid").check_id

function H.create(req)
  local body, err = util.body_object(req, req.params.id ~= nil)
  if not body then return fail(400, err) end
  local id = req.params.id
  if id == nil then id = body.id end
  local bad = check_id(id)
  if bad then return fail(400, bad) end
  local rows, e, state = pg.query("INSERT INTO groups (id, status, created_at) VALUES ($1, 1, $2) RETURNING " .. COLUMNS,
                                  id, util.now_ms())
  if not rows then
    if state == "23505" then return fail(400, "group %q already exists", id) end
    return util.db_fail(e, state)
  end
  return ok(format(rows[1]))
end

function H.list(req)
  local page, per = util.pagination(req)
  if not page then return fail(400, per) end
  local rows, e, state = pg.query("SELECT " .. COLUMNS .. ", count(*) OVER () AS total FROM groups " ..
                                  "ORDER BY created_at DESC, id LIMIT $1 OFFSET $2", per, (page - 1) * per)
  if not rows then return util.db_fail(e, state) end
  local total = rows[1] and rows[1].total
  if not total then
    local c, e2, s2 = pg.query("SELECT count(*) AS n FROM groups")
    if not c then return util.db_fail(e2, s2) end
    total = c[1].n
  end
  local out = {}
  for i, r in ipairs(rows) do out[i] = format(r) end
  return ok({ groups = util.array(out), total = total })
end

function H.get(req)
  local id = req.params.id
  local bad = check_id(id)
  if bad then return fail(400, bad) end
  local rows, e, state = pg.query("SELECT " .. COLUMNS .. " FROM groups WHERE id = $1", id)
  if not rows then return util.db_fail(e, state) end
  if not rows[1] then return fail(404, "group %q not found", id) end
  return ok(format(rows[1]))
end

-- The group and its tokens go in ONE transaction (no foreign key). The test
-- hook AIPROXY_TEST_FAIL_CASCADE=tokens|group raises right after that delete.
function H.delete(req)
  local id = req.params.id
  local bad = check_id(id)
  if bad then return fail(400, bad) end
  local hook = os.getenv("AIPROXY_TEST_FAIL_CASCADE")
  local keys = {}
  local done, e, state = util.tx(function(tx)
    local g = tx.query("SELECT id FROM groups WHERE id = $1 FOR UPDATE", id)
    if not g[1] then util.abort(404, "group %q not found", id) end
    local del = tx.query("DELETE FROM tokens WHERE group_id = $1 RETURNING key", id)
    for i, r in ipairs(del) do keys[i] = r.key end
    if hook == "tokens" then error("AIPROXY_TEST_FAIL_CASCADE: failing after deleting the tokens") end
    tx.query("DELETE FROM groups WHERE id = $1", id)
    if hook == "group" then error("AIPROXY_TEST_FAIL_CASCADE: failing after deleting the group") end
  end)
  if not done then return util.tx_fail(e, state) end
  tokens.invalidate(keys)
  return ok({ id = id, deleted_tokens = #keys })
end

function H.status(req)
  local id = req.params.id
  local bad = check_id(id)
  if bad then return fail(400, bad) end
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  if body.status ~= 1 and body.status ~= 2 then return fail(400, "status must be 1 (enabled) or 2 (disabled)") end
  local rows, e, state = pg.query("UPDATE groups SET status = $2 WHERE id = $1 RETURNING " .. COLUMNS, id, body.status)
  if not rows then return util.db_fail(e, state) end
  if not rows[1] then return fail(404, "group %q not found", id) end
  local keyrows = pg.query("SELECT key FROM tokens WHERE group_id = $1", id)
  local keys = {}
  for i, r in ipairs(keyrows or {}) do keys[i] = r.key end
  tokens.invalidate(keys)
  return ok(format(rows[1]))
end

return util.admin_handler(H)
