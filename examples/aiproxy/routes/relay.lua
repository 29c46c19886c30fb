-- The OpenAI-compatible relay: POST /v1/chat/completions, /v1/completions,
-- /v1/embeddings; GET /v1/models, /v1/models/:model. The relay-auth policy
-- has put the caller's token in req.ctx.token.
--
-- One request: parse the body (400 without a model) -> the model must be
-- allowed for the token and served by an enabled channel (404) -> reserve
-- RPM/TPM (429) -> try channels (weighted by priority, down-weighted by
-- their recent errors; model_mapping applied; the channel key as Bearer),
-- retrying the next channel on connect errors, timeouts, 429 and 5xx, then
-- the model's fallbacks; 400/413/422 are the caller's fault and go back as
-- they are -> relay the answer with the requested model name put back (in
-- every SSE chunk too), usage taken from the answer (estimated when the
-- upstream sends none) -> correct the TPM reservation, count the spending,
-- push the log row (lib/accounting.lua).
local core = require "moongate.core"
local cjson = require "cjson.safe"
local json = require "moongate.json"
local catalog = require "lib.catalog"
local limits = require "lib.limits"
local usage = require "lib.usage"
local accounting = require "lib.accounting"
local openai = require "lib.openai"
local util = require "lib.util"

local byte, find, sub = string.byte, string.find, string.sub
local table_new = require "table.new"

local DEFAULT_COMPLETION = 512   -- tokens reserved for TPM when max_tokens is absent
local CONNECT_TIMEOUT = 10       -- seconds, per channel attempt
local NOT_RETRIED = { [400] = true, [413] = true, [422] = true }

local ENDPOINTS = {
  ["relay.chat"] = { path = "/v1/chat/completions", kind = "chat" },
  ["relay.completions"] = { path = "/v1/completions", kind = "completions" },
  ["relay.embeddings"] = { path = "/v1/embeddings", kind = "embeddings" },
}

local function now_ms() return math.floor(core.now() * 1000) end

-- The options of every channel call: one table, refilled (req:fetch reads
-- them before it waits), not one more table per relayed request.
local fetch_opts = { method = "POST", body = false, headers = false, timeout = false,
                     connect_timeout = CONNECT_TIMEOUT, stream = true }

-- Model names as JSON text, made once per name.
local json_string = util.memo(cjson.encode, 1000)

-- No channel tried yet (never written): the set of tried channels is made
-- only for a retry, not for every relayed request (a table and its hash
-- part, for the collector to sweep).
local NONE_TRIED = {}

-- The headers every request to a channel carries, made once per channel
-- object (a catalog snapshot's channels are rebuilt when it is reloaded).
local function channel_headers(ch)
  local h = ch.fetch_headers
  if not h then
    h = { Authorization = "Bearer " .. ch.key, ["Content-Type"] = "application/json" }
    ch.fetch_headers = h
  end
  return h
end

-- A channel's URL for an endpoint, made once per channel object, like its
-- headers (not a new string per relayed request).
local function channel_url(ch, path)
  local urls = ch.fetch_urls
  if not urls then urls = {}; ch.fetch_urls = urls end
  local u = urls[path]
  if not u then u = ch.base_url .. path; urls[path] = u end
  return u
end

local function no_model(model)
  return openai.error(404, "The model `" .. model .. "` does not exist or you do not have access to it.",
                      "model_not_found")
end

local function token_allows(tok, model)
  local models = tok.models
  if type(models) ~= "table" or #models == 0 then return true end
  for _, m in ipairs(models) do if m == model then return true end end
  return false
end

-- About 4 characters per token (no tokenizer here): used to reserve TPM and
-- when an upstream reports no usage.
local function text_tokens(s) return #s / 4 end

-- Tokens in a prompt part: a string, or a list of strings / {text=} parts.
local function part_tokens(v)
  if type(v) == "string" then return text_tokens(v) end
  local n = 0
  if type(v) == "table" then
    for _, x in ipairs(v) do
      if type(x) == "string" then n = n + text_tokens(x)
      elseif type(x) == "table" and type(x.text) == "string" then n = n + text_tokens(x.text)
      else n = n + 1 end
    end
  end
  return n
end

local function prompt_estimate(body, kind)
  local n = 0
  if kind == "chat" then
    if type(body.messages) == "table" then
      for _, m in ipairs(body.messages) do
        if type(m) == "table" then n = n + part_tokens(m.content) end
      end
    end
  elseif kind == "completions" then
    n = part_tokens(body.prompt)
  else
    n = part_tokens(body.input)
  end
  return math.max(1, math.ceil(n))
end

-- The request body decoded (once, on demand): only token estimates need it.
local function decoded_body(st)
  local b = st.body
  if b == nil then
    b = cjson.decode(st.raw)
    if type(b) ~= "table" then b = {} end
    st.body = b
  end
  return b
end

-- The prompt's estimated tokens (made once, on demand).
local function est_prompt(st)
  local n = st.est_prompt
  if not n then
    n = prompt_estimate(decoded_body(st), st.kind)
    st.est_prompt = n
  end
  return n
end

-- A JSON string member's value (its JSON text, as json.member gives it).
local function string_member(j)
  if not j or byte(j, 1) ~= 34 then return nil end      -- absent, or not a string
  if not find(j, "\\", 1, true) then return sub(j, 2, -2) end
  return cjson.decode(j)
end

local function completion_reserve(body, kind)
  if kind == "embeddings" then return 0 end
  local m = body.max_tokens or body.max_completion_tokens
  if type(m) == "number" and m > 0 then return math.ceil(m) end
  return DEFAULT_COMPLETION
end

-- A token count as an upstream reported it, if it is one: a whole number
-- that PostgreSQL's integer columns hold. Anything else (negative, 1e300,
-- a string) is ignored and the usage estimated: one such row would fail its
-- log batch, and the counts drive spending and TPM.
local function token_count(v)
  if type(v) == "number" and v >= 0 and v < 2147483648 and v == math.floor(v) then return v end
end

-- The generated text's length in a non-streamed answer (for an estimate).
local function answer_text_len(obj)
  local n = 0
  if type(obj) == "table" and type(obj.choices) == "table" then
    for _, c in ipairs(obj.choices) do
      local text = type(c) == "table" and (type(c.message) == "table" and c.message.content or c.text)
      if type(text) == "string" then n = n + #text end
    end
  end
  return n
end

-- The upstream's error message, from an OpenAI-shaped body or its text.
local function upstream_message(status, text)
  local obj = cjson.decode(text or "")
  if type(obj) == "table" and type(obj.error) == "table" and type(obj.error.message) == "string" then
    return obj.error.message
  end
  if type(obj) == "table" and type(obj.detail) == "string" then return obj.detail end
  return "upstream answered " .. status
end

-- The usage chunk of a stream whose upstream sent none (estimated).
local function synth_usage(st, len)
  local p, c = est_prompt(st), math.ceil(len / 4)
  return json.encode({ id = "chatcmpl-" .. st.req_id, object = "chat.completion.chunk",
                       created = math.floor(core.now()), model = st.model, choices = json.empty_array,
                       usage = { prompt_tokens = p, completion_tokens = c, total_tokens = p + c } })
end

-- Streams an SSE answer to the client. Returns the usage seen (or nil), the
-- completion text length, and how it ended: "done", "client", or "upstream".
local function relay_sse(req, res, st)
  local model_json = cjson.encode(st.model)
  local buf, usage_seen, text_len = "", nil, 0
  local first = true
  req:stream(200, { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache",
                    ["X-Accel-Buffering"] = "no" })
  local function event(ev)
    local payload = ev:match("^data: ?(.*)$")
    if not payload or payload:find("\n", 1, true) then return ev .. "\n\n" end   -- comments, event: lines
    if payload == "[DONE]" then
      if not usage_seen and st.client_usage then
        return "data: " .. synth_usage(st, text_len) .. "\n\ndata: [DONE]\n\n"
      end
      return "data: [DONE]\n\n"
    end
    local obj = cjson.decode(payload)
    if type(obj) ~= "table" then return ev .. "\n\n" end
    local choices = obj.choices
    if type(choices) == "table" then
      local c = choices[1]
      if type(c) == "table" then
        local piece = type(c.delta) == "table" and c.delta.content or c.text
        if type(piece) == "string" then text_len = text_len + #piece end
      end
    end
    if type(obj.usage) == "table" then
      usage_seen = obj.usage
      if not st.client_usage and (type(choices) ~= "table" or next(choices) == nil) then
        return nil                                   -- the usage chunk we asked for, not the client
      end
    end
    if obj.model ~= nil and obj.model ~= st.model then
      payload = json.set_member(payload, "model", model_json) or payload
    end
    return "data: " .. payload .. "\n\n"
  end
  while true do
    local chunk, kind = res:read()
    if chunk == false then break end
    if chunk == nil then
      return usage_seen, text_len, kind == "closed" and "client" or "upstream"
    end
    if chunk:find("\r", 1, true) then chunk = chunk:gsub("\r\n", "\n") end
    buf = buf .. chunk
    local out, pos = {}, 1
    while true do
      local s, e = buf:find("\n\n", pos, true)
      if not s then break end
      local line = event(buf:sub(pos, s - 1))
      if line then out[#out + 1] = line end
      pos = e + 1
    end
    buf = buf:sub(pos)
    if #out > 0 then
      if first then st.ttfb = now_ms() - st.t0; first = false end
      if not req:write(table.concat(out)) then return usage_seen, text_len, "client" end
    end
  end
  if buf ~= "" and not req:write(buf) then return usage_seen, text_len, "client" end
  return usage_seen, text_len, "done"
end

-- A non-streamed answer as text: it was held on the C side until now.
local function answer_text(st)
  local a = st.answer
  if type(a) ~= "string" then
    a = a:read_all() or ""
    st.answer = a
  end
  return a
end

-- The request's log row is finished and queued (one per relayed request);
-- it is packed as it is pushed, so nothing may change it afterwards.
-- These helpers take the request's state table `st` rather than being
-- closures: a closure made per request keeps LuaJIT from compiling the relay.
local function log(st, code, content)
  local row = st.row
  row.code, row.content = code, content or ""
  row.latency_ms = now_ms() - st.t0
  row.ttfb_ms = st.ttfb
  accounting.push(row)
end

local function refuse(st, status, message, code, headers)
  log(st, status, message)
  return openai.error(status, message, code, headers)
end

-- The client left before any answer: nothing to send, the row says why.
local function client_left(st, reservation)
  st.row.client_aborted = true
  limits.correct(reservation, 0)
  log(st, 499, "client closed the request")
  return 499, "client closed the request"
end

local function relay_with(req, ep, st)
  local tok = req.ctx.token
  -- The clock read once for the request's synchronous start: the row's
  -- time, the catalog's refresh check, the limits' window, the first pick
  -- (each read is a C call; ttfb and latency read it again).
  local now = core.now()
  local t0 = math.floor(now * 1000)
  local row = accounting.row(req, tok, ep.path, t0)
  local raw = req:body()
  st.t0, st.ttfb, st.row, st.req_id, st.raw, st.kind = t0, 0, row, req.id, raw, ep.kind

  -- The members the relay reads, found by a scan that also checks that the
  -- body is one JSON object (as cjson takes it); the whole body is decoded
  -- only for a token estimate (TPM, or an answer without usage).
  local model_j, stream_j, so_j = json.member(raw, "model", "stream", "stream_options")
  if model_j == nil then
    return refuse(st, 400, "We could not parse the JSON body of your request. The OpenAI API expects a JSON object.",
                  "invalid_json")
  end
  local model = string_member(model_j)
  if type(model) ~= "string" or model == "" then
    return refuse(st, 400, "you must provide a model parameter", "missing_model")
  end
  row.model = model
  local snap, err = catalog.get(now)
  if not snap then
    core.log("error", "aiproxy: no channel list: " .. tostring(err))
    return refuse(st, 503, "The service is temporarily unavailable (database).", "database_unavailable")
  end
  if not token_allows(tok, model) or not catalog.serves(snap, model) then
    local s, b, h = no_model(model)
    log(st, s, b.error.message)
    return s, b, h
  end
  local cfg = catalog.model_config(snap, model)
  local stream = stream_j == "true" and ep.kind ~= "embeddings"
  row.stream = stream
  local reserve = 0                              -- tokens: only a TPM limit counts them
  if cfg.tpm > 0 then reserve = est_prompt(st) + completion_reserve(decoded_body(st), ep.kind) end
  local reservation, limit_headers, which = limits.acquire(tok.group, model, cfg, reserve, now)
  if not reservation then
    if which == "unavailable" then
      return refuse(st, 503, "The rate limiter is unavailable; try again later.", "rate_limiter_unavailable")
    end
    local what = which == "rpm" and "requests per minute (RPM)" or "tokens per minute (TPM)"
    return refuse(st, 429, string.format("Rate limit reached for %s in group %s on %s. Please try again in %ss.",
                                     model, tok.group, what, limit_headers["Retry-After"]),
                  "rate_limit_exceeded", limit_headers)
  end

  -- The body sent upstream: the client's bytes, only `model` (per channel)
  -- and, when streaming, stream_options.include_usage changed.
  local base = raw
  if stream then
    local so = so_j and cjson.decode(so_j)
    if type(so) ~= "table" then so = {} end
    st.client_usage = so.include_usage == true
    so.include_usage = true
    base = json.set_member(raw, "stream_options", cjson.encode(so)) or raw
  end
  st.model = model

  -- The model, then its fallbacks.
  local fallbacks = cfg.fallbacks
  local attempts, last = 0, nil
  local usage_obj, text_len, ended
  for i = 0, #fallbacks do
    local m = i == 0 and model or fallbacks[i]
    if i > 0 and m == model then goto next_model end
    local mcfg = m == model and cfg or catalog.model_config(snap, m)
    local tried, ch = NONE_TRIED, nil
    for _ = 1, 1 + mcfg.retry_times do
      if ch then                                 -- a retry: leave out the channels tried
        if tried == NONE_TRIED then tried = {} end
        tried[ch.id] = true
      end
      ch = catalog.pick(snap, m, tried, attempts == 0 and now or nil)
      if not ch then break end
      attempts = attempts + 1
      local upstream_model = ch.model_mapping[m] or m
      row.channel_id, row.upstream_model = ch.id, upstream_model
      local model_json = json_string(upstream_model)
      local upstream_body = base
      if not json.member_is(base, "model", model_json) then
        upstream_body = json.set_member(base, "model", model_json) or base
      end
      local o = fetch_opts
      o.body, o.headers, o.timeout = upstream_body, channel_headers(ch), mcfg.timeout
      local res, kind, msg = req:fetch(channel_url(ch, ep.path), o)
      o.body = false                             -- nothing kept alive by the shared table
      if not res then
        if kind == "closed" then return client_left(st, reservation) end
        catalog.record(ch.id, false)
        last = { status = kind == "timeout" and 504 or 502,
                 message = string.format("upstream %s (channel %d): %s", kind, ch.id, msg or kind),
                 code = kind == "timeout" and "upstream_timeout" or "upstream_unreachable" }
        core.log("warn", string.format("aiproxy: channel %d (%s) failed for %s: %s %s",
                                       ch.id, ch.name, m, kind, msg or ""))
      elseif res.status ~= 200 then
        local text = res:read_all() or ""
        local message = upstream_message(res.status, text)
        if NOT_RETRIED[res.status] then
          catalog.record(ch.id, true)
          row.retries = attempts - 1
          log(st, res.status, message)
          limits.correct(reservation, 0)
          return { status = res.status, raw = true, body = text,
                   headers = { ["Content-Type"] = res.headers["content-type"] or "application/json" } }
        end
        catalog.record(ch.id, false)
        local s = res.status
        last = { status = (s == 429 or s >= 500) and s or 502, message = message, code = "upstream_error",
                 retry_after = res.headers["retry-after"] }
        if s == 401 or s == 403 then     -- about the channel's key: not the caller's business
          last.detail = message
          last.message = "The upstream provider refused the channel's credentials (status " .. s .. ")."
        end
        core.log("warn", string.format("aiproxy: channel %d (%s) answered %d for %s: %s",
                                       ch.id, ch.name, s, m, message))
      else
        row.retries = attempts - 1
        if stream and (res.headers["content-type"] or ""):find("text/event-stream", 1, true) then
          catalog.record(ch.id, true)
          usage_obj, text_len, ended = relay_sse(req, res, st)
          res:close()
          break
        end
        -- Only `usage` and `model` of the answer matter here: found by a scan
        -- that also checks the answer is a JSON object, not by decoding it.
        -- The answer stays on the C side and goes to the client from there.
        local usage_json, model_json, rmsg = res:json_member("usage", "model")
        if usage_json ~= nil then
          catalog.record(ch.id, true)
          st.ttfb = now_ms() - t0
          usage_obj, ended = usage_json, "done"
          st.answer = res                          -- held: sent from C, unless rewritten
          if model_json and model_json ~= '"' .. model .. '"' and cjson.decode(model_json) ~= model then
            local text = answer_text(st)
            st.answer = json.set_member(text, "model", cjson.encode(model)) or text
          end
          break
        end
        local rkind = model_json                 -- failed: nil, kind, message
        if rkind == "closed" then return client_left(st, reservation) end
        res:close()
        catalog.record(ch.id, false)
        last = { status = 502, code = "upstream_invalid_response",
                 message = rkind == "invalid" and "invalid response from the upstream (not a JSON object)"
                           or ("upstream broke off: " .. tostring(rkind) .. " " .. tostring(rmsg)) }
      end
    end
    if ended then break end
    ::next_model::
  end

  if not ended then
    limits.correct(reservation, 0)
    row.retries = math.max(0, attempts - 1)
    if not last then
      local s, b = openai.error(503, "No available channel for model " .. model .. ".", "no_channel")
      log(st, 503, b.error.message)
      return s, b
    end
    log(st, last.status, last.detail or last.message)
    return openai.error(last.status, last.message, last.code,
                        last.retry_after and { ["Retry-After"] = last.retry_after } or nil)
  end

  -- Usage and spending.
  local prompt, completion
  if type(usage_obj) == "table" then                 -- from a stream's decoded chunk
    prompt = token_count(usage_obj.prompt_tokens)
    completion = usage_obj.completion_tokens == nil and 0 or token_count(usage_obj.completion_tokens)
  elseif usage_obj then                               -- an answer's `usage`, as JSON text
    local p, c = json.member(usage_obj, "prompt_tokens", "completion_tokens")
    if p ~= nil then
      prompt = token_count(tonumber(p))
      completion = c == false and 0 or token_count(tonumber(c))
    end
  end
  if not (prompt and completion) then
    row.usage_estimated = true
    prompt = est_prompt(st)
    completion = math.ceil((text_len or answer_text_len(st.answer and cjson.decode(answer_text(st)))) / 4)
  end
  row.prompt_tokens, row.completion_tokens, row.total_tokens = prompt, completion, prompt + completion
  row.amount = (prompt * cfg.input_price + completion * cfg.output_price) / 1000
  limits.correct(reservation, prompt + completion)
  usage.add(tok, row.amount)
  if ended == "client" then
    row.client_aborted = true
    log(st, 499, "client closed the stream")
  elseif ended == "upstream" then
    log(st, 502, "upstream broke off mid-stream")
    req:abort()
  else
    log(st, 200)
  end
  if st.answer == nil then return end             -- streamed: already sent
  -- Room for the request id's header too: a table grown from one key to
  -- two is rehashed (one more allocation per relayed request).
  local headers = table_new(0, 2)
  headers["Content-Type"] = "application/json"
  return 200, st.answer, headers
end

-- A request's state table is reused by the next request once this one is
-- answered, like the log rows (accounting.lua): not a table and its hash
-- part for the collector per relayed request. Nothing keeps `st` after
-- relay_with returns; a request that raised leaves its table to the
-- collector. relay() clears every field relay_with sets: a field added
-- there must be added to the clearing below.
local take_st, give_st = util.table_pool(11, 256)

local function relay(req, ep)
  local st = take_st()
  local status, body, headers = relay_with(req, ep, st)
  st.t0, st.ttfb, st.row, st.req_id, st.raw, st.kind = nil, nil, nil, nil, nil, nil
  st.model, st.answer, st.body, st.est_prompt, st.client_usage = nil, nil, nil, nil, nil
  give_st(st)
  return status, body, headers
end

local H = {}

function H.models(req)
  local tok = req.ctx.token
  local snap, err = catalog.get()
  if not snap then
    core.log("error", "aiproxy: no channel list: " .. tostring(err))
    return openai.error(503, "The service is temporarily unavailable (database).", "database_unavailable")
  end
  local data = {}
  for _, m in ipairs(catalog.models(snap)) do
    if token_allows(tok, m) then
      data[#data + 1] = { id = m, object = "model", created = 0, owned_by = "aiproxy" }
    end
  end
  return 200, json.encode({ object = "list", data = json.array(data) }), { ["Content-Type"] = "application/json" }
end

function H.model(req)
  local tok, m = req.ctx.token, req.params.model
  local snap = catalog.get()
  if not snap or not token_allows(tok, m) or not catalog.serves(snap, m) then return no_model(m) end
  return 200, { id = m, object = "model", created = 0, owned_by = "aiproxy" }
end

return function(req)
  local ep = ENDPOINTS[req.route]
  if ep then return relay(req, ep) end
  return H[req.route:match("%.(%w+)$")](req)
end
