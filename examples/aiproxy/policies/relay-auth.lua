-- relay-auth: the relay's API-key check, in the reference AI Proxy's order:
--   no key / unknown / disabled / expired token, quota used up  -> 401
--   client IP outside the token's subnets, group disabled        -> 403
-- The key: `Authorization: Bearer sk-<key>` (or without "sk-"), else
-- `X-Api-Key`. The token (cached: lib/tokens.lua) becomes req.ctx.token.
-- Answers use OpenAI's error shape.
local core = require "moongate.core"
local ip = require "moongate.ip"
local tokens = require "lib.tokens"
local usage = require "lib.usage"
local openai = require "lib.openai"

-- Parsed subnets by the token's subnets list: lib/tokens.lua hands out the
-- same decoded table while the cached token is unchanged (weak keys: they
-- go when the token does).
local parsed = setmetatable({}, { __mode = "k" })

local function allowed_ip(tok, addr)
  local subnets = tok.subnets
  if type(subnets) ~= "table" or #subnets == 0 then return true end
  local nets = parsed[subnets]
  if not nets then
    nets = {}
    for i, s in ipairs(subnets) do nets[i] = ip.parse_cidr(s) end
    parsed[subnets] = nets
  end
  local bytes = ip.parse(addr)
  return bytes ~= nil and ip.in_list(nets, bytes)
end

return {
  schema = {},
  access = function(conf, req)
    local key = req:credential("authorization", "Bearer") or req.headers["x-api-key"]
    if not key or key == "" then
      return openai.error(401, "You didn't provide an API key. You need to provide your API key in an " ..
                          "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                          "missing_api_key")
    end
    local tok, source, state = tokens.lookup(key)
    if not tok then
      if source then
        core.log("error", "aiproxy: token lookup failed: " .. tostring(source))
        return openai.error(503, "The service is temporarily unavailable (database).", "database_unavailable")
      end
      return openai.error(401, "Incorrect API key provided: " .. openai.redact(key) .. ".", "invalid_api_key")
    end
    if tok.status ~= 1 then return openai.error(401, "The API key is disabled.", "token_disabled") end
    if tok.expired_at and tok.expired_at > 0 and tok.expired_at < core.now() * 1000 then
      return openai.error(401, "The API key has expired.", "token_expired")
    end
    if tok.quota and tok.quota > 0 and usage.token_used(tok) >= tok.quota then
      return openai.error(401, "The API key has used up its quota.", "insufficient_quota")
    end
    if not allowed_ip(tok, req.remote_addr) then
      return openai.error(403, "Your IP address is not allowed to use this API key.", "ip_not_allowed")
    end
    if tok.group_status ~= 1 then
      return openai.error(403, "The group of this API key is disabled.", "group_disabled")
    end
    req.ctx.token = tok
  end,
}
