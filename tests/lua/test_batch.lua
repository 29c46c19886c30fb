-- moongate.batch without a server: no timer here, so flushes are driven by
-- flush_now(), and the close hook is called by hand (q:_close()).
local batch = require "moongate.batch"
local core = require "moongate.core"
local cjson = require "cjson"

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(core.mkdir(d))
  return d
end

local function files(dir)
  local out = {}
  for _, f in ipairs(assert(core.listdir(dir))) do out[#out + 1] = f end
  table.sort(out)
  return out
end

local function rmdir(dir)
  for _, f in ipairs(files(dir)) do os.remove(dir .. "/" .. f) end
  os.remove(dir)
end

-- A flush function that records rows and fails while `down` is set.
local function sink()
  local s = { got = {}, calls = 0, down = false }
  s.flush = function(rows)
    s.calls = s.calls + 1
    if s.down then return nil, "database unavailable" end
    for _, r in ipairs(rows) do s.got[#s.got + 1] = r.n end
    s.last_batch = #rows
    return true
  end
  return s
end

local function seq(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = i end
  return t
end

test("misuse raises at batch.new", function()
  local f = function() return true end
  raises(function() batch.new() end, "batch.new: expected a table")
  raises(function() batch.new{ flush = f } end, "name: required")
  raises(function() batch.new{ name = "a b", flush = f } end, "name: only letters")
  raises(function() batch.new{ name = "x" } end, "flush: required")
  raises(function() batch.new{ name = "x", flush = "f" } end, "flush: required")
  raises(function() batch.new{ name = "x", flush = f, interval = 0 } end, "interval")
  raises(function() batch.new{ name = "x", flush = f, max_rows = 1.5 } end, "max_rows")
  raises(function() batch.new{ name = "x", flush = f, memory_rows = "9" } end, "memory_rows")
  raises(function() batch.new{ name = "x", flush = f, spool_limit = "lots" } end, "spool_limit")
  raises(function() batch.new{ name = "x", flush = f, spool_dir = 5 } end, "spool_dir")
  raises(function() batch.new{ name = "x", flush = f, intervall = 1 } end, "unknown option intervall")
  raises(function() batch.new{ name = "x", flush = f, collect = {} } end, "collect: expected a function")
  local q = batch.new{ name = "ok.name-1_x", flush = f, spool_dir = tmpdir() }
  raises(function() q:push("not a table") end, "expected a table")
end)

test("rows are flushed in push order, at most max_rows per call", function()
  local s = sink()
  local q = batch.new{ name = "order", flush = s.flush, max_rows = 3, spool_dir = tmpdir() }
  for i = 1, 7 do q:push({ n = i }) end
  eq(q:stats().pending, 7)
  eq(q:flush_now(), true)
  eq(s.got, seq(1, 7))
  eq(s.calls, 3)
  eq(s.last_batch, 1)
  local st = q:stats()
  eq({ st.pending, st.flushed, st.failures, st.dropped, st.spooled_rows }, { 0, 7, 0, 0, 0 })
  eq(q:flush_now(), true)            -- nothing to do
  eq(s.calls, 3)
end)

test("a failing flush spools the rows; they are replayed first, in order", function()
  local dir = tmpdir()
  local s = sink()
  local q = batch.new{ name = "logs", flush = s.flush, max_rows = 4, spool_dir = dir }
  for i = 1, 6 do q:push({ n = i }) end
  s.down = true
  local ok, err = q:flush_now()
  eq({ ok, err }, { nil, "database unavailable" })
  local st = q:stats()
  eq({ st.pending, st.spooled_rows, st.failures }, { 0, 6, 1 })
  assert(st.spooled_bytes > 0)
  local f = files(dir)
  eq(#f, 1)
  assert(f[1]:match("^logs%..*%.open$"), f[1])
  -- more rows while it is down, another failed attempt (replays the file first)
  for i = 7, 9 do q:push({ n = i }) end
  eq(q:flush_now(), nil)
  eq(q:stats().spooled_rows, 9)
  eq(q:stats().pending, 0)
  s.down = false
  for i = 10, 11 do q:push({ n = i }) end
  eq(q:flush_now(), true)
  eq(s.got, seq(1, 11))
  st = q:stats()
  eq({ st.pending, st.spooled_rows, st.spooled_bytes, st.flushed, st.failures }, { 0, 0, 0, 11, 2 })
  eq(files(dir), {})                 -- replayed files are deleted
  rmdir(dir)
end)

test("an error raised by flush counts as a failure", function()
  local dir = tmpdir()
  local got = {}
  local raise = true
  local q = batch.new{ name = "raising", spool_dir = dir, flush = function(rows)
    if raise then error("boom") end
    for _, r in ipairs(rows) do got[#got + 1] = r.n end
    return true
  end }
  q:push({ n = 1 })
  local ok, err = q:flush_now()
  assert(ok == nil and err:find("boom"), tostring(err))
  raise = false
  eq(q:flush_now(), true)
  eq(got, { 1 })
  rmdir(dir)
end)

test("memory_rows: the oldest rows go to the spool, order is kept", function()
  local dir = tmpdir()
  local s = sink()
  local q = batch.new{ name = "mem", flush = s.flush, memory_rows = 5, max_rows = 100, spool_dir = dir }
  for i = 1, 12 do q:push({ n = i }) end
  local st = q:stats()
  eq({ st.pending, st.spooled_rows }, { 0, 12 })  -- spilled at 6 and at 12 (everything)
  eq(q:flush_now(), true)
  eq(s.got, seq(1, 12))
  eq(files(dir), {})
  rmdir(dir)
end)

test("memory_rows: a spill writes the oldest max_rows rows, the newer stay in memory", function()
  local dir = tmpdir()
  local s = sink()
  local q = batch.new{ name = "part", flush = s.flush, memory_rows = 5, max_rows = 2, spool_dir = dir }
  for i = 1, 8 do q:push({ n = i }) end
  local st = q:stats()
  eq({ st.pending, st.spooled_rows }, { 4, 4 })   -- 1-2 spilled at 6, 3-4 at 8
  eq(q:flush_now(), true)
  eq(s.got, seq(1, 8))                              -- the spool first, then memory: in order
  eq(files(dir), {})
  rmdir(dir)
end)

test("spool_limit: rows past it are dropped and counted", function()
  local dir = tmpdir()
  local s = sink()
  local line = #cjson.encode({ n = 10, pad = "xxxxxxxxxx" }) + 1
  local q = batch.new{ name = "tiny", flush = s.flush, spool_dir = dir, spool_limit = line * 5 }
  s.down = true
  for i = 10, 29 do q:push({ n = i, pad = "xxxxxxxxxx" }) end
  eq(q:flush_now(), nil)
  local st = q:stats()
  eq({ st.spooled_rows, st.dropped }, { 5, 15 })
  s.down = false
  eq(q:flush_now(), true)
  eq(s.got, seq(10, 14))
  rmdir(dir)
end)

test("close hook: memory and an interrupted batch go to ready files another queue replays", function()
  local dir = tmpdir()
  local s = sink()
  local q = batch.new{ name = "gen", flush = s.flush, max_rows = 2, spool_dir = dir }
  s.down = true
  for i = 1, 3 do q:push({ n = i }) end
  eq(q:flush_now(), nil)                        -- 1..3 in the spool file being written
  eq(q:flush_now(), nil)                        -- now being replayed (claimed)
  q:push({ n = 4 })
  eq(q:flush_now(), nil)                        -- 4 in a new file
  q:push({ n = 5 })                             -- 5 in memory
  eq(q:stats().pending, 1)
  q:_close()
  local f = files(dir)
  eq(#f, 2)
  for _, name in ipairs(f) do assert(name:match("^gen%..*%.spool$"), name) end
  q:push({ n = 99 })                            -- after close: not written anywhere
  -- the next generation (here: a new queue of the same name) takes them over
  local s2 = sink()
  local q2 = batch.new{ name = "gen", flush = s2.flush, max_rows = 2, spool_dir = dir }
  eq(q2:flush_now(), true)
  eq(s2.got, seq(1, 5))
  eq(files(dir), {})
  rmdir(dir)
end)

test("close hook during a flush: the batch in flight is spooled too (at-least-once)", function()
  local dir = tmpdir()
  local q
  q = batch.new{ name = "inflight", spool_dir = dir, flush = function()
    q:_close()                      -- the state closes while this flush waits
    return true
  end }
  q:push({ n = 1 })
  q:push({ n = 2 })
  eq(q:flush_now(), nil)
  eq(q:stats().flushed, 0)
  local s = sink()
  local q2 = batch.new{ name = "inflight", flush = s.flush, spool_dir = dir }
  eq(q2:flush_now(), true)
  eq(s.got, { 1, 2 })
  rmdir(dir)
end)

test("retire hook: the backlog is handed over at once, later rows at close", function()
  local dir = tmpdir()
  local s = sink()
  local q = batch.new{ name = "retire", flush = s.flush, spool_dir = dir }
  s.down = true
  q:push({ n = 1 })
  eq(q:flush_now(), nil)                        -- 1 in the spool
  q:push({ n = 2 })                             -- 2 in memory
  q:_retire()
  eq(#files(dir), 1)
  eq(q:stats().pending, 0)
  eq(q:flush_now(), nil)                        -- a retired queue no longer flushes
  q:push({ n = 3 })                             -- a request still in flight
  local s2 = sink()
  local q2 = batch.new{ name = "retire", flush = s2.flush, spool_dir = dir }
  eq(q2:flush_now(), true)
  eq(s2.got, { 1, 2 })
  q:_close()
  eq(q2:flush_now(), true)
  eq(s2.got, { 1, 2, 3 })
  eq(files(dir), {})
  rmdir(dir)
end)

test("memory stays a list from 1 when flushes leave rows behind (order kept)", function()
  local s = sink()
  local q = batch.new{ name = "steady", flush = s.flush, max_rows = 10, spool_dir = tmpdir() }
  local n = 0
  for round = 1, 50 do                  -- a steady backlog: 3 rows are always left behind
    for _ = 1, round == 1 and 13 or 10 do n = n + 1; q:push({ n = n }) end
    local b = q:_take_memory()
    for _, r in ipairs(b.rows) do s.got[#s.got + 1] = r.n end
    eq(q.mt - q.mh + 1, 3)
    assert(q.mt <= 30, "memory index grew to " .. q.mt)
  end
  eq(q:flush_now(), true)
  eq(s.got, seq(1, n))
end)

test("collect: what the application gathered joins the queue at flush_now and at close", function()
  local dir = tmpdir()
  local s = sink()
  local gathered = {}
  local q = batch.new{ name = "packs", flush = s.flush, spool_dir = dir,
                       collect = function()
                         local out = gathered
                         gathered = {}
                         return out
                       end }
  gathered = { { n = 1 }, { n = 2 } }
  q:push({ n = 0 })
  eq(q:flush_now(), true)              -- pushed rows first, then the collected ones
  eq(s.got, { 0, 1, 2 })
  gathered = { { n = 3 } }
  q:_close()                           -- still gathered at close: spooled for the next generation
  local s2 = sink()
  local q2 = batch.new{ name = "packs", flush = s2.flush, spool_dir = dir }
  eq(q2:flush_now(), true)
  eq(s2.got, { 3 })
  eq(files(dir), {})
  rmdir(dir)
end)

test("collect: on the timer, only when a flush is due", function()
  local s = sink()
  local calls = 0
  local q = batch.new{ name = "due", flush = s.flush, spool_dir = tmpdir(), interval = 60,
                       collect = function()
                         calls = calls + 1
                         return { { n = calls } }
                       end }
  q:_tick()                            -- the interval has not passed
  eq(calls, 0)
  q.next_at = 0
  q:_tick()
  eq(calls, 1)
  eq(s.got, { 1 })
end)

test("collect: an error or a bad value is logged and the queue goes on", function()
  local s = sink()
  local mode = "raise"
  local q = batch.new{ name = "badcollect", flush = s.flush, spool_dir = tmpdir(),
                       collect = function()
                         if mode == "raise" then error("collect failed") end
                         if mode == "junk" then return { "not a row", { n = 7 } } end
                       end }
  q:push({ n = 1 })
  eq(q:flush_now(), true)
  mode = "junk"
  eq(q:flush_now(), true)
  mode = nil
  eq(q:flush_now(), true)
  eq(s.got, { 1, 7 })
end)

test("files of a dead process are claimed; other names and live owners are left alone", function()
  local dir = tmpdir()
  local function write(name, lines)
    local f = assert(io.open(dir .. "/" .. name, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
  end
  -- pid 0 never names a live process here
  write("crash.0000000000001.00000001.p0s5w0rab.open", { '{"n":1}', '{"n":2}', '{"n":3' })
  write("crash.0000000000002.00000001.p0s5w1rcd.4.p0s5w2ref.claimed", { '{"n":4}', '{"n":5}' })
  write("crashed.0000000000000.00000001.p0s5w0rab.1.spool", { '{"n":100}' })
  local me = io.open("/proc/self/stat"):read("*a")
  local pid, start = me:match("^(%d+)"), nil
  local i = 2
  for field in me:match("^.*%)%s+(.*)$"):gmatch("%S+") do
    i = i + 1
    if i == 22 then start = field end
  end
  local live = string.format("crash.0000000000000.00000001.p%ss%sw0r01.open", pid, start)
  write(live, { '{"n":0}' })
  local s = sink()
  local q = batch.new{ name = "crash", flush = s.flush, spool_dir = dir }
  eq(q:flush_now(), true)
  eq(s.got, { 1, 2, 4, 5 })                     -- the cut last line is dropped
  eq(q:stats().dropped, 1)
  eq(files(dir), { live, "crashed.0000000000000.00000001.p0s5w0rab.1.spool" })
  rmdir(dir)
end)

test("spool_dir default: $MOONGATE_SPOOL_DIR, else spool next to the config", function()
  local q = batch.new{ name = "dflt", flush = function() return true end }
  local env = os.getenv("MOONGATE_SPOOL_DIR")
  if env and env ~= "" then eq(q.dir, env) else assert(q.dir:match("/spool$"), q.dir) end
end)
