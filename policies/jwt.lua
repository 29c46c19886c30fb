-- jwt: a bearer JSON Web Token signed with HS256 identifies the user (the
-- "BFF verifies users and forwards" role of the AI proxy's front layer).
--
--   { "jwt", secret_env = "JWT_SECRET", issuers = { "https://auth.example.com" },
--     audiences = { "aiproxy" }, leeway = "30s",
--     claims_to_headers = { sub = "X-User-Id", group = "X-Group" } }
--
-- Settings:
--   secret / secret_env   the HMAC key, or the environment variable holding it
--   header ("Authorization", scheme "Bearer"), query (also ?<query>=<token>)
--   algorithms ({ "HS256" })   RS256 is not available yet (no RSA in the
--                         runtime's dependencies): asking for it is a load error
--   leeway ("0s")         clock skew allowed on exp and nbf
--   issuers, audiences    if given, `iss` / `aud` must be one of them
--   claims_to_headers     claim = header: sent upstream (req.upstream_headers)
-- The verified claims are req.ctx.jwt (and req.ctx.consumer = sub).
-- Failures are 401 with a message that says which check failed: "missing
-- token", "malformed token", "unsupported algorithm", "bad signature",
-- "token expired", "token not yet valid", "issuer not allowed", "audience
-- not allowed" -- never the key or the expected values.
local core = require "moongate.core"
local jwt = require "moongate.jwt"

local M = {
  schema = {
    secret = { type = "string" },
    secret_env = { type = "string" },
    header = { type = "string", default = "Authorization" },
    scheme = { type = "string", default = "Bearer" },
    query = { type = "string" },
    algorithms = { type = "array", items = "string", default = { "HS256" } },
    leeway = { type = "duration", default = "0s" },
    issuers = { type = "array", items = "string" },
    audiences = { type = "array", items = "string" },
    claims_to_headers = { type = "table", default = {} },
  },
}

function M.init(conf)
  for i, a in ipairs(conf.algorithms) do
    if a ~= "HS256" then
      error(string.format("algorithms[%d]: %q is not supported (only HS256 for now)", i, a), 0)
    end
  end
  if conf.secret_env then conf.secret = os.getenv(conf.secret_env) end
  if not conf.secret or conf.secret == "" then
    error(conf.secret_env and ("secret_env: " .. conf.secret_env .. " is not set") or "secret: required", 0)
  end
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
