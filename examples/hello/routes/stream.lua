-- GET /stream[?n=5&interval=0.2] : server-sent events, one every `interval`
-- seconds; each reaches the client as soon as it is written.
return function(req)
  local n = tonumber(req.query.n) or 5
  local interval = tonumber(req.query.interval) or 0.2
  req:stream(200, { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache" })
  for i = 1, n do
    if not req:write(string.format("data: {\"tick\":%d}\n\n", i)) then return end
    if i < n then req:sleep(interval) end
  end
  req:write("data: [DONE]\n\n")
end
