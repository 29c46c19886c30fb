-- request-id: every request gets an ID that follows it everywhere.
--
-- The client's X-Request-ID is kept when it looks sane (1-200 characters,
-- no control characters); otherwise the ID moongate generated is used. The ID
-- goes into the access log, upstream (req.upstream_headers) and back to the
-- client in the response (replacing an upstream's own).
--
--   policies = { "request-id" }                       -- defaults
--   policies = { { "request-id", header = "X-Correlation-ID" } }
local core = require "moongate.core"

local function adopt(conf, req)
  if req.ctx.request_id_done then return end
  req.ctx.request_id_done = true
  if conf.trust_incoming then
    local incoming = req:header(conf.header)      -- (req.headers would make its proxy table)
    if incoming and #incoming <= 200 and not incoming:find("[%c]") then
      req.id = incoming
      core.set_id(req._cx, req._sn, incoming)
    end
  end
  -- A proxied request carries X-Request-ID: <req.id> already; another
  -- header name has to be asked for.
  if not conf.default_header then req.upstream_headers[conf.header] = req.id end
end

return {
  schema = {
    header = { type = "string", default = "X-Request-ID" },
    trust_incoming = { type = "boolean", default = true },
  },
  init = function(conf)
    conf.default_header = conf.header:lower() == "x-request-id"
  end,
  access = adopt,
  -- req:set_response_header rather than res.headers: a proxied answer's
  -- headers are then relayed from C, never read into a table.
  response = function(conf, req)
    adopt(conf, req)                  -- also for answers that skipped access (404)
    req:set_response_header(conf.header, req.id)
  end,
}
