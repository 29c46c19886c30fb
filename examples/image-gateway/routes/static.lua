-- GET /, /app.js, /app.css : the upload page, plain files from ../public/.
-- Read once when the handler is loaded (at start and on every reload).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local public = here .. "/../public/"

local function slurp(name)
  local f = assert(io.open(public .. name, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local files = {
  ["/"] = { "index.html", "text/html; charset=utf-8" },
  ["/app.js"] = { "app.js", "text/javascript; charset=utf-8" },
  ["/app.css"] = { "app.css", "text/css; charset=utf-8" },
}
for path, f in pairs(files) do
  files[path] = { body = slurp(f[1]), type = f[2] }
end

return function(req)
  local f = files[req.path]
  if not f then return 404 end
  return 200, f.body, { ["Content-Type"] = f.type, ["Cache-Control"] = "no-cache",
                        ["X-Content-Type-Options"] = "nosniff" }
end
