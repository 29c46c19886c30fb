-- POST /predict of the mock inference service (see gateway.lua).
local bit = require "bit"
local cjson = require "cjson.safe"

-- Base64 (RFC 4648, standard alphabet, padding optional, whitespace
-- ignored). Returns the bytes, or nil, reason.
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local value = {}
for i = 1, 64 do value[alphabet:byte(i)] = i - 1 end

local function b64decode(s)
  s = s:gsub("%s", "")
  local pad = s:match("(=*)$")
  if #pad > 2 then return nil, "too much padding" end
  s = s:sub(1, #s - #pad)
  if #s % 4 == 1 then return nil, "truncated input" end
  if #pad > 0 and (#s + #pad) % 4 ~= 0 then return nil, "incorrect padding" end
  local out, n = {}, 0
  local char, band, rshift, lshift, bor = string.char, bit.band, bit.rshift, bit.lshift, bit.bor
  for i = 1, #s, 4 do
    local a, b, c, d = s:byte(i, i + 3)
    local va, vb = value[a], value[b]
    local vc, vd = c and value[c], d and value[d]
    if va == nil or vb == nil or (c and vc == nil) or (d and vd == nil) then
      return nil, "invalid character"
    end
    local w = bor(lshift(va, 18), lshift(vb, 12), lshift(vc or 0, 6), vd or 0)
    n = n + 1
    if d then
      out[n] = char(rshift(w, 16), band(rshift(w, 8), 255), band(w, 255))
    elseif c then
      out[n] = char(rshift(w, 16), band(rshift(w, 8), 255))
    else
      out[n] = char(rshift(w, 16))
    end
  end
  return table.concat(out)
end

local signatures = {
  { "\137PNG\r\n\26\n", "png" }, { "\255\216\255", "jpeg" }, { "GIF87a", "gif" },
  { "GIF89a", "gif" }, { "BM", "bmp" },
}
local function image_kind(bytes)
  for _, s in ipairs(signatures) do
    if bytes:sub(1, #s[1]) == s[1] then return s[2] end
  end
  if bytes:sub(1, 4) == "RIFF" and bytes:sub(9, 12) == "WEBP" then return "webp" end
  return nil
end

local labels = {
  "tabby", "golden_retriever", "espresso", "sports_car", "daisy", "teapot",
  "mountain_bike", "lighthouse", "pizza", "red_fox", "macaw", "volcano",
  "banana", "grand_piano", "seashore", "laptop", "goldfish", "umbrella",
  "hot_air_balloon", "snail",
}

local function fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    -- h * 16777619 mod 2^32, exactly: 16777619 = 2^24 + 403
    h = bit.tobit(bit.lshift(h, 24) + h * 403)
  end
  return h % 4294967296
end

-- Top 3: three distinct labels and descending confidences (sum < 1), all
-- from the hash of the bytes, rounded to 4 decimals.
local function top3(bytes)
  local h = fnv1a(bytes)
  local n = #labels
  local i1 = h % n
  local i2 = (i1 + 1 + math.floor(h / n) % (n - 1)) % n
  local i3 = i1
  local k = math.floor(h / 997)
  while i3 == i1 or i3 == i2 do i3 = k % n k = k + 1 end
  local c1 = 0.55 + (math.floor(h / 7) % 400) / 1000          -- 0.550 .. 0.949
  local c2 = (1 - c1) * (0.45 + (math.floor(h / 11) % 40) / 100) -- < 1 - c1
  local c3 = (1 - c1 - c2) * (0.3 + (math.floor(h / 13) % 50) / 100)
  local function r(x) return math.floor(x * 10000 + 0.5) / 10000 end
  return {
    { label = labels[i1 + 1], confidence = r(c1) },
    { label = labels[i2 + 1], confidence = r(c2) },
    { label = labels[i3 + 1], confidence = r(c3) },
  }
end

local JSON = { ["Content-Type"] = "application/json" }

local function misbehave(req, mode, arg, data)
  if mode == "error" then
    return 500, { detail = (arg ~= "" and arg) or "Internal server error during model inference." }, JSON
  elseif mode == "unavailable" then
    return { status = 503, headers = { ["Content-Type"] = "text/plain" },
             body = "Service Unavailable", raw = true }
  elseif mode == "status" then
    local st = tonumber(arg) or 500
    return st, { error = "mock status " .. st }, JSON
  elseif mode == "stall" then
    req:sleep(tonumber(arg) or 30)
    return 200, top3(data), JSON
  elseif mode == "garbage" then
    return 200, "<html><body>model crashed</body></html>", { ["Content-Type"] = "text/html" }
  elseif mode == "object" then
    return 200, { predictions = top3(data) }, JSON
  elseif mode == "cut" then
    req:stream(200, JSON)
    req:write('[{"label": "tabby", "confid')
    req:sleep(0.05)
    req:abort()
    return
  elseif mode == "close" then
    req:abort()
    return
  end
  return 400, { detail = "unknown mock mode " .. mode }, JSON
end

return function(req)
  local body = cjson.decode(req:body())
  local data = type(body) == "table" and body.image_data
  local how = req.headers["x-mock-behavior"]
  if type(data) == "string" and data:sub(1, 5) == "mock:" then how = how or data end
  if how then
    local mode, arg = how:match("^mock:(%a+):?(.*)$")
    if not mode then mode, arg = how:match("^(%a+):?(.*)$") end
    if mode then return misbehave(req, mode, arg, type(data) == "string" and data or "") end
  end
  if type(data) ~= "string" then
    return 422, { detail = { { loc = { "body", "image_data" }, msg = "field required",
                               type = "value_error.missing" } } }, JSON
  end
  local bytes = b64decode(data)
  if not bytes or not image_kind(bytes) then
    return 500, { detail = "Internal server error during model inference." }, JSON
  end
  return 200, top3(bytes), JSON
end
