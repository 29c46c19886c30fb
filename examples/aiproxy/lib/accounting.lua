-- One log row per relayed request, and the spending it implies, written in
-- batches by moongate.batch: every flush inserts the rows and adds their
-- amounts and counts to tokens, groups and channels in ONE statement.
-- Rows carry their own unique id (uid), so a batch replayed after a timeout
-- or from the on-disk spool (PostgreSQL was down, a reload, a stop) inserts
-- and counts nothing twice.
local batch = require "moongate.batch"
local buffer = require "string.buffer"
local core = require "moongate.core"
local pg = require "moongate.postgres"
local schema = require "lib.schema"
local util = require "lib.util"

local M = {}

local find = string.find

-- The logs columns a row fills, with their types: a flush sends one
-- PostgreSQL array per column (unnest() turns them back into rows). Parsing
-- arrays costs PostgreSQL about a quarter of what json_populate_recordset
-- costs for the same rows (measured: 1000 rows, 2.9 ms vs 11.3 ms), and the
-- server shares its CPU with the gateway.
local COLUMNS = {
  { "uid", "text" }, { "request_id", "text" }, { "created_at", "bigint" }, { "group_id", "text" },
  { "token_id", "bigint" }, { "token_name", "text" }, { "model", "text" }, { "upstream_model", "text" },
  { "channel_id", "bigint" }, { "endpoint", "text" }, { "code", "integer" }, { "content", "text" },
  { "prompt_tokens", "integer" }, { "completion_tokens", "integer" }, { "total_tokens", "integer" },
  { "usage_estimated", "boolean" }, { "amount", "double precision" }, { "latency_ms", "integer" },
  { "ttfb_ms", "integer" }, { "retries", "integer" }, { "stream", "boolean" },
  { "client_aborted", "boolean" }, { "ip", "text" },
}

local names, params = {}, {}
for i, c in ipairs(COLUMNS) do
  names[i] = c[1]
  params[i] = "$" .. i .. "::" .. c[2] .. "[]"
end
M.COLUMNS = table.concat(names, ", ")

-- One statement, one round trip: insert the rows (those already there --
-- a replayed batch -- are skipped) and add what the inserted ones spent to
-- their token, group and channel. A statement is atomic on its own.
local function add_spending(tbl, col, id_type)
  return string.format([[
  %s AS (UPDATE %s t SET used_amount = t.used_amount + v.amount, request_count = t.request_count + v.n,
                         accessed_at = GREATEST(t.accessed_at, v.at)
         FROM (SELECT %s AS id, sum(amount) AS amount, count(*) AS n, max(created_at) AS at
               FROM ins GROUP BY %s) v
         WHERE t.id = v.id::%s RETURNING 1)]], tbl .. "_spent", tbl, col, col, id_type)
end

local FLUSH_SQL = "WITH ins AS (INSERT INTO logs (" .. M.COLUMNS .. ") SELECT * FROM unnest(" ..
  table.concat(params, ", ") .. ") ON CONFLICT (uid) DO NOTHING" ..
  " RETURNING token_id, group_id, channel_id, amount, created_at),\n" ..
  add_spending("tokens", "token_id", "bigint") .. ",\n" ..
  add_spending("groups", "group_id", "text") .. ",\n" ..
  add_spending("channels", "channel_id", "bigint") ..
  "\nSELECT count(*) AS inserted FROM ins"

-- Rows are packed as they are pushed: each column's values are written,
-- as PostgreSQL array elements, into that column's string.buffer, and the
-- queue gets packs of up to PACK_ROWS rows -- { n = rows, cols = { array
-- literal of column 1, ... } } -- handed over by `collect` (when a flush is
-- due) or as soon as a pack is full. No row waits for its flush as a Lua
-- table: thousands of waiting 23-field tables made every garbage collection
-- cycle longer and the heap bigger (bench/README.md: about 1.7 us per
-- relayed request). A pack is JSON-shaped, so the spool keeps it as it keeps
-- any row; its rows' uids keep a replayed pack from counting twice.
local PACK_ROWS = 1000
local NCOL = #COLUMNS
local cols, packed = {}, 0
for i = 1, NCOL do cols[i] = buffer.new():put("{") end

-- Array elements: strings double-quoted with backslash and double quote
-- escaped, integers whole, other numbers as Lua prints them, booleans t/f,
-- nil NULL. A value of another type than its column's goes through
-- put_any.
local function put_any(out, sep, v)
  local t = type(v)
  if t == "string" then
    if find(v, '"', 1, true) or find(v, "\\", 1, true) then v = v:gsub('[\\"]', "\\%0") end
    out:put(sep, '"', v, '"')
  elseif t == "number" then
    out:put(sep, v)
  elseif t == "boolean" then
    out:put(sep, v and "t" or "f")
  else
    out:put(sep, "NULL")
  end
end

local PUT = {
  text = put_any,
  integer = function(out, sep, v)
    if type(v) == "number" then out:putf("%s%d", sep, v) else put_any(out, sep, v) end
  end,
  boolean = function(out, sep, v)
    if v == true then out:put(sep, "t") elseif v == false then out:put(sep, "f") else put_any(out, sep, v) end
  end,
  ["double precision"] = put_any,
}
PUT.bigint = PUT.integer
-- Text the relay made itself, which holds no quote or backslash: the
-- endpoint (a route path) and the client's address.
PUT.ours = function(out, sep, v)
  if type(v) == "string" then out:put(sep, '"', v, '"') else put_any(out, sep, v) end
end
-- Row ids: random per Lua state (each worker, each reload) plus a counter,
-- unique without drawing 128 random bits per request. A row holds its
-- counter (row.uid); the text is written here, not made per request.
local uid_prefix = core.random_hex(16)
PUT.uid = function(out, sep, n) out:put(sep, '"', uid_prefix, n, '"') end
local SPECIAL = { uid = "uid", endpoint = "ours", ip = "ours" }

-- pack_row(row, sep) appends one row's elements, one line of code per
-- column (generated from COLUMNS): a loop over the columns would take
-- another path through the element writers at every column, and LuaJIT
-- would leave its compiled code at each (callgrind, whole relay: about 4k
-- instructions per row in a loop, 1k written out).
local pack_row
do
  local src = { "local cols, PUT = ...", "return function(r, sep)" }
  for k, c in ipairs(COLUMNS) do
    src[#src + 1] = string.format("  PUT[%q](cols[%d], sep, r.%s)", SPECIAL[c[1]] or c[2], k, c[1])
  end
  src[#src + 1] = "end"
  pack_row = assert(loadstring(table.concat(src, "\n"), "=accounting.pack_row"))(cols, PUT)
end

-- A pack's columns are the statement's parameters as they are: each
-- buffer holds "{" and its elements, and gets its "}" here (no copy of a
-- pack's text is made between its rows and PostgreSQL).
local function take_pack()
  local texts = {}
  for k = 1, NCOL do
    texts[k] = cols[k]:put("}"):tostring()
    cols[k]:reset():put("{")
  end
  local pack = { n = packed, cols = texts }
  packed = 0
  return pack
end

-- A row spooled by an earlier version (a table of columns, not a pack),
-- written the generic way: an upgrade must not leave it stuck in the spool.
local function legacy_cols(row)
  local texts, out = {}, buffer.new()
  for k, c in ipairs(COLUMNS) do
    out:reset():put("{")
    put_any(out, "", row[c[1]])
    texts[k] = out:put("}"):tostring()
  end
  return texts
end

-- One statement per pack (the queue hands over one at a time: max_rows).
local function flush(packs)
  local ok, err = schema.ensure()
  if not ok then return nil, err end
  for _, pack in ipairs(packs) do
    local res, e, state = pg.query(FLUSH_SQL, unpack(pack.cols or legacy_cols(pack), 1, NCOL))
    if not res then return nil, tostring(e) .. " (SQLSTATE " .. tostring(state) .. ")" end
  end
  return true
end

-- The queue's rows are packs: one per statement (up to 1000 rows), up to 10
-- (10000 rows) in memory before the oldest go to the spool.
M.queue = batch.new{
  name = "aiproxy-logs",
  flush = flush,
  collect = function() if packed > 0 then return { take_pack() } end end,
  interval = tonumber(os.getenv("AIPROXY_LOG_FLUSH_INTERVAL") or "") or 1,
  max_rows = 1,
  memory_rows = 10,
  spool_dir = os.getenv("AIPROXY_SPOOL_DIR"),
  spool_limit = os.getenv("AIPROXY_SPOOL_LIMIT") or "256m",
}

-- PostgreSQL text holds neither NUL nor invalid UTF-8, and one such value
-- would fail its whole batch on every retry. Values that come from outside
-- (the client's model name and request id, the upstream's error text, cut
-- at 1000 bytes) keep their valid UTF-8; every other byte becomes "?"
-- (core.clean_utf8: the same string back, no copy, when it is clean).
-- upstream_model is not among them: it comes from a channel's mapping,
-- which PostgreSQL stored, or is the (cleaned) requested model.
M.clean_text = core.clean_utf8

-- Model names repeat: cleaned once per name, not a C call per row.
local clean_model = util.memo(M.clean_text, 1000)

local uid_count = 0

-- Rows are reused: push() packs a row and keeps the table for the next
-- request (a fresh 23-field table was a third of what a relayed request
-- allocated). So a row belongs to its request from row() to push() only.
local take_row, give_row = util.table_pool(23, 256)

-- A row with the request's identity filled in; now_ms: the request's start
-- (the clock is read when absent).
function M.row(req, tok, endpoint, now_ms)
  uid_count = uid_count + 1
  local r = take_row()
  r.uid, r.request_id, r.created_at = uid_count, req.id, now_ms or math.floor(core.now() * 1000)
  r.group_id, r.token_id, r.token_name = tok.group, tok.id, tok.name
  r.model, r.upstream_model, r.channel_id, r.endpoint = "", "", 0, endpoint
  r.code, r.content, r.prompt_tokens, r.completion_tokens, r.total_tokens = 0, "", 0, 0, 0
  r.usage_estimated, r.amount, r.latency_ms, r.ttfb_ms, r.retries = false, 0, 0, 0, 0
  r.stream, r.client_aborted, r.ip = false, false, req.remote_addr
  return r
end

-- Queues a finished row: it is packed now, and the table goes back for reuse.
function M.push(row)
  local content = row.content
  if content ~= "" then
    if #content > 1000 then content = content:sub(1, 1000) end
    row.content = M.clean_text(content)
  end
  local model = row.model
  row.model = clean_model(model)
  if row.upstream_model == model then row.upstream_model = row.model end
  row.request_id = M.clean_text(row.request_id)
  pack_row(row, packed > 0 and "," or "")
  packed = packed + 1
  if packed >= PACK_ROWS then M.queue:push(take_pack()) end
  give_row(row)
end

return M
