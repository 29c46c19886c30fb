-- admin-key: one operator key, from an environment variable (the AI proxy's
-- admin rule). Accepts `Authorization: <key>` and `Authorization: Bearer <key>`;
-- compares in constant time (every byte of the longer string is looked at, no
-- early exit). Missing or wrong key -> 401. An unset or empty variable refuses
-- every request.
--   policies = { { "admin-key", env = "ADMIN_KEY" } }
local bit = require "bit"
local bxor, bor, byte = bit.bxor, bit.bor, string.byte

local function equal(a, b)
  local la, lb = #a, #b
  local n = la > lb and la or lb
  local diff = bxor(la, lb)
  for i = 1, n do
    diff = bor(diff, bxor(byte(a, i) or 0, byte(b, i) or 0))
  end
  return diff == 0
end

return {
  schema = { env = { type = "string", default = "ADMIN_KEY" } },
  init = function(conf)
    conf.key = os.getenv(conf.env) or ""
  end,
  access = function(conf, req)
    local h = req.headers["authorization"]
    if h == nil or h == "" then return 401, "missing admin key (Authorization header)" end
    local presented = h:match("^[Bb]earer%s+(.-)%s*$") or h:match("^%s*(.-)%s*$")
    if conf.key == "" or not equal(presented, conf.key) then
      return 401, "invalid admin key"
    end
  end,
}
