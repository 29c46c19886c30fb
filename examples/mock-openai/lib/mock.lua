-- The mock provider's state (counters, the global fault) and helpers shared by
-- its handlers: JSON with real empty arrays, OpenAI error bodies, token counts.
-- One table per Lua state: the app runs one worker, so the counters are exact.
local cjson = require "cjson.safe"

local M = {}

M.FAULTS = {
  ["500"] = true, ["429"] = true, ["400"] = true, ["bad-key"] = true,
  stall = true, slow = true, drop = true, ["no-usage"] = true, ["bad-usage"] = true, garbage = true,
}
M.STALL_SECONDS = 30
M.SLOW_SECONDS = 2
M.MAX_CHUNKS = 10000

local function fresh_stats()
  return { requests = 0, by_model = {}, by_key = {}, streams_started = 0,
           streams_completed = 0, streams_aborted = 0, streams_dropped = 0,
           last = cjson.null }
end

M.stats = fresh_stats()
-- The global fault: name, and how many requests it still applies to (nil: all).
M.global = { fault = nil, remaining = nil }

-- stats.last.body is this marker; the raw body it stands for (valid JSON,
-- kept as sent so [] stays []) is M.last_raw.
M.RAW_BODY = "\0mock:raw-body\0"
M.last_raw = nil

function M.reset()
  M.stats = fresh_stats()
  M.last_raw = nil
  M.global.fault, M.global.remaining = nil, nil
end

-- The models of GET /v1/models, from MOCK_MODELS (read at load).
M.models = {}
do
  local list = os.getenv("MOCK_MODELS")
  if list == nil or list:match("^%s*$") then list = "gpt-4o-mini,gpt-4o,text-embedding-3-small,mock-model" end
  for m in list:gmatch("[^,]+") do
    m = m:match("^%s*(.-)%s*$")
    if m ~= "" then M.models[#M.models + 1] = m end
  end
end
M.CREATED = 1700000000   -- the "created" of every model object

-- JSON text with real empty arrays (Debian's cjson encodes {} as {} always).
local json = require "moongate.json"
M.EMPTY_ARRAY = json.empty_array

function M.encode(v)
  return assert(json.encode(v))
end

-- An OpenAI error answer, as a response table: raw, so the errors policy
-- leaves the body alone.
function M.error(status, message, etype, code, param, headers)
  local h = headers or {}
  h["Content-Type"] = "application/json"
  return { status = status, headers = h, raw = true, body = M.encode({ error = {
    message = message, type = etype,
    param = param == nil and cjson.null or param,
    code = code == nil and cjson.null or code,
  } }) }
end

-- Characters (UTF-8 code points) of a string.
local function chars(s)
  local _, n = s:gsub("[^\128-\191]", "")
  return n
end

-- Total characters of a message content: a string, or a list of parts
-- ({"type": "text", "text": ...}; other parts count nothing).
local function content_chars(c)
  if type(c) == "string" then return chars(c) end
  local n = 0
  if type(c) == "table" then
    for _, part in ipairs(c) do
      if type(part) == "string" then n = n + chars(part)
      elseif type(part) == "table" and type(part.text) == "string" then n = n + chars(part.text) end
    end
  end
  return n
end

-- prompt_tokens = ceil(characters / 4), at least 1.
function M.tokens_of_chars(n)
  local t = math.ceil(n / 4)
  if t < 1 then t = 1 end
  return t
end

function M.chat_prompt_tokens(messages)
  local n = 0
  for _, m in ipairs(messages) do
    if type(m) == "table" then n = n + content_chars(m.content) end
  end
  return M.tokens_of_chars(n)
end

-- A completions prompt or an embeddings input: a string or a list of strings.
function M.text_tokens(v)
  return M.tokens_of_chars(content_chars(v))
end

-- "w1 w2 ... wN"
function M.words(n)
  local w = {}
  for i = 1, n do w[i] = "w" .. i end
  return w
end

-- 8 deterministic floats in [-1, 1), 4 decimals, for a string (FNV-1a, then MINSTD).
local bit = require "bit"
function M.embedding(s)
  local h = 2166136261
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    h = bit.tobit(bit.lshift(h, 24) + h * 403)     -- h * 16777619 mod 2^32
  end
  h = h % 2147483646 + 1
  local out = {}
  for i = 1, 8 do
    h = (h * 48271) % 2147483647                   -- MINSTD: exact in doubles
    out[i] = ((h % 20000) - 10000) / 10000
  end
  return out
end

-- An embedding as OpenAI sends it for encoding_format = "base64" (the
-- official clients' default): little-endian float32s, base64 with padding.
local ffi = require "ffi"
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function M.embedding_base64(floats)
  local buf = ffi.new("float[?]", #floats)
  for i, f in ipairs(floats) do buf[i - 1] = f end
  local raw = ffi.string(buf, 4 * #floats)         -- x86-64: little-endian already
  local out = {}
  for i = 1, #raw, 3 do
    local a, b, c = raw:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    for j = 0, 3 do
      if (j == 2 and not b) or (j == 3 and not c) then
        out[#out + 1] = "="
      else
        local v = bit.band(bit.rshift(n, 18 - 6 * j), 63)
        out[#out + 1] = B64:sub(v + 1, v + 1)
      end
    end
  end
  return table.concat(out)
end

-- The stats as JSON text.
local RAW_PATTERN = cjson.encode(M.RAW_BODY):gsub("%p", "%%%0")
function M.stats_json()
  local s = M.encode(M.stats)
  return (s:gsub(RAW_PATTERN, function() return M.last_raw or "null" end))
end

function M.count(t, k)
  t[k] = (t[k] or 0) + 1
end

return M
