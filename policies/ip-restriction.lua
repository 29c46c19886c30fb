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
local bit = require "bit"

-- Parses an IPv4 or IPv6 address into a list of 16 bytes; nil if invalid.
local function parse_ip(s)
  if type(s) ~= "string" then return nil end
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    local out = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff }   -- v4-mapped
    for _, p in ipairs({ a, b, c, d }) do
      local n = tonumber(p)
      if n > 255 or (#p > 1 and p:sub(1, 1) == "0") then return nil end
      out[#out + 1] = n
    end
    return out
  end
  if not s:find(":", 1, true) then return nil end
  local v4tail = s:match(":(%d+%.%d+%.%d+%.%d+)$")
  local tail = {}
  if v4tail then
    local t = parse_ip(v4tail)
    if not t then return nil end
    tail = { t[13], t[14], t[15], t[16] }
    s = s:sub(1, #s - #v4tail) .. "0:0"                  -- placeholder groups
  end
  local head, rest = s:match("^(.-)::(.*)$")
  local groups_l, groups_r = {}, {}
  local function split(str, into)
    if str == "" then return true end
    for g in (str .. ":"):gmatch("([^:]*):") do
      if not g:match("^%x%x?%x?%x?$") then return false end
      into[#into + 1] = tonumber(g, 16)
    end
    return true
  end
  if head then
    if not split(head, groups_l) or not split(rest, groups_r) then return nil end
    if #groups_l + #groups_r > 7 then return nil end
  else
    if not split(s, groups_l) or #groups_l ~= 8 then return nil end
  end
  local groups = {}
  for _, g in ipairs(groups_l) do groups[#groups + 1] = g end
  for _ = 1, 8 - #groups_l - #groups_r do groups[#groups + 1] = 0 end
  for _, g in ipairs(groups_r) do groups[#groups + 1] = g end
  local out = {}
  for _, g in ipairs(groups) do
    out[#out + 1] = bit.rshift(g, 8)
    out[#out + 1] = bit.band(g, 0xff)
  end
  if v4tail then for i = 1, 4 do out[12 + i] = tail[i] end end
  return out
end

-- "10.0.0.0/8" -> { bytes, prefix bits } (IPv4 prefixes count from the mapped form).
local function parse_cidr(s, where)
  local addr, len = s:match("^([^/]+)/(%d+)$")
  addr = addr or s
  local bytes = parse_ip(addr)
  if not bytes then error(string.format("%s: not an IP address or CIDR: %q", where, s), 0) end
  local v4 = addr:find(".", 1, true) and not addr:find(":", 1, true)
  local max = v4 and 32 or 128
  local bits = len and tonumber(len) or max
  if bits > max then error(string.format("%s: prefix longer than %d: %q", where, max, s), 0) end
  return { bytes = bytes, bits = v4 and bits + 96 or bits }
end

local function matches(net, ip)
  local bits = net.bits
  for i = 1, 16 do
    if bits <= 0 then return true end
    local take = bits >= 8 and 8 or bits
    local mask = bit.band(bit.lshift(0xff, 8 - take), 0xff)
    if bit.band(net.bytes[i], mask) ~= bit.band(ip[i], mask) then return false end
    bits = bits - take
  end
  return true
end

local function in_list(list, ip)
  for _, net in ipairs(list) do if matches(net, ip) then return true end end
  return false
end

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
