-- ip-restriction: allow and deny lists of IPv4/IPv6 addresses and CIDRs.
--
--   { "ip-restriction", allow = { "10.0.0.0/8", "127.0.0.1", "::1" } }
--   { "ip-restriction", deny = { "203.0.113.0/24" } }
--   { "ip-restriction", allow = { "10.0.0.0/8" }, trusted_proxies = { "127.0.0.1" } }
--
-- Settings:
--   allow            if given, only these may pass
--   deny             these never pass (checked first)
--   trusted_proxies  when the connection comes from one of these, the client is
--                    the right-most X-Forwarded-For address that is not itself a
--                    trusted proxy (what nginx's real_ip_recursive does)
--   status (403), message ("forbidden")
-- The client address used is req.ctx.client_ip for later policies.
local ipaddr = require "moongate.ip"
local parse_ip, parse_cidr, in_list = ipaddr.parse, ipaddr.parse_cidr, ipaddr.in_list

local function client_ip(conf, req)
  local peer = req.remote_addr
  if #conf.trusted == 0 then return peer end
  local bytes = parse_ip(peer)
  if not bytes or not in_list(conf.trusted, bytes) then return peer end
  local xff = req.headers["x-forwarded-for"]
  if not xff then return peer end
  local hops = {}
  for h in xff:gmatch("[^,%s]+") do hops[#hops + 1] = h end
  for i = #hops, 1, -1 do
    local b = parse_ip(hops[i])
    if not b then return hops[i] end                    -- garbage: judged as is (no match)
    if not in_list(conf.trusted, b) then return hops[i] end
  end
  return hops[1] or peer
end

return {
  schema = {
    allow = { type = "array", items = "string" },
    deny = { type = "array", items = "string" },
    trusted_proxies = { type = "array", items = "string", default = {} },
    status = { type = "integer", default = 403, min = 400, max = 599 },
    message = { type = "string", default = "forbidden" },
  },

  init = function(conf)
    if not conf.allow and not conf.deny then error("give allow, deny or both", 0) end
    local function compile(list, name)
      local out = {}
      for i, s in ipairs(list or {}) do out[i] = parse_cidr(s, string.format("%s[%d]", name, i)) end
      return out
    end
    conf.allow_nets = conf.allow and compile(conf.allow, "allow")
    conf.deny_nets = compile(conf.deny, "deny")
    conf.trusted = compile(conf.trusted_proxies, "trusted_proxies")
  end,

  access = function(conf, req)
    local ip = client_ip(conf, req)
    req.ctx.client_ip = ip
    local bytes = parse_ip(ip)
    if not bytes then return conf.status, conf.message end
    if in_list(conf.deny_nets, bytes) then return conf.status, conf.message end
    if conf.allow_nets and not in_list(conf.allow_nets, bytes) then return conf.status, conf.message end
  end,
}
