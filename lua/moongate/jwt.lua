-- JSON Web Tokens (HS256, RS256): base64url, verification and signing, for
-- the jwt policy and for tests. verify() checks the algorithm against
-- conf.algorithms, the signature, exp/nbf (with conf.leeway ms), iss and
-- aud; it returns the claims or nil, reason.
--
-- conf carries the keys, each usable by one algorithm only, so a token
-- cannot pick how its signature is checked (no "alg confusion"):
--   conf.secret     HS256: the HMAC key (never an RSA key's bytes)
--   conf.rsa_key    RS256: one key from moongate.rsa (public_key)
--   conf.rsa_kids   RS256: kid -> key (jwks); conf.rsa_default is the key
--                   for tokens without a kid when the set has only one
--   conf.cache      optional, from M.new_cache(): tokens that verified
local cjson = require "cjson.safe"
local bit = require "bit"
local sha = require "moongate.sha256"
local rsa = require "moongate.rsa"

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local DEC = {}
for i = 1, 64 do DEC[B64:byte(i)] = i - 1 end

local byte, char = string.byte, string.char

-- Four characters at a time; a dangling last character is not base64.
-- Unused low bits of the last group are ignored, as most decoders do.
local function b64url_decode(s)
  if not s:match("^[%w%-_]*$") then return nil end
  local n = #s
  local rem = n % 4
  if rem == 1 then return nil end
  local out, k = {}, 0
  for i = 1, n - rem, 4 do
    local a, b, c, d = byte(s, i, i + 3)
    local v = DEC[a] * 262144 + DEC[b] * 4096 + DEC[c] * 64 + DEC[d]
    k = k + 1
    out[k] = char(bit.rshift(v, 16), bit.band(bit.rshift(v, 8), 255), bit.band(v, 255))
  end
  if rem == 2 then
    local a, b = byte(s, n - 1, n)
    out[k + 1] = char(bit.rshift(DEC[a] * 64 + DEC[b], 4))
  elseif rem == 3 then
    local a, b, c = byte(s, n - 2, n)
    local v = bit.rshift(DEC[a] * 4096 + DEC[b] * 64 + DEC[c], 2)
    out[k + 1] = char(bit.rshift(v, 8), bit.band(v, 255))
  end
  return table.concat(out)
end

local function b64url_encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    for j = 0, (c and 3) or (b and 2) or 1 do
      local v = bit.band(bit.rshift(n, 18 - 6 * j), 63)
      out[#out + 1] = B64:sub(v + 1, v + 1)
    end
  end
  return table.concat(out)
end

local function equal(a, b)                      -- constant time for equal lengths
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = bit.bor(diff, bit.bxor(a:byte(i), b:byte(i))) end
  return diff == 0
end

local function in_list(list, v)
  if type(v) == "table" then
    for _, x in ipairs(v) do if in_list(list, x) then return true end end
    return false
  end
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

local M = {}

-- A per-worker cache of tokens that verified: token -> { payload = JSON
-- text, expires = exp + leeway (or infinity) }. Two generations of at most
-- `size` entries each: when the current one is full it becomes the old one
-- (and the previous old one is dropped); a hit in the old one moves the
-- entry to the current one. Bounded, O(1), close to LRU.
local MAX_CACHED_TOKEN = 8192                   -- longer tokens are not kept

function M.new_cache(size)
  return { size = size, cur = {}, old = {}, n = 0, hits = 0 }
end

local function cache_put(c, token, entry)
  if c.n >= c.size then c.old, c.cur, c.n = c.cur, {}, 0 end
  c.cur[token] = entry
  c.n = c.n + 1
end

local function cache_get(c, token, now)
  local e = c.cur[token]
  if not e then
    e = c.old[token]
    if not e then return nil end
    c.old[token] = nil
    cache_put(c, token, e)
  end
  if now > e.expires then c.cur[token] = nil return nil end
  c.hits = c.hits + 1
  return e
end

-- exp, nbf, iss, aud: the checks run on every request, cached or not.
local function check_claims(conf, claims, now)
  local leeway = conf.leeway / 1000
  if claims.exp ~= nil and (type(claims.exp) ~= "number" or now > claims.exp + leeway) then
    return nil, "token expired"
  end
  if claims.nbf ~= nil and (type(claims.nbf) ~= "number" or now + leeway < claims.nbf) then
    return nil, "token not yet valid"
  end
  if conf.issuers and not in_list(conf.issuers, claims.iss) then return nil, "issuer not allowed" end
  if conf.audiences and not in_list(conf.audiences, claims.aud) then return nil, "audience not allowed" end
  return claims
end

-- The RSA key for a token header: the one public_key, or the jwks entry
-- named by kid (a set of one also serves tokens without a kid).
local function rsa_key_for(conf, header)
  if conf.rsa_key then return conf.rsa_key end
  local kid = header.kid
  if kid == nil then return conf.rsa_default end
  if type(kid) ~= "string" or not conf.rsa_kids then return nil end
  return conf.rsa_kids[kid]
end

-- Returns the claims, or nil and the reason.
function M.verify(conf, token, now)
  local cache = conf.cache
  if cache then
    local hit = cache_get(cache, token, now)
    if hit then return check_claims(conf, cjson.decode(hit.payload), now) end
  end
  local h64, p64, s64 = token:match("^([^.]+)%.([^.]+)%.([^.]*)$")
  if not h64 then return nil, "malformed token" end
  local header = cjson.decode(b64url_decode(h64) or "")
  local payload = b64url_decode(p64)
  local claims = cjson.decode(payload or "")
  local sig = b64url_decode(s64)
  if type(header) ~= "table" or type(claims) ~= "table" or not sig then return nil, "malformed token" end
  local alg = header.alg
  if type(alg) ~= "string" or not in_list(conf.algorithms, alg) then return nil, "unsupported algorithm" end
  local signed = h64 .. "." .. p64
  if alg == "HS256" then
    if type(conf.secret) ~= "string" or not equal(sha.hmac_sha256(conf.secret, signed), sig) then
      return nil, "bad signature"
    end
  elseif alg == "RS256" then
    local key = rsa_key_for(conf, header)
    if not key then return nil, "unknown key id" end
    if not rsa.verify_pkcs1_sha256(key, signed, sig) then return nil, "bad signature" end
  else
    return nil, "unsupported algorithm"
  end
  local ok, why = check_claims(conf, claims, now)
  if not ok then return nil, why end
  if cache and #token <= MAX_CACHED_TOKEN then
    local exp = type(claims.exp) == "number" and claims.exp + conf.leeway / 1000 or math.huge
    cache_put(cache, token, { payload = payload, expires = exp })
  end
  return claims
end

-- For specs and tools: signs claims with HS256 (not used by the policy).
-- `header` (optional) adds fields to { alg = "HS256", typ = "JWT" }.
function M.sign(secret, claims, header)
  local hd = { alg = "HS256", typ = "JWT" }
  for k, v in pairs(header or {}) do hd[k] = v end
  local h = b64url_encode(cjson.encode(hd))
  local p = b64url_encode(cjson.encode(claims))
  return h .. "." .. p .. "." .. b64url_encode(sha.hmac_sha256(secret, h .. "." .. p))
end

M.b64url_encode, M.b64url_decode = b64url_encode, b64url_decode

return M
