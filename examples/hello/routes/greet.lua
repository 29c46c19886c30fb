-- GET /hello/:name[?greeting=...] : path params and query args.
return function(req)
  local greeting = req.query.greeting or "hello"
  return 200, { [greeting] = req.params.name }
end
