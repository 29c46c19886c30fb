-- RSA public keys and RSASSA-PKCS1-v1_5 / SHA-256 verification (RS256) in
-- pure Lua, for the jwt policy (no dependency of the runtime offers RSA).
--
--   local key = assert(rsa.parse_pem(pem))       -- or rsa.from_jwk{ n=, e= }
--   rsa.verify_pkcs1_sha256(key, message, signature) --> true / false
--
-- Keys: "-----BEGIN PUBLIC KEY-----" (X.509 SubjectPublicKeyInfo with the
-- rsaEncryption OID 1.2.840.113549.1.1.1), "-----BEGIN RSA PUBLIC KEY-----"
-- (PKCS#1 RSAPublicKey) or a JWK { kty = "RSA", n = b64url, e = b64url }.
-- Moduli of 2048 to 4096 bits; the exponent odd, 3 .. 2^32-1. Parse errors
-- are returned as nil, message (the caller names the setting).
--
-- Verification (RFC 8017 section 8.2.2): the signature is exactly as long
-- as the modulus, s < n, m = s^e mod n, and m must equal the one encoding
-- EMSA-PKCS1-v1_5 allows: 00 01 FF..FF 00 DigestInfo(SHA-256) H -- built
-- here and compared whole, so no lenient parsing of the padding.
--
-- Everything here works on public data (the key, the token, its
-- signature), so nothing needs to run in constant time.
--
-- The bignum: little-endian arrays of 22-bit limbs held in doubles (LuaJIT
-- FFI double arrays, 1-based; about twice as fast as tables here), exact
-- as long as every value stays below 2^53: a limb product is < 2^44, which
-- leaves room to add up a whole row of them before carrying (see montmul).
-- s^e mod n uses Montgomery multiplication (R = 2^(22k)), left-to-right
-- square-and-multiply over the bits of e.
local bit = require "bit"
local ffi = require "ffi"
local DA = ffi.typeof("double[?]")
local sha = require "moongate.sha256"

local floor = math.floor
local byte, char, concat = string.byte, string.char, table.concat

local BITS = 22
local B = 2 ^ BITS              -- the limb base
local IB = 1 / B

local M = {}

-- ---- base64 (standard for PEM, url-safe for JWK) ----------------------------

local STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local DSTD, DURL = {}, {}
for i = 1, 64 do DSTD[STD:byte(i)] = i - 1; DURL[URL:byte(i)] = i - 1 end

local function b64decode(s, dec)
  local out, acc, nbits = {}, 0, 0
  for i = 1, #s do
    local v = dec[byte(s, i)]
    if not v then return nil end
    acc = bit.band(bit.bor(bit.lshift(acc, 6), v), 0xffffff)
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      out[#out + 1] = char(bit.band(bit.rshift(acc, nbits), 0xff))
    end
  end
  if nbits >= 6 then return nil end
  return concat(out)
end

-- PEM bodies: whitespace anywhere, '=' padding only at the end.
local function b64std(s)
  s = s:gsub("%s", "")
  local body, pad = s:match("^([^=]*)(=*)$")
  if not body or #pad > 2 or (#body + #pad) % 4 ~= 0 then return nil end
  return b64decode(body, DSTD)
end
M.base64_decode = b64std

-- JWK members: base64url without padding (RFC 7515 section 2).
local function b64url(s)
  if type(s) ~= "string" or s == "" then return nil end
  return b64decode(s, DURL)
end
M.b64url_decode = b64url

-- ---- a minimal DER reader ---------------------------------------------------

-- Reads one TLV at position pos of der; returns tag, value start, value end
-- (inclusive) and the position after it, or nil, why.
local function der_read(der, pos, limit)
  limit = limit or #der
  if pos + 1 > limit then return nil, "truncated" end
  local tag, len = byte(der, pos, pos + 1)
  if bit.band(tag, 0x1f) == 0x1f then return nil, "multi-byte tags are not used in keys" end
  local p = pos + 2
  if len == 0x80 then return nil, "indefinite length is not DER" end
  if len > 0x80 then
    local nb = len - 0x80
    if nb > 4 or p + nb - 1 > limit then return nil, "bad length" end
    len = 0
    for i = 0, nb - 1 do len = len * 256 + byte(der, p + i) end
    if len < 0x80 or byte(der, p) == 0 then return nil, "length not in the shortest form" end
    p = p + nb
  end
  local last = p + len - 1
  if last > limit then return nil, "truncated" end
  return tag, p, last, last + 1
end

local function der_expect(der, pos, limit, want, what)
  local tag, s, e, nxt = der_read(der, pos, limit)
  if not tag then return nil, what .. ": " .. s end
  if tag ~= want then return nil, string.format("%s: expected tag 0x%02x, got 0x%02x", what, want, tag) end
  return s, e, nxt
end

-- A non-negative INTEGER's magnitude (big-endian bytes, no leading zeros).
local function der_uint(der, pos, limit, what)
  local s, e, nxt = der_expect(der, pos, limit, 0x02, what)
  if not s then return nil, e end
  if e < s then return nil, what .. ": empty INTEGER" end
  local first = byte(der, s)
  if first >= 0x80 then return nil, what .. ": negative INTEGER" end
  if first == 0 and e > s and byte(der, s + 1) < 0x80 then
    return nil, what .. ": INTEGER not in the shortest form"
  end
  while s < e and byte(der, s) == 0 do s = s + 1 end
  return der:sub(s, e), nxt
end

local RSA_OID = "\42\134\72\134\247\13\1\1\1"      -- 1.2.840.113549.1.1.1

-- RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
local function parse_pkcs1(der, pos, limit)
  local s, e, nxt = der_expect(der, pos, limit, 0x30, "RSAPublicKey")
  if not s then return nil, e end
  if nxt ~= limit + 1 then return nil, "RSAPublicKey: trailing data" end
  local n, p = der_uint(der, s, e, "modulus")
  if not n then return nil, p end
  local ex, p2 = der_uint(der, p, e, "publicExponent")
  if not ex then return nil, p2 end
  if p2 ~= e + 1 then return nil, "RSAPublicKey: trailing data" end
  return n, ex
end

-- SubjectPublicKeyInfo ::= SEQUENCE { AlgorithmIdentifier { rsaEncryption,
-- NULL }, BIT STRING { RSAPublicKey } }
local function parse_spki(der)
  local s, e, nxt = der_expect(der, 1, #der, 0x30, "SubjectPublicKeyInfo")
  if not s then return nil, e end
  if nxt ~= #der + 1 then return nil, "SubjectPublicKeyInfo: trailing data" end
  local as, ae, p = der_expect(der, s, e, 0x30, "AlgorithmIdentifier")
  if not as then return nil, ae end
  local os, oe, q = der_expect(der, as, ae, 0x06, "algorithm")
  if not os then return nil, oe end
  if der:sub(os, oe) ~= RSA_OID then return nil, "not an RSA key (algorithm is not rsaEncryption)" end
  if q <= ae then                                 -- parameters: NULL (RFC 3279)
    local ns, ne, r = der_expect(der, q, ae, 0x05, "parameters")
    if not ns then return nil, ne end
    if ne >= ns or r ~= ae + 1 then return nil, "parameters: expected NULL" end
  end
  local bs, be, r = der_expect(der, p, e, 0x03, "subjectPublicKey")
  if not bs then return nil, be end
  if r ~= e + 1 then return nil, "SubjectPublicKeyInfo: trailing data" end
  if be < bs or byte(der, bs) ~= 0 then return nil, "subjectPublicKey: BIT STRING with unused bits" end
  return parse_pkcs1(der, bs + 1, be)
end

-- ---- the bignum -------------------------------------------------------------

-- Big-endian bytes -> k limbs (limb 1 least significant), zero-extended.
local function from_bytes(s, k)
  assert(#s * 8 <= k * BITS, "value too long")  -- FFI arrays: never index past k
  local t, acc, nbits, i = DA(k + 1), 0, 0, 1
  for p = #s, 1, -1 do
    acc = acc + byte(s, p) * 2 ^ nbits            -- acc < 2^30
    nbits = nbits + 8
    if nbits >= BITS then
      local v = acc % B
      t[i], i = v, i + 1
      acc, nbits = (acc - v) * IB, nbits - BITS
    end
  end
  for j = i, k do t[j] = acc; acc = 0 end
  return t
end

-- k limbs -> exactly len big-endian bytes (the value must fit).
local function to_bytes(t, k, len)
  local out, acc, nbits, i = {}, 0, 0, 1
  for p = len, 1, -1 do
    if nbits < 8 then
      acc = acc + (i <= k and t[i] or 0) * 2 ^ nbits
      i, nbits = i + 1, nbits + BITS
    end
    local v = acc % 256
    out[p] = char(v)
    acc, nbits = (acc - v) / 256, nbits - 8
  end
  return concat(out)
end

-- -1 / 0 / 1 comparing k-limb a and b.
local function cmp(a, b, k)
  for i = k, 1, -1 do
    if a[i] ~= b[i] then return a[i] < b[i] and -1 or 1 end
  end
  return 0
end

-- a = a - b (a >= b, or a + B^k - b when the caller knows a carry is out
-- of the top), in place.
local function sub_in_place(a, b, k)
  local borrow = 0
  for i = 1, k do
    local x = a[i] - b[i] - borrow
    if x < 0 then a[i] = x + B; borrow = 1 else a[i] = x; borrow = 0 end
  end
end

-- Montgomery product a*b/R mod n into out (k limbs; a, b < n, normalized;
-- out may be a or b). key.np = -n^-1 mod B; t is k limbs of scratch.
--
-- Carries are left for the end: each round adds ai*b[j] + m*n[j] (two
-- products < 2^44) to every limb and moves the limbs down by one, so a limb
-- holds at most 2k products (2*187*2^44 < 2^52.6 for 4096 bits) and stays
-- exact. Without the carry chain the inner loop has no dependency from one
-- step to the next, which is what makes it fast.
local function montmul(out, a, b, key)
  local n, np, k, t = key.nl, key.np, key.k, key.scratch
  for j = 1, k do t[j] = 0 end
  local b1, n1 = b[1], n[1]
  for i = 1, k do
    local ai = a[i]
    local x = t[1] + ai * b1
    local m = (x - floor(x * IB) * B) * np       -- m = x * np mod B, so
    m = m - floor(m * IB) * B                    -- x + m*n[1] = 0 mod B
    local c = (x + m * n1) * IB                  -- exact
    for j = 2, k do
      t[j - 1] = t[j] + ai * b[j] + m * n[j]
    end
    t[k] = 0
    t[1] = t[1] + c
  end
  local carry = 0                                -- normalize: t < 2n < 2R
  for j = 1, k do
    local v = t[j] + carry
    carry = floor(v * IB)
    t[j] = v - carry * B
  end
  if carry ~= 0 or cmp(t, n, k) >= 0 then sub_in_place(t, n, k) end
  for j = 1, k do out[j] = t[j] end
  return out
end

-- s^e mod n for s < n (k limbs); returns a new limb array.
local function modexp(key, s)
  local k = key.k
  local base = montmul(DA(k + 1), s, key.rr, key)         -- s*R mod n
  local acc = DA(k + 1)
  for i = 1, k do acc[i] = base[i] end
  local e = key.e
  local top = 31
  while top > 0 and floor(e / 2 ^ top) % 2 == 0 do top = top - 1 end
  for b = top - 1, 0, -1 do
    montmul(acc, acc, acc, key)
    if floor(e / 2 ^ b) % 2 == 1 then montmul(acc, acc, base, key) end
  end
  local one = DA(k + 1)
  one[1] = 1
  return montmul(DA(k + 1), acc, one, key)               -- out of the Montgomery form
end

-- ---- keys -------------------------------------------------------------------

local MIN_BITS, MAX_BITS = 2048, 4096    -- montmul's exactness needs k <= 255

local function bit_length(bytes)
  local top = byte(bytes, 1)
  local nb = 0
  while top > 0 do nb = nb + 1; top = floor(top / 2) end
  return (#bytes - 1) * 8 + nb
end

-- Builds a key from the modulus and exponent magnitudes (big-endian bytes).
local function make_key(nbytes, ebytes)
  nbytes = nbytes:gsub("^%z+", "")
  ebytes = ebytes:gsub("^%z+", "")
  if nbytes == "" then return nil, "the modulus is zero" end
  local bits = bit_length(nbytes)
  if bits < MIN_BITS then
    return nil, string.format("RSA key of %d bits is too small (at least %d)", bits, MIN_BITS)
  end
  if bits > MAX_BITS then
    return nil, string.format("RSA key of %d bits is too large (at most %d)", bits, MAX_BITS)
  end
  if byte(nbytes, #nbytes) % 2 == 0 then return nil, "the modulus is even" end
  if #ebytes == 0 or #ebytes > 4 then return nil, "the public exponent must be between 3 and 2^32-1" end
  local e = 0
  for i = 1, #ebytes do e = e * 256 + byte(ebytes, i) end
  if e < 3 or e % 2 == 0 then return nil, "the public exponent must be odd and at least 3" end

  -- k limbs hold any value of #nbytes bytes (a signature as long as n).
  local k = math.ceil(#nbytes * 8 / BITS)
  local nl = from_bytes(nbytes, k)
  -- np = -n^-1 mod B by Newton's iteration (x*n = 1 mod 2^3 for odd n,
  -- and each step doubles the correct bits).
  local n0, x = nl[1], nl[1]
  for _ = 1, 4 do
    local t = (n0 * x) % B
    x = (x * ((2 - t) % B)) % B
  end
  assert((n0 * x) % B == 1)
  local key = { nl = nl, k = k, bits = bits, len = #nbytes, e = e, np = (B - x) % B,
                n = nbytes, scratch = DA(k + 1) }
  -- R^2 mod n, R = B^k: start from 1 and double 2*BITS*k times, reducing.
  local r = DA(k + 1)
  r[1] = 1
  for _ = 1, 2 * BITS * k do
    local carry = 0
    for i = 1, k do
      local v = r[i] * 2 + carry
      if v >= B then r[i] = v - B; carry = 1 else r[i] = v; carry = 0 end
    end
    if carry == 1 or cmp(r, nl, k) >= 0 then sub_in_place(r, nl, k) end
  end
  key.rr = r
  return key
end

-- Parses a PEM public key (either form). Returns the key or nil, why.
function M.parse_pem(pem)
  if type(pem) ~= "string" then return nil, "expected a PEM string" end
  local label, body, label2 = pem:match("%-%-%-%-%-BEGIN ([%u ]+)%-%-%-%-%-(.-)%-%-%-%-%-END ([%u ]+)%-%-%-%-%-")
  if not label then return nil, "not a PEM block (no -----BEGIN ...----- / -----END ...----- lines)" end
  if label ~= label2 then return nil, "PEM BEGIN and END labels differ" end
  if label ~= "PUBLIC KEY" and label ~= "RSA PUBLIC KEY" then
    return nil, string.format('expected "BEGIN PUBLIC KEY" or "BEGIN RSA PUBLIC KEY", got "BEGIN %s"%s', label,
      label:find("PRIVATE") and " (give the public key: openssl rsa -in key.pem -pubout)" or "")
  end
  if body:find(":", 1, true) then return nil, "encrypted or annotated PEM is not supported" end
  local der = b64std(body)
  if not der or der == "" then return nil, "PEM body is not valid base64" end
  local n, e
  if label == "PUBLIC KEY" then n, e = parse_spki(der) else n, e = parse_pkcs1(der, 1, #der) end
  if not n then
    local other = label == "PUBLIC KEY" and parse_pkcs1(der, 1, #der) or parse_spki(der)
    if other then
      return nil, string.format('the body under "BEGIN %s" is a %s key: fix the BEGIN/END lines', label,
                                label == "PUBLIC KEY" and "PKCS#1 (RSA PUBLIC KEY)" or "SubjectPublicKeyInfo (PUBLIC KEY)")
    end
    return nil, e
  end
  return make_key(n, e)
end

-- A JWK: { kty = "RSA", n = b64url, e = b64url [, alg = "RS256", use = "sig"] }.
function M.from_jwk(jwk)
  if type(jwk) ~= "table" then return nil, "expected a JWK table" end
  if jwk.kty ~= "RSA" then return nil, string.format("kty: expected \"RSA\", got %s", tostring(jwk.kty)) end
  if jwk.alg ~= nil and jwk.alg ~= "RS256" then return nil, string.format("alg: %s is not RS256", tostring(jwk.alg)) end
  if jwk.use ~= nil and jwk.use ~= "sig" then return nil, string.format("use: %s is not \"sig\"", tostring(jwk.use)) end
  if jwk.d ~= nil or jwk.p ~= nil then return nil, "this JWK holds a private key: give only kty, n, e (and kid)" end
  local n = b64url(jwk.n)
  if not n then return nil, "n: missing or not base64url" end
  local e = b64url(jwk.e)
  if not e then return nil, "e: missing or not base64url" end
  return make_key(n, e)
end

-- ---- RSASSA-PKCS1-v1_5 with SHA-256 -----------------------------------------

local SHA256_PREFIX = "\48\49\48\13\6\9\96\134\72\1\101\3\4\2\1\5\0\4\32"

-- The one valid encoded message of emLen bytes for a SHA-256 hash.
local function emsa_pkcs1_sha256(hash, em_len)
  local t = SHA256_PREFIX .. hash
  return "\0\1" .. string.rep("\255", em_len - #t - 3) .. "\0" .. t
end
M._emsa = emsa_pkcs1_sha256

-- Returns the encoded message s^e mod n as key.len bytes, or nil when the
-- signature has the wrong length or is not below n.
function M.raw_public(key, signature)
  if type(signature) ~= "string" or #signature ~= key.len then return nil end
  local s = from_bytes(signature, key.k)
  if cmp(s, key.nl, key.k) >= 0 then return nil end
  return to_bytes(modexp(key, s), key.k, key.len)
end

function M.verify_pkcs1_sha256(key, message, signature)
  local em = M.raw_public(key, signature)
  if not em then return false end
  return em == emsa_pkcs1_sha256(sha.sha256(message), key.len)
end

return M
