-- JSON helpers for what Debian's lua-cjson (2.1.0) cannot do.
--
--   local json = require "moongate.json"
--   json.encode({ data = json.array(list) })   -- an empty list encodes as [] (cjson: {})
--   json.encode({ tags = json.empty_array })
--   json.set_member(text, "model", '"gpt-4o"') -> new text | nil, err
--   json.member_is(text, "model", '"gpt-4o"') -> true when set_member would change nothing
--   json.member(text, "usage", "model") -> usage_json, model_json (false: absent) | nil, err
--
-- set_member edits one top-level member of a JSON object text in place and
-- leaves every other byte alone. A gateway that rewrites a client's body
-- (the `model` of an OpenAI request, say) should not decode and re-encode
-- it: cjson would turn empty arrays into objects and mangle integers of 15+
-- digits. Misuse raises; text that is not a JSON object returns nil, err.
local cjson = require "cjson.safe"
local core = require "moongate.core"

local M = {}

-- A string no valid JSON input can produce: NUL is escaped by the encoder,
-- so the marker's encoded form is unambiguous and replaced after encoding.
local EMPTY = "\0moongate:empty-array\0"
M.empty_array = EMPTY
local EMPTY_ENCODED = cjson.encode(EMPTY):gsub("%p", "%%%0")

function M.array(t)
  if t == nil or next(t) == nil then return EMPTY end
  return t
end

-- cjson.encode with empty-array markers turned into []. Returns text or nil, err.
function M.encode(v)
  local s, err = cjson.encode(v)
  if not s then return nil, err end
  if s:find("moongate:empty-array", 1, true) then s = s:gsub(EMPTY_ENCODED, "[]") end
  return s
end

M.decode = cjson.decode
M.null = cjson.null

local find, byte, sub = string.find, string.byte, string.sub

-- Index just past the string that opens at i (s[i] == '"'), or nil.
local function skip_string(s, i)
  local j = i + 1
  while true do
    local q = find(s, '["\\]', j)
    if not q then return nil end
    if byte(s, q) == 92 then j = q + 2 else return q + 1 end
  end
end

-- Index just past the value that starts at i, or nil if it is cut off.
local function skip_value(s, i)
  local c = byte(s, i)
  if c == 34 then return skip_string(s, i) end
  if c == 123 or c == 91 then                  -- { or [: count brackets, skip strings
    local depth, j = 0, i
    while true do
      local p = find(s, '[%[%]{}"]', j)
      if not p then return nil end
      local b = byte(s, p)
      if b == 34 then
        j = skip_string(s, p)
        if not j then return nil end
      elseif b == 123 or b == 91 then
        depth, j = depth + 1, p + 1
      else
        depth, j = depth - 1, p + 1
        if depth == 0 then return j end
      end
    end
  end
  local p = find(s, "[,%]}%s]", i)               -- a number, true, false or null
  if p == i then return nil end
  return p or #s + 1
end

-- Sets the top-level member `key` of the JSON object `text` to `value_json`
-- (JSON text, e.g. '"gpt-4o"' or '{"include_usage":true}'); every occurrence
-- is replaced, or the member is added first when absent. The rest of the
-- text is kept byte for byte. Only the object's structure is checked, not
-- every value's syntax.
function M.set_member(text, key, value_json)
  if type(text) ~= "string" or type(key) ~= "string" or type(value_json) ~= "string" then
    error("json.set_member(text, key, value_json): expected three strings", 2)
  end
  local pos = find(text, "%S")
  if not pos or byte(text, pos) ~= 123 then return nil, "not a JSON object" end
  local open = pos
  local spans = {}
  pos = find(text, "%S", pos + 1)
  if pos and byte(text, pos) ~= 125 then
    while true do
      if not pos or byte(text, pos) ~= 34 then return nil, "malformed JSON object" end
      local kend = skip_string(text, pos)
      if not kend then return nil, "malformed JSON object" end
      local name = sub(text, pos + 1, kend - 2)
      pos = find(text, "%S", kend)
      if not pos or byte(text, pos) ~= 58 then return nil, "malformed JSON object" end
      local vstart = find(text, "%S", pos + 1)
      local vend = vstart and skip_value(text, vstart)
      if not vend then return nil, "malformed JSON object" end
      if name == key then spans[#spans + 1] = { vstart, vend } end
      pos = find(text, "%S", vend)
      if not pos then return nil, "malformed JSON object" end
      local b = byte(text, pos)
      if b == 125 then break end
      if b ~= 44 then return nil, "malformed JSON object" end
      pos = find(text, "%S", pos + 1)
    end
  elseif not pos then
    return nil, "malformed JSON object"
  end
  if #spans == 0 then
    local empty = byte(text, find(text, "%S", open + 1)) == 125
    return sub(text, 1, open) .. cjson.encode(key) .. ":" .. value_json .. (empty and "" or ",")
           .. sub(text, open + 1)
  end
  local out, last = {}, 1
  for _, sp in ipairs(spans) do
    out[#out + 1] = sub(text, last, sp[1] - 1)
    out[#out + 1] = value_json
    last = sp[2]
  end
  out[#out + 1] = sub(text, last)
  return table.concat(out)
end

-- The first byte at or after i that is not JSON whitespace (nil at the
-- end). A byte loop rather than find(text, "%S", i): LuaJIT compiles
-- string.find only for plain searches, and leaves its trace at a pattern.
local function skip_ws(text, i)
  local b = byte(text, i)
  while b == 32 or b == 10 or b == 13 or b == 9 do
    i = i + 1
    b = byte(text, i)
  end
  if b then return i, b end
end

-- Keys that are plain names ([%w_-]+), checked once each (bounded).
local plain_key, n_plain_key = {}, 0

-- Whether the top-level member `key` of `text` -- a JSON object text that
-- is known to be valid (it decoded) -- appears exactly once, spelled plainly,
-- with exactly `value_json` as its value: then set_member(text, key,
-- value_json) would change nothing, and a gateway passing a client's
-- `model` on as it came can skip it. Without any \u escape in the text, a
-- top-level member must appear as "key" literally, so one occurrence is
-- that member. false when unsure.
function M.member_is(text, key, value_json)
  if type(text) ~= "string" or type(key) ~= "string" or type(value_json) ~= "string" then
    error("json.member_is(text, key, value_json): expected three strings", 2)
  end
  local plain = plain_key[key]
  if plain == nil then
    plain = find(key, "^[%w_%-]+$") ~= nil
    if n_plain_key >= 100 then plain_key, n_plain_key = {}, 0 end
    plain_key[key], n_plain_key = plain, n_plain_key + 1
  end
  if not plain or find(text, "\\u", 1, true) then return false end
  local quoted = '"' .. key .. '"'
  local at = find(text, quoted, 1, true)
  if not at or find(text, quoted, at + #quoted, true) then return false end
  local colon, c = skip_ws(text, at + #quoted)
  if c ~= 58 then return false end
  local v = skip_ws(text, colon + 1)
  if not v or sub(text, v, v + #value_json - 1) ~= value_json then return false end
  local _, after = skip_ws(text, v + #value_json)
  return after == 44 or after == 125
end

-- The JSON text of top-level members of an object, found without decoding
-- it (a C scan that also checks the whole text is one JSON object, as
-- cjson.decode would take it): one result per key -- the member's value as
-- JSON text, or false when the object has no such member (of duplicates,
-- the last, as decoders keep) -- or nil, err when text is not a JSON
-- object. For a relay that needs the `usage` of a provider's answer and
-- nothing else: decoding the whole answer into tables costs several times
-- more.
function M.member(text, ...)
  if type(text) ~= "string" or type((...)) ~= "string" then
    error("json.member(text, key, ...): expected a text and key strings", 2)
  end
  return core.json_members(text, ...)
end

return M
