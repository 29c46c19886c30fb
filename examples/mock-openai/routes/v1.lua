-- The OpenAI-compatible endpoints of the mock provider: /v1/chat/completions,
-- /v1/completions, /v1/embeddings, /v1/models[/:model]. See ../README.md.
local cjson = require "cjson.safe"
local mock = require "lib.mock"

local encode, fail = mock.encode, mock.error
local null = cjson.null

-- ---------------------------------------------------------------- faults

local function fault_answer(req, fault, headers)
  if fault == "bad-key" then
    return fail(401, "Incorrect API key provided: bad-key. You can find your API key at "
                .. "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                "invalid_api_key", nil, headers)
  elseif fault == "500" then
    return fail(500, "The server had an error while processing your request. Sorry about that! (mock fault 500)",
                "server_error", nil, nil, headers)
  elseif fault == "429" then
    headers["Retry-After"] = "1"
    return fail(429, "Rate limit reached for requests (mock fault 429). Please try again in 1s.",
                "requests", "rate_limit_exceeded", nil, headers)
  elseif fault == "400" then
    return fail(400, "This model's maximum context length is 128000 tokens. However, your messages "
                .. "resulted in 200000 tokens. Please reduce the length of the messages. (mock fault 400)",
                "invalid_request_error", "context_length_exceeded", "messages", headers)
  elseif fault == "garbage" then
    headers["Content-Type"] = "text/html"
    return 200, "<html><body><h1>502 Bad Gateway</h1> mock fault: garbage, not JSON {</body></html>", headers
  end
end

-- The fault for this request: the body's "mock.fault", else the key's
-- "mock-fault-<fault>", else the global one (which is then used up by one).
-- Returns fault (or nil), or nil, message for an unknown name.
local function pick_fault(ctl, key)
  local f = ctl.fault
  if f ~= nil and f ~= null then
    if type(f) ~= "string" or not mock.FAULTS[f] then
      return nil, "mock.fault: unknown fault " .. encode(f)
    end
    return f
  end
  local kf = key and key:match("^mock%-fault%-(.+)$")
  if kf then
    if not mock.FAULTS[kf] then return nil, "API key names an unknown mock fault " .. encode(kf) end
    return kf
  end
  local g = mock.global
  if g.fault then
    local name = g.fault
    if g.remaining then
      g.remaining = g.remaining - 1
      if g.remaining <= 0 then g.fault, g.remaining = nil, nil end
    end
    return name
  end
end

-- "mock": {"chunks", "delay_ms", "fault"}: checked, defaults filled in.
local function controls(body)
  local ctl = type(body) == "table" and body.mock or nil
  if ctl == nil or ctl == null then ctl = {} end
  if type(ctl) ~= "table" then return nil, "mock must be an object" end
  local out = { fault = ctl.fault, chunks = 5, delay = 0 }
  if ctl.chunks ~= nil and ctl.chunks ~= null then
    local n = ctl.chunks
    if type(n) ~= "number" or n % 1 ~= 0 or n < 0 or n > mock.MAX_CHUNKS then
      return nil, "mock.chunks must be an integer from 0 to " .. mock.MAX_CHUNKS
    end
    out.chunks = n
  end
  if ctl.delay_ms ~= nil and ctl.delay_ms ~= null then
    local d = ctl.delay_ms
    if type(d) ~= "number" or d < 0 or d > 600000 then
      return nil, "mock.delay_ms must be a number of milliseconds from 0 to 600000"
    end
    out.delay = d / 1000
  end
  return out
end

-- ---------------------------------------------------------------- answers

local JSON = "application/json"

local function usage(prompt, completion, fault)
  if fault == "bad-usage" then      -- counts no integer column holds
    return { prompt_tokens = -5, completion_tokens = 1e300, total_tokens = 1e300 }
  end
  return { prompt_tokens = prompt, completion_tokens = completion, total_tokens = prompt + completion }
end

-- Non-streamed answer; "drop" sends half of it, then closes the connection.
local function complete(req, obj, headers, fault)
  local text = encode(obj)
  headers["Content-Type"] = JSON
  if fault == "drop" then
    req:stream(200, headers)
    req:write(text:sub(1, math.floor(#text / 2)))
    req:sleep(0.05)
    req:abort()
    return
  end
  return 200, text, headers
end

-- SSE: events is a list of JSON texts (without "data: "), then [DONE];
-- content_events[i] is true for the word chunks, content_events.last is the
-- index of the last one. drop: the connection is cut after the second word
-- chunk (or before the finish chunk when there are fewer words).
local function stream(req, events, content_events, headers, fault, delay)
  local st = mock.stats
  st.streams_started = st.streams_started + 1
  headers["Content-Type"] = "text/event-stream"
  headers["Cache-Control"] = "no-cache"
  req:stream(200, headers)
  events[#events + 1] = "[DONE]"
  local content_sent = 0
  for i, ev in ipairs(events) do
    if i > 1 and delay > 0 then req:sleep(delay) end
    if fault == "drop" and (content_sent >= 2 or i > content_events.last) then
      req:sleep(0.05)
      req:abort()
      st.streams_dropped = st.streams_dropped + 1
      return
    end
    if not req:write("data: " .. ev .. "\n\n") then
      st.streams_aborted = st.streams_aborted + 1
      return
    end
    if content_events[i] then content_sent = content_sent + 1 end
  end
  st.streams_completed = st.streams_completed + 1
end

local function stream_flags(body)
  local so = body.stream_options
  return body.stream == true, type(so) == "table" and so.include_usage == true
end

local H = {}

function H.chat(req, body, ctl, fault, headers, model)
  local messages = body.messages
  if type(messages) ~= "table" or messages[1] == nil then
    return fail(400, "'messages' must be a non-empty array of messages.", "invalid_request_error",
                nil, "messages", headers)
  end
  local prompt = mock.chat_prompt_tokens(messages)
  local words = mock.words(ctl.chunks)
  local n = mock.stats.requests
  local id, created = "chatcmpl-mock-" .. n, os.time()
  local is_stream, include_usage = stream_flags(body)
  if not is_stream then
    local u = fault ~= "no-usage" and usage(prompt, #words, fault) or nil
    return complete(req, {
      id = id, object = "chat.completion", created = created, model = model,
      system_fingerprint = "fp_mock",
      choices = { { index = 0, message = { role = "assistant", content = table.concat(words, " "),
                                           refusal = null },
                    logprobs = null, finish_reason = "stop" } },
      usage = u,
    }, headers, fault)
  end
  local u_field = include_usage and null or nil       -- OpenAI: "usage": null on every chunk
  local function chunk(delta, finish)
    return encode({ id = id, object = "chat.completion.chunk", created = created, model = model,
                    system_fingerprint = "fp_mock", usage = u_field,
                    choices = { { index = 0, delta = delta, logprobs = null,
                                  finish_reason = finish or null } } })
  end
  local events, content = { chunk({ role = "assistant", content = "", refusal = null }) }, {}
  for i, w in ipairs(words) do
    events[#events + 1] = chunk({ content = (i > 1 and " " or "") .. w })
    content[#events] = true
  end
  content.last = #events
  events[#events + 1] = chunk({}, "stop")
  if include_usage and fault ~= "no-usage" then
    events[#events + 1] = encode({ id = id, object = "chat.completion.chunk", created = created,
                                   model = model, system_fingerprint = "fp_mock",
                                   choices = mock.EMPTY_ARRAY, usage = usage(prompt, #words, fault) })
  end
  return stream(req, events, content, headers, fault, ctl.delay)
end

local function prompt_ok(p)
  if type(p) == "string" then return true end
  if type(p) ~= "table" or p[1] == nil then return false end
  for _, s in ipairs(p) do if type(s) ~= "string" then return false end end
  return true
end

function H.completions(req, body, ctl, fault, headers, model)
  if not prompt_ok(body.prompt) then
    return fail(400, "'prompt' must be a string or a non-empty array of strings.", "invalid_request_error",
                nil, "prompt", headers)
  end
  local prompt = mock.text_tokens(body.prompt)
  local words = mock.words(ctl.chunks)
  local id, created = "cmpl-mock-" .. mock.stats.requests, os.time()
  local is_stream, include_usage = stream_flags(body)
  if not is_stream then
    local u = fault ~= "no-usage" and usage(prompt, #words, fault) or nil
    return complete(req, {
      id = id, object = "text_completion", created = created, model = model,
      system_fingerprint = "fp_mock",
      choices = { { text = table.concat(words, " "), index = 0, logprobs = null, finish_reason = "stop" } },
      usage = u,
    }, headers, fault)
  end
  local u_field = include_usage and null or nil
  local function chunk(text, finish)
    return encode({ id = id, object = "text_completion", created = created, model = model,
                    system_fingerprint = "fp_mock", usage = u_field,
                    choices = { { text = text, index = 0, logprobs = null, finish_reason = finish or null } } })
  end
  local events, content = {}, {}
  for i, w in ipairs(words) do
    events[#events + 1] = chunk((i > 1 and " " or "") .. w)
    content[#events] = true
  end
  content.last = #events
  events[#events + 1] = chunk("", "stop")
  if include_usage and fault ~= "no-usage" then
    events[#events + 1] = encode({ id = id, object = "text_completion", created = created, model = model,
                                   system_fingerprint = "fp_mock", choices = mock.EMPTY_ARRAY,
                                   usage = usage(prompt, #words) })
  end
  return stream(req, events, content, headers, fault, ctl.delay)
end

function H.embeddings(req, body, ctl, fault, headers, model)
  local input = body.input
  if not prompt_ok(input) then
    return fail(400, "'input' must be a string or a non-empty array of strings.", "invalid_request_error",
                nil, "input", headers)
  end
  local list = type(input) == "string" and { input } or input
  local data = {}
  local base64 = body.encoding_format == "base64"
  for i, s in ipairs(list) do
    local v = mock.embedding(s)
    data[i] = { object = "embedding", index = i - 1, embedding = base64 and mock.embedding_base64(v) or v }
  end
  local prompt = mock.text_tokens(input)
  return complete(req, {
    object = "list", data = data, model = model,
    usage = fault ~= "no-usage" and { prompt_tokens = prompt, total_tokens = prompt } or nil,
  }, headers, fault)
end

local function model_object(id)
  return { id = id, object = "model", created = mock.CREATED, owned_by = "mock" }
end

function H.models(req, body, ctl, fault, headers)
  local data = {}
  for i, m in ipairs(mock.models) do data[i] = model_object(m) end
  return complete(req, { object = "list", data = #data > 0 and data or mock.EMPTY_ARRAY }, headers, fault)
end

function H.model(req, body, ctl, fault, headers, model)
  for _, m in ipairs(mock.models) do
    if m == model then return complete(req, model_object(m), headers, fault) end
  end
  return fail(404, "The model '" .. model .. "' does not exist", "invalid_request_error",
              "model_not_found", "model", headers)
end

-- ---------------------------------------------------------------- entry

-- Marks where the raw request body goes in the stats' JSON (kept as sent,
-- so [] stays [] there too).
local RAW = mock.RAW_BODY

return function(req)
  local route = req.route
  local raw = req.method == "POST" and req:body() or ""
  local body = nil
  if raw ~= "" then body = cjson.decode(raw) end
  local model
  if route == "model" then model = req.params.model
  elseif type(body) == "table" and type(body.model) == "string" and body.model ~= "" then model = body.model end
  local auth = req.headers["authorization"]
  local key = req:credential("Authorization", "Bearer")

  local st = mock.stats
  st.requests = st.requests + 1
  if model then mock.count(st.by_model, model) end
  if key then mock.count(st.by_key, key) end
  st.last = { path = req.path, model = model or null, authorization = auth or null,
              body = body ~= nil and RAW or null }
  mock.last_raw = body ~= nil and raw or nil

  local headers = {}
  if model then headers["X-Mock-Model"] = model end

  if not key then
    return fail(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                .. "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error", "missing_api_key", nil, headers)
  end
  if key == "bad-key" then return fault_answer(req, "bad-key", headers) end

  if req.method == "POST" and (type(body) ~= "table" or (next(body) ~= nil and body[1] ~= nil)) then
    return fail(400, "We could not parse the JSON body of your request. (The mock expects a JSON object.)",
                "invalid_request_error", nil, nil, headers)
  end
  local ctl, cerr = controls(body)
  if not ctl then return fail(400, cerr, "invalid_request_error", "mock_control", "mock", headers) end
  local fault, ferr = pick_fault(ctl, key)
  if ferr then return fail(400, ferr, "invalid_request_error", "mock_control", "mock", headers) end

  if fault == "stall" then req:sleep(mock.STALL_SECONDS)
  elseif fault == "slow" then req:sleep(mock.SLOW_SECONDS)
  elseif fault then
    local s, b, h = fault_answer(req, fault, headers)
    if s then return s, b, h end
  end

  if req.method == "POST" and not model then
    return fail(400, "you must provide a model parameter", "invalid_request_error", nil, "model", headers)
  end
  return H[route](req, body or {}, ctl, fault, headers, model)
end
