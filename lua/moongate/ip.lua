-- IP addresses and CIDR networks, IPv4 and IPv6 (IPv4 as v4-mapped IPv6).
--
--   local ip = require "moongate.ip"
--   local net = ip.parse_cidr("10.0.0.0/8")   -- raises on a bad CIDR (misuse)
--   ip.matches(net, ip.parse("10.1.2.3"))     -- true
--   ip.in_list({ net1, net2 }, ip.parse(req.remote_addr))
-- parse() returns 16 bytes, or nil for a string that is not an address.
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
  where = where or "cidr"
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

return { parse = parse_ip, parse_cidr = parse_cidr, matches = matches, in_list = in_list }
