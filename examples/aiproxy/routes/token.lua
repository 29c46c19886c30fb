-- Tokens: POST /api/token/:group {"name", "models"?, "quota"?, "subnets"?},
-- GET /api/tokens/ (?group=&status=), GET /api/token/:group,
-- GET|DELETE /api/token/:group/:id, POST /api/token/:group/:id/status,
-- GET /api/lookup/:key (the relay's cached lookup, for operators).
local pg = require "moongate.postgres"
local cjson = require "cjson.safe"
local util = require "lib.util"
local tokens = require "lib.tokens"
local groups = require "lib.groupid"

local ok, fail = util.ok, util.fail
local H = {}
local COLUMNS = tokens.COLUMNS

local function string_list(v, what)
  if util.is_null(v) then return {} end
  if type(v) ~= "table" or (next(v) ~= nil and v[1] == nil) then return nil, what .. " must be a list of strings" end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return nil, what .. " must be a list of strings" end
  for _, s in ipairs(v) do
    if type(s) ~= "string" or s == "" then return nil, what .. " must be a list of non-empty strings" end
  end
  return v
end

local function valid_subnet(s)
  local a, b, c, d, m = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)/(%d+)$")
  if a then
    for _, x in ipairs({ a, b, c, d }) do if tonumber(x) > 255 then return false end end
    return tonumber(m) <= 32
  end
  local v6, m6 = s:match("^([%x:]+)/(%d+)$")
  return v6 ~= nil and v6:find(":") ~= nil and tonumber(m6) <= 128
end

local function token_id(req)
  local id = req.params.id
  if not id:match("^%d+$") or #id > 15 then return nil, "token id must be a positive integer" end
  return tonumber(id)
end

function H.create(req)
  local group = req.params.group
  local bad = groups.check_id(group)
  if bad then return fail(400, bad) end
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  local name = body.name
  if util.is_null(name) or name == "" then return fail(400, "token name is required") end
  if type(name) ~= "string" then return fail(400, "token name must be a string") end
  if #name > 64 then return fail(400, "token name is too long (at most 64 characters)") end
  if name:find("[%z\1-\31\127]") then return fail(400, "token name must not contain control characters") end
  local models, merr = string_list(body.models, "models")
  if not models then return fail(400, merr) end
  local subnets, serr = string_list(body.subnets, "subnets")
  if not subnets then return fail(400, serr) end
  for _, s in ipairs(subnets) do
    if not valid_subnet(s) then return fail(400, "subnets: %q is not a CIDR subnet (like 10.0.0.0/8)", s) end
  end
  local quota = body.quota
  if util.is_null(quota) then quota = 0 end
  if type(quota) ~= "number" or quota ~= quota or quota < 0 or quota == math.huge then
    return fail(400, "quota must be a number >= 0")
  end
  local key = tokens.new_key(48)
  local done, res, state = util.tx(function(tx)
    local g = tx.query("SELECT id FROM groups WHERE id = $1 FOR SHARE", group)
    if not g[1] then util.abort(404, "group %q not found", group) end
    return tx.query("INSERT INTO tokens (group_id, key, name, status, quota, models, subnets, created_at) " ..
                    "VALUES ($1, $2, $3, 1, $4, $5::jsonb, $6::jsonb, $7) RETURNING " .. COLUMNS,
                    group, key, name, quota,
                    #models == 0 and "[]" or cjson.encode(models),
                    #subnets == 0 and "[]" or cjson.encode(subnets), util.now_ms())
  end)
  if not done then
    if state == "23505" then return fail(400, "token name %q already exists in group %q", name, group) end
    return util.tx_fail(res, state)
  end
  return ok(tokens.format(res[1]))
end

local function list(req, group)
  local page, per = util.pagination(req)
  if not page then return fail(400, per) end
  local where, args = {}, {}
  if group then
    args[#args + 1] = group; where[#where + 1] = "group_id = $" .. #args
  end
  local status = req.query.status
  if status ~= nil and status ~= "" then
    if status ~= "1" and status ~= "2" then return fail(400, "status must be 1 (enabled) or 2 (disabled)") end
    args[#args + 1] = tonumber(status); where[#where + 1] = "status = $" .. #args
  end
  local cond = #where > 0 and (" WHERE " .. table.concat(where, " AND ")) or ""
  local c, e, s = pg.query("SELECT count(*) AS n FROM tokens" .. cond, unpack(args))
  if not c then return util.db_fail(e, s) end
  args[#args + 1] = per
  args[#args + 1] = (page - 1) * per
  local rows, e2, s2 = pg.query("SELECT " .. COLUMNS .. " FROM tokens" .. cond ..
                                " ORDER BY id DESC LIMIT $" .. (#args - 1) .. " OFFSET $" .. #args, unpack(args))
  if not rows then return util.db_fail(e2, s2) end
  local out = {}
  for i, r in ipairs(rows) do out[i] = tokens.format(r) end
  return ok({ tokens = util.array(out), total = c[1].n })
end

function H.list(req)
  local group = req.query.group
  if group == "" then group = nil end
  if group ~= nil then
    local bad = groups.check_id(group)
    if bad then return fail(400, bad) end
  end
  return list(req, group)
end

function H.group(req)
  local group = req.params.group
  local bad = groups.check_id(group)
  if bad then return fail(400, bad) end
  local g, e, s = pg.query("SELECT id FROM groups WHERE id = $1", group)
  if not g then return util.db_fail(e, s) end
  if not g[1] then return fail(404, "group %q not found", group) end
  return list(req, group)
end

local function one(req)
  local group = req.params.group
  local bad = groups.check_id(group)
  if bad then return nil, bad end
  local id, ierr = token_id(req)
  if not id then return nil, ierr end
  return group, id
end

function H.get(req)
  local group, id = one(req)
  if not group then return fail(400, id) end
  local rows, e, s = pg.query("SELECT " .. COLUMNS .. " FROM tokens WHERE group_id = $1 AND id = $2", group, id)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "token %d not found in group %q", id, group) end
  return ok(tokens.format(rows[1]))
end

function H.delete(req)
  local group, id = one(req)
  if not group then return fail(400, id) end
  local rows, e, s = pg.query("DELETE FROM tokens WHERE group_id = $1 AND id = $2 RETURNING " .. COLUMNS, group, id)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "token %d not found in group %q", id, group) end
  tokens.invalidate({ rows[1].key })
  return ok(tokens.format(rows[1]))
end

function H.status(req)
  local group, id = one(req)
  if not group then return fail(400, id) end
  local body, err = util.body_object(req)
  if not body then return fail(400, err) end
  if body.status ~= 1 and body.status ~= 2 then return fail(400, "status must be 1 (enabled) or 2 (disabled)") end
  local rows, e, s = pg.query("UPDATE tokens SET status = $3 WHERE group_id = $1 AND id = $2 RETURNING " .. COLUMNS,
                              group, id, body.status)
  if not rows then return util.db_fail(e, s) end
  if not rows[1] then return fail(404, "token %d not found in group %q", id, group) end
  tokens.invalidate({ rows[1].key })
  return ok(tokens.format(rows[1]))
end

function H.lookup(req)
  local tok, source, state = tokens.lookup(req.params.key)
  if not tok then
    if source then return util.db_fail(source, state) end
    return fail(404, "token not found")
  end
  local out = {}                                 -- a copy: cached tokens are shared
  for k, v in pairs(tok) do out[k] = v end
  out.models, out.subnets = util.array(tok.models), util.array(tok.subnets)
  return ok({ token = out, source = source })
end

return util.admin_handler(H)
