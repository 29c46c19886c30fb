-- JSON Web Tokens (HS256): base64url, verification and signing, for the
-- jwt policy and for tests. verify() checks signature, exp/nbf (with
-- conf.leeway ms), iss and aud; it returns the claims or nil, reason.
local cjson = require "cjson.safe"
local bit = require "bit"
local sha = require "moongate.sha256"

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local DEC = {}
for i = 1, 64 do DEC[B64:byte(i)] = i - 1 end

local function b64url_decode(s)
  if not s:match("^[%w%-_]*$") then return nil end
  local out, acc, nbits = {}, 0, 0
  for i = 1, #s do
    acc = bit.bor(bit.lshift(acc, 6), DEC[s:byte(i)])
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      out[#out + 1] = string.char(bit.band(bit.rshift(acc, nbits), 0xff))
    end
  end
  if nbits >= 6 then return nil end            -- a dangling character: not base64
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

-- Returns the claims, or nil and the reason.
function M.verify(conf, token, now)
  local h64, p64, s64 = token:match("^([^.]+)%.([^.]+)%.([^.]*)$")
  if not h64 then return nil, "malformed token" end
  local header = cjson.decode(b64url_decode(h64) or "")
  local claims = cjson.decode(b64url_decode(p64) or "")
  local sig = b64url_decode(s64)
  if type(header) ~= "table" or type(claims) ~= "table" or not sig then return nil, "malformed token" end
  if header.alg ~= "HS256" or not in_list(conf.algorithms, header.alg) then return nil, "unsupported algorithm" end
  if not equal(sha.hmac_sha256(conf.secret, h64 .. "." .. p64), sig) then return nil, "bad signature" end
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

-- For specs and tools: signs claims with HS256 (not used by the policy).
function M.sign(secret, claims)
  local h = b64url_encode(cjson.encode({ alg = "HS256", typ = "JWT" }))
  local p = b64url_encode(cjson.encode(claims))
  return h .. "." .. p .. "." .. b64url_encode(sha.hmac_sha256(secret, h .. "." .. p))
end

return M
