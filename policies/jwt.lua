-- jwt: a bearer JSON Web Token signed with HS256 or RS256 identifies the
-- user (the "BFF verifies users and forwards" role of the AI proxy's front
-- layer).
--
--   { "jwt", secret_env = "JWT_SECRET", issuers = { "https://auth.example.com" },
--     audiences = { "aiproxy" }, leeway = "30s",
--     claims_to_headers = { sub = "X-User-Id", group = "X-Group" } }
--   { "jwt", public_key_file = "/etc/moongate/auth.pub", issuers = { ... } }
--   { "jwt", jwks = { { kid = "2024", kty = "RSA", n = "...", e = "AQAB" } } }
--
-- Settings:
--   secret / secret_env   HS256: the HMAC key, or the environment variable
--                         holding it
--   public_key            RS256: a PEM public key, "BEGIN PUBLIC KEY" or
--                         "BEGIN RSA PUBLIC KEY", 2048 to 4096 bits
--   public_key_file       RS256: the same read from a file (an absolute path,
--                         or relative to the gateway's working directory)
--   jwks                  RS256: a list of JWKs { kid, kty = "RSA", n, e }
--                         (or a JWK Set { keys = { ... } }); the token's
--                         `kid` header picks one (a set of one key also takes
--                         tokens without a kid)
--                         -- one of public_key, public_key_file, jwks
--   algorithms            the `alg` values accepted: { "HS256" } with a
--                         secret, { "RS256" } with an RSA key; both kinds of
--                         key need it spelled out, e.g. { "HS256", "RS256" }.
--                         Each algorithm checks with its own key only: an
--                         HS256 token is never checked against the RSA key
--   header ("Authorization", scheme "Bearer"), query (also ?<query>=<token>)
--   leeway ("0s")         clock skew allowed on exp and nbf
--   issuers, audiences    if given, `iss` / `aud` must be one of them
--   claims_to_headers     claim = header: sent upstream (req.upstream_headers)
--   cache_size (1000)     tokens that verified are remembered per worker (up
--                         to twice this many, each until its exp), so a
--                         repeated token costs a lookup, not an RSA
--                         operation; 0 turns this off
-- The verified claims are req.ctx.jwt (and req.ctx.consumer = sub).
-- Failures are 401 with a message that says which check failed: "missing
-- token", "malformed token", "unsupported algorithm", "unknown key id",
-- "bad signature", "token expired", "token not yet valid", "issuer not
-- allowed", "audience not allowed" -- never the key or the expected values.
local core = require "moongate.core"
local jwt = require "moongate.jwt"
local rsa = require "moongate.rsa"

local SUPPORTED = { HS256 = true, RS256 = true }

local M = {
  schema = {
    secret = { type = "string" },
    secret_env = { type = "string" },
    public_key = { type = "string" },
    public_key_file = { type = "string" },
    jwks = { type = "table" },
    header = { type = "string", default = "Authorization" },
    scheme = { type = "string", default = "Bearer" },
    query = { type = "string" },
    algorithms = { type = "array", items = "string" },
    leeway = { type = "duration", default = "0s" },
    issuers = { type = "array", items = "string" },
    audiences = { type = "array", items = "string" },
    claims_to_headers = { type = "table", default = {} },
    cache_size = { type = "integer", default = 1000, min = 0 },
  },
}

local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

local function load_jwks(conf)
  local list = conf.jwks
  if list.keys ~= nil then list = list.keys end
  if type(list) ~= "table" or #list == 0 then fail("jwks: expected a list of JWKs (or { keys = { ... } })") end
  local kids = {}
  for i, jwk in ipairs(list) do
    local key, why = rsa.from_jwk(jwk)
    if not key then fail("jwks[%d]: %s", i, why) end
    local kid = jwk.kid
    if kid == nil then
      if #list > 1 then fail("jwks[%d]: kid: required when there are several keys", i) end
      conf.rsa_default = key
    else
      if type(kid) ~= "string" or kid == "" then fail("jwks[%d]: kid: expected a string", i) end
      if kids[kid] then fail("jwks[%d]: kid %q appears twice", i, kid) end
      kids[kid] = key
      if #list == 1 then conf.rsa_default = key end
    end
  end
  conf.rsa_kids = kids
end

function M.init(conf)
  if conf.secret_env then                          -- (wins over secret)
    conf.secret = os.getenv(conf.secret_env)
    if not conf.secret or conf.secret == "" then fail("secret_env: %s is not set", conf.secret_env) end
  elseif conf.secret == "" then
    fail("secret: empty")
  end

  local sources = {}
  for _, f in ipairs({ "public_key", "public_key_file", "jwks" }) do
    if conf[f] ~= nil then sources[#sources + 1] = f end
  end
  if #sources > 1 then fail("%s: give only one of them", table.concat(sources, ", ")) end
  if conf.public_key then
    local key, why = rsa.parse_pem(conf.public_key)
    if not key then fail("public_key: %s", why) end
    conf.rsa_key = key
  elseif conf.public_key_file then
    local f, err = io.open(conf.public_key_file, "r")
    if not f then fail("public_key_file: cannot read %s", err) end
    local pem = f:read("*a")
    f:close()
    local key, why = rsa.parse_pem(pem or "")
    if not key then fail("public_key_file: %s: %s", conf.public_key_file, why) end
    conf.rsa_key = key
  elseif conf.jwks then
    load_jwks(conf)
  end
  local has_rsa = #sources == 1

  if conf.algorithms == nil then
    if conf.secret and has_rsa then
      fail('algorithms: required when both a secret and an RSA key (%s) are given, e.g. { "HS256", "RS256" }',
           sources[1])
    end
    conf.algorithms = { has_rsa and "RS256" or "HS256" }
  end
  if #conf.algorithms == 0 then fail("algorithms: empty") end
  local allowed = {}
  for i, a in ipairs(conf.algorithms) do
    if not SUPPORTED[a] then fail("algorithms[%d]: %q is not supported (HS256 or RS256)", i, a) end
    allowed[a] = true
  end
  if allowed.HS256 and not conf.secret then fail("secret: required for HS256 (or secret_env)") end
  if allowed.RS256 and not has_rsa then fail("public_key, public_key_file or jwks: required for RS256") end
  if conf.secret and not allowed.HS256 then
    fail("%s: an HMAC secret is given but algorithms does not allow HS256", conf.secret_env and "secret_env" or "secret")
  end
  if has_rsa and not allowed.RS256 then
    fail("%s: an RSA key is given but algorithms does not allow RS256", sources[1])
  end
  if conf.cache_size > 0 then conf.cache = jwt.new_cache(conf.cache_size) end
end

function M.access(conf, req)
  local token = req:credential(conf.header, conf.scheme, conf.query)
  if not token then return 401, "missing token" end
  local claims, why = jwt.verify(conf, token, core.now())
  if not claims then return 401, why end
  req.ctx.jwt = claims
  if claims.sub ~= nil then req.ctx.consumer = tostring(claims.sub) end
  for claim, header in pairs(conf.claims_to_headers) do
    local v = claims[claim]
    if v ~= nil and type(v) ~= "table" then req.upstream_headers[header] = tostring(v) end
  end
end

return M
