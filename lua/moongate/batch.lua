-- Batched writes that are never lost (while the disk holds): rows pushed by
-- handlers are gathered in memory and handed to a flush function in batches
-- by a background timer; while flushing fails (database down) they go to a
-- bounded on-disk spool and are replayed, in order, once flushing works.
--
--   local batch = require "moongate.batch"
--   local pg = require "moongate.postgres"
--   local cjson = require "cjson"
--   -- at config load time (module level of the config or of a handler file):
--   local logs = batch.new{
--     name = "aiproxy-logs",        -- required, [A-Za-z0-9_.-]+: names the spool files
--     flush = function(rows)        -- required; runs in a timer coroutine and may wait
--       local ok, err = pg.query([[
--         INSERT INTO request_log (request_id, tokens)
--         SELECT request_id, tokens FROM json_to_recordset($1::json)
--                AS r(request_id text, tokens int)
--         ON CONFLICT (request_id) DO NOTHING]], cjson.encode(rows))
--       if not ok then return nil, err end
--       return true                 -- or nil, err: the whole list is kept and retried
--     end,
--     interval = 1,                 -- seconds between flushes (default 1)
--     max_rows = 500,               -- rows per flush call (default 500); a full batch flushes early
--     memory_rows = 10000,          -- rows held in memory before they go to the spool (default 10000)
--     spool_dir = "spool",          -- see below
--     spool_limit = "64m",          -- bytes of spool per queue and worker (default 64m)
--     collect = nil,                -- optional: function() -> a list of rows (or nil)
--   }
--   logs:push({ request_id = req.id, tokens = 42 })  -- never waits, never raises
--   logs:stats()      -- { pending, spooled_rows, spooled_bytes, dropped, flushed, failures }
--   logs:flush_now()  -- flush in the calling coroutine (may wait): true | nil, err
--
-- collect is for an application that gathers rows its own way before they
-- are queued (packing many rows into one, say, so that nothing of them stays
-- behind as Lua tables): the queue calls it when a flush is due (every
-- interval), in flush_now, and when it hands over or closes, and pushes what
-- it returns -- so gathered rows wait no longer than pushed ones, and are as
-- safe from the moment collect hands them over. An error in collect is
-- logged.
--
-- How it works, per worker (each worker has its own Lua state and queue):
--   * push appends to a Lua list: no syscall. Every `interval` seconds (or as
--     soon as max_rows rows are waiting) the timer calls flush(rows) with at
--     most max_rows rows in push order; one flush at a time per queue.
--   * flush returns nil, err (or raises): the batch and every row in memory
--     are appended to this worker's spool file (JSON lines) and memory is
--     empty again. Further attempts back off (interval, doubling, capped at
--     5 s or interval if longer) and replay the spool first -- oldest file
--     first, lines in order -- then the rows in memory, so rows reach flush
--     in push order. A replayed file is deleted once all of it is flushed.
--     One warn line when failures start, one info line ("replayed N rows")
--     when the backlog is gone.
--   * more than memory_rows rows waiting (flushing too slow): the oldest
--     max_rows of them go to the spool -- one bounded write, so the request
--     that crossed the line waits for max_rows rows, not for all of memory --
--     and are replayed from there, before the rows still in memory.
--   * the spool of a queue in a worker is bounded by spool_limit bytes (so
--     a process holds at most workers x spool_limit per queue); rows past it
--     are dropped and counted (stats().dropped) with a rate-limited warn
--     line carrying the running count.
--   * reload (SIGHUP) and graceful stop (SIGTERM/SIGINT): when the old
--     generation's Lua state closes, a close hook (timer.on_close) writes its
--     rows in memory -- and those of a flush that was interrupted -- to the
--     spool, synchronously, without waiting on the database, and releases
--     the files it was replaying. The new generation, or the next process,
--     picks the files up and replays them. A generation a reload retires
--     while requests are still in flight on it hands its backlog over at
--     once (timer.on_retire); rows those requests push later follow when its
--     state closes.
--   * spool files left by other generations, by a process that crashed or by
--     a restart with fewer workers are claimed by whichever worker sees them
--     first (a scan of spool_dir every second): an atomic rename to a name
--     carrying the claimer, so two workers never replay the same file.
--
-- Spool files live in spool_dir: the option (relative to the config file),
-- else $MOONGATE_SPOOL_DIR, else "spool" next to the config file; created
-- (mode 0700) if missing. Names: <name>.<stamp>.<seq>.<owner>.open (being
-- written), <name>....<rows>.spool (ready to be replayed by anyone),
-- <name>....<rows>.<owner>.claimed (being replayed); owner is pid, process
-- start time, worker and a random tag, so files of a live process are never
-- taken and those of a dead one always are (Linux /proc).
--
-- Delivery is at-least-once: a flush that failed or timed out may have
-- committed, and a file being replayed when the process stops is replayed
-- again from its start. Make flush idempotent (e.g. INSERT ... ON CONFLICT
-- (request_id) DO NOTHING). Rows travel through the spool as JSON (lua-cjson:
-- numbers keep 14 significant digits, send larger ids as strings), so they
-- should be JSON-shaped tables; flush must not modify them.
--
-- Disk writes are plain Lua io (blocking, on a local file), done only when
-- flushing fails, when memory_rows is exceeded (max_rows rows at a time),
-- and in the close hook; the files are flushed to the kernel (a process
-- crash loses nothing written), not fsync'ed (a machine crash may lose the
-- last ones).
--
-- Misuse (missing name or flush, wrong types, a name used twice in one
-- config) raises at batch.new; push only raises for a row that is not a
-- table. In a config check (-t, the reload check) there is no timer: rows
-- pushed there stay in memory and are never written. Under `moongate test`
-- there is no timer either: call q:flush_now().
local core = require "moongate.core"
local timer = require "moongate.timer"
local json = require("cjson.safe").new()

local M = {}

local SCAN_EVERY = 1          -- seconds between looks for files to claim
local DROP_LOG_EVERY = 10     -- seconds between "dropped" warn lines
local MAX_BACKOFF = 5

local encode, decode = json.encode, json.decode
local now = core.now
local floor, min, max = math.floor, math.min, math.max

-- ---- identity --------------------------------------------------------------

-- pid and start time (field 22 of /proc/<pid>/stat) identify a process.
local function proc_stat(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local p = s and s:match("^(%d+)")
  local rest = s and s:match("^.*%)%s+(.*)$")
  if not p or not rest then return nil end
  local i = 2
  for field in rest:gmatch("%S+") do
    i = i + 1
    if i == 22 then return p, field end
  end
  return p, "0"
end

local SELF_PID, SELF_START = proc_stat("self")
SELF_PID, SELF_START = SELF_PID or "0", SELF_START or "0"

local function alive(pid, start)
  if pid == SELF_PID and start == SELF_START then return true end
  local p, s = proc_stat(pid)
  return p ~= nil and s == start
end

-- File names, after "<name>.": key = <stamp13>.<seq8>.<owner>
local OWNER = "p%d+s%d+w%d+r%x+"
local OPEN_PAT = "^(%d+%.%d+%." .. OWNER .. ")%.open$"
local READY_PAT = "^(%d+%.%d+%." .. OWNER .. ")%.(%w+)%.spool$"
local CLAIMED_PAT = "^(%d+%.%d+%." .. OWNER .. ")%.(%w+)%.(" .. OWNER .. ")%.claimed$"
local OWNER_PARTS = "^p(%d+)s(%d+)w"
M._patterns = { open = OPEN_PAT, ready = READY_PAT, claimed = CLAIMED_PAT }

local function key_owner(key) return key:match("%.(" .. OWNER .. ")$") end

-- ---- the queue -------------------------------------------------------------

local Q = {}
Q.__index = Q

local function log(q, level, msg)
  core.log(level, "batch " .. q.name .. ": " .. msg,
           string.format('"queue":%s,"worker":%d', encode(q.name), q.worker))
end

function Q:_path(file) return self.dir .. "/" .. file end

function Q:_next_key()
  local stamp = max(floor(now() * 1000), self.last_stamp)
  self.last_stamp = stamp
  self.seq = self.seq + 1
  return string.format("%013d.%08d.%s", stamp, self.seq, self.owner)
end

function Q:_count_drop(n, why)
  self.dropped = self.dropped + n
  local t = now()
  if t >= self.drop_log_at then
    self.drop_log_at = t + DROP_LOG_EVERY
    log(self, "warn", string.format("%s: dropped %d rows so far", why, self.dropped))
  end
end

-- A spool file written by this queue: { key, path, f, rows, bytes }.
function Q:_open_writer(key)
  local w = { key = key, rows = 0, bytes = 0 }
  w.path = self:_path(self.name .. "." .. key .. ".open")
  local f, err = io.open(w.path, "a")
  if not f then
    core.mkdir(self.dir)
    f, err = io.open(w.path, "a")
  end
  if not f then return nil, err end
  f:setvbuf("full")
  w.f = f
  return w
end

-- Rows and bytes in the spool files this queue holds (replay list + writer).
function Q:_spooled()
  local rows, bytes = 0, 0
  for _, h in ipairs(self.replay) do rows, bytes = rows + h.left_rows, bytes + h.left_bytes end
  local w = self.writer
  if w then rows, bytes = rows + w.rows, bytes + w.bytes end
  return rows, bytes
end

-- Appends rows[i..j] as JSON lines to file w (opened if needed) within the
-- spool limit; returns the file (or nil when it could not be opened).
function Q:_append(w, rows, i, j, key)
  if i > j then return w end
  if not w then
    local err
    w, err = self:_open_writer(key or self:_next_key())
    if not w then
      self:_count_drop(j - i + 1, "cannot write the spool (" .. tostring(err) .. ")")
      return nil
    end
  end
  local buf, n, bytes, over, bad = {}, 0, 0, 0, 0
  local _, used = self:_spooled()
  if w ~= self.writer then used = used + w.bytes end
  local room = self.limit - used
  for k = i, j do
    local line = encode(rows[k])
    if not line then
      bad = bad + 1
    elseif bytes + #line + 1 > room then
      over = over + 1
    else
      n = n + 1
      buf[n] = line
      bytes = bytes + #line + 1
    end
  end
  if n > 0 then
    buf[n + 1] = ""
    local ok, err = w.f:write(table.concat(buf, "\n"))
    if ok then ok, err = w.f:flush() end
    if not ok then
      self:_count_drop(n, "cannot write the spool (" .. tostring(err) .. ")")
    else
      w.rows, w.bytes = w.rows + n, w.bytes + bytes
    end
  end
  if bad > 0 then self:_count_drop(bad, "rows that cannot be encoded as JSON") end
  if over > 0 then
    self:_count_drop(over, string.format("spool limit reached (%d bytes in %s)", self.limit, self.dir))
  end
  return w
end

-- Forgets the oldest n rows in memory. What stays is moved down to start
-- at 1 when that is cheap (no more rows than the slots freed below them):
-- memory stays a list from 1, which LuaJIT keeps in the table's array part.
-- Under steady load a flush seldom takes every row, and indexes growing
-- without end would live in the table's hash part, rehashed over and over.
function Q:_forget(n)
  local mem, from, mt = self.mem, self.mh + n, self.mt
  for k = self.mh, from - 1 do mem[k] = nil end
  local rest = mt - from + 1
  if rest <= 0 then
    self.mh, self.mt = 1, 0
  elseif rest < from then                    -- 1..rest lies below from..mt
    for i = 1, rest do mem[i], mem[from + i - 1] = mem[from + i - 1], nil end
    self.mh, self.mt = 1, rest
  else
    self.mh = from
  end
end

-- The oldest `n` rows in memory (all of them when n is nil) go to the end of
-- the writer: they are newer than anything spooled before, older than what
-- stays in memory.
function Q:_spill(n)
  if self.mt < self.mh then return end
  local last = n and min(self.mt, self.mh + n - 1) or self.mt
  self.writer = self:_append(self.writer, self.mem, self.mh, last)
  self:_forget(last - self.mh + 1)
end

-- Adds a claimed file to the replay list, ordered by key; never before the
-- file being read.
function Q:_add_replay(h)
  local r = self.replay
  local pos = #r + 1
  while pos > 1 and r[pos - 1].key > h.key and not r[pos - 1].f do pos = pos - 1 end
  table.insert(r, pos, h)
end

local function claimed_name(q, key, rows)
  return q.name .. "." .. key .. "." .. rows .. "." .. q.owner .. ".claimed"
end

-- The writer stops growing and joins the replay list (when nothing older
-- waits there), or is released as a ready file (close hook).
function Q:_seal_writer(release)
  local w = self.writer
  self.writer = nil
  if not w then return end
  w.f:close()
  w.f = nil
  if w.rows == 0 then os.remove(w.path) return end
  local name = release and (self.name .. "." .. w.key .. "." .. w.rows .. ".spool")
                        or claimed_name(self, w.key, w.rows)
  local ok, err = os.rename(w.path, self:_path(name))
  if not ok then
    log(self, "error", "cannot rename spool file: " .. tostring(err))
    if release then return end
    name = w.path:match("[^/]*$")
  end
  if not release then
    self:_add_replay({ key = w.key, path = self:_path(name), total = w.rows,
                       left_rows = w.rows, left_bytes = w.bytes, replayed = 0 })
  end
end

-- Looks for spool files nobody (alive) works on and claims them.
function Q:_scan()
  local names = core.listdir(self.dir)
  if not names then return end
  local prefix, found = self.name .. ".", {}
  for _, file in ipairs(names) do
    if file:sub(1, #prefix) == prefix then
      local rest = file:sub(#prefix + 1)
      local key, rows = rest:match(READY_PAT)
      if not key then
        key = rest:match(OPEN_PAT)
        if key then
          local pid, start = key_owner(key):match(OWNER_PARTS)
          if alive(pid, start) then key = nil else rows = "u" end
        else
          local owner
          key, rows, owner = rest:match(CLAIMED_PAT)
          if key then
            local pid, start = owner:match(OWNER_PARTS)
            if owner == self.owner or alive(pid, start) then key = nil end
          end
        end
      end
      if key then found[#found + 1] = { key = key, rows = rows, file = file } end
    end
  end
  table.sort(found, function(a, b) return a.key < b.key end)
  for _, c in ipairs(found) do
    local to = self:_path(claimed_name(self, c.key, c.rows))
    if os.rename(self:_path(c.file), to) then      -- only one claimer wins
      local f = io.open(to, "r")
      if f then
        local bytes = f:seek("end") or 0
        local rows = tonumber(c.rows)
        if not rows then                            -- left by a crash: count
          rows = 0
          f:seek("set")
          for _ in f:lines() do rows = rows + 1 end
        end
        f:close()
        self:_add_replay({ key = c.key, path = to, total = rows, left_rows = rows,
                           left_bytes = bytes, replayed = 0, foreign = c.file })
      end
    end
  end
end

-- Done with the head of the replay list: delete it.
function Q:_finish_file(h)
  if h.f then h.f:close() h.f = nil end
  os.remove(h.path)
  table.remove(self.replay, 1)
  if h.foreign then
    log(self, "info", string.format("replayed %d rows from spool file %s", h.replayed, h.foreign))
  end
end

-- The next batch from the spool: { rows, n, file, bytes }, or nil.
function Q:_read_batch()
  while self.replay[1] do
    local h = self.replay[1]
    if not h.f then
      local f, err = io.open(h.path, "r")
      if not f then
        log(self, "error", "cannot read spool file: " .. tostring(err))
        self:_count_drop(h.left_rows, "unreadable spool file")
        self:_finish_file(h)
      else
        h.f = f
      end
    end
    if h.f then
      local rows, n, bytes, bad, bad_bytes = {}, 0, 0, 0, 0
      while n < self.max_rows do
        local line = h.f:read("*l")
        if not line then break end
        local row = line ~= "" and decode(line)
        if type(row) == "table" then
          n = n + 1
          rows[n] = row
          bytes = bytes + #line + 1
        else
          bad_bytes = bad_bytes + #line + 1
          if line ~= "" then bad = bad + 1 end
        end
      end
      h.eof = h.f:read(0) == nil
      h.left_bytes = max(0, h.left_bytes - bad_bytes)
      if bad > 0 then
        h.left_rows = max(0, h.left_rows - bad)
        self:_count_drop(bad, "unreadable lines in a spool file")
      end
      if n > 0 then return { rows = rows, n = n, file = h, bytes = bytes } end
      if h.eof then self:_finish_file(h) end
    end
  end
end

function Q:_take_memory()
  local n = min(self.max_rows, self.mt - self.mh + 1)
  local rows, mem, mh = {}, self.mem, self.mh
  for i = 1, n do rows[i] = mem[mh + i - 1] end
  self:_forget(n)
  return { rows = rows, n = n, key = self:_next_key() }
end

-- Rows of a memory batch that could not be flushed go to disk, before
-- anything spilled while the flush was running (their key is older).
function Q:_spool_batch(b)
  if self.writer then
    local w = self:_append(nil, b.rows, 1, b.n, b.key)
    if w then
      self.writer, w = w, self.writer
      self:_seal_writer(false)
      self.writer = w
    end
  else
    self.writer = self:_append(nil, b.rows, 1, b.n, b.key)
  end
end

function Q:_succeeded(b)
  self.inflight = nil
  self.flushed = self.flushed + b.n
  self.consecutive = 0
  self.retry_at = 0
  local h = b.file
  if h then
    h.replayed = h.replayed + b.n
    h.left_rows = max(0, h.left_rows - b.n)
    h.left_bytes = max(0, h.left_bytes - b.bytes)
    if self.outage then self.outage.replayed = self.outage.replayed + b.n end
    if h.eof then self:_finish_file(h) end
  end
  local o = self.outage
  if o and not self.replay[1] and not self.writer then
    self.outage = nil
    log(self, "info", string.format("flushing works again after %d failed attempts in %.1fs; "
        .. "replayed %d rows from the spool", o.attempts, now() - o.since, o.replayed))
  end
end

function Q:_failed(b, err)
  self.failures = self.failures + 1
  self.consecutive = self.consecutive + 1
  if not self.outage then
    self.outage = { since = now(), attempts = 0, replayed = 0 }
    log(self, "warn", "flush failed, keeping the rows in the spool until it works again: "
        .. tostring(err))
  end
  self.outage.attempts = self.outage.attempts + 1
  if not b.file then
    self.inflight = nil
    self:_spool_batch(b)
  end                                   -- a spool batch stays and is retried
  self:_spill()
  local delay = min(self.interval * 2 ^ (self.consecutive - 1), max(MAX_BACKOFF, self.interval))
  self.retry_at = now() + delay
end

-- One flush call: "idle" (nothing to do), "ok", or "fail", err.
function Q:_step()
  local b = self.inflight
  if not b then
    if not self.replay[1] and self.writer then self:_seal_writer(false) end
    b = self:_read_batch()
    if not b then
      if self.mt < self.mh then return "idle" end
      b = self:_take_memory()
    end
    self.inflight = b
  end
  local copy = {}
  for i = 1, b.n do copy[i] = b.rows[i] end
  local ok, res, err = pcall(self.flush, copy)
  if self.closed then return "fail", "closed" end
  if ok and res then
    self:_succeeded(b)
    return "ok", b
  end
  if ok then err = err or ("flush returned " .. tostring(res)) else err = res end
  self:_failed(b, err)
  return "fail", tostring(err)
end

-- Flushes the backlog (spool), full batches, and the rows that were in
-- memory when the run started; rows pushed meanwhile wait for the next
-- interval unless they make a full batch.
function Q:_run()
  self.busy = true
  local started = now()
  local want, taken = self.mt - self.mh + 1, 0
  local ok, res, err = pcall(function()
    while true do
      if self.disk and now() >= self.scan_at then
        self.scan_at = now() + SCAN_EVERY
        self:_scan()
      end
      if not (self.inflight or self.replay[1] or self.writer
              or self.mt - self.mh + 1 >= self.max_rows
              or (taken < want and self.mt >= self.mh)) then
        return true
      end
      local r, b = self:_step()
      if r == "idle" then return true end
      if r == "fail" then return nil, b end
      if not b.file then taken = taken + b.n end
      if self.retired then return nil, "retired" end
    end
  end)
  self.busy = false
  if self.retired and not self.closed then self:_handover() end
  self.next_at = started + self.interval
  if not ok then                                   -- a bug here, not in flush
    log(self, "error", "internal error: " .. tostring(res))
    return nil, tostring(res)
  end
  return res, err
end

function Q:_tick()
  if self.busy or self.closed or self.retired then return end
  local t = now()
  if t >= self.next_at then self:_collect() end
  if t >= self.scan_at then
    self.scan_at = t + SCAN_EVERY
    self:_scan()
  end
  if t < self.retry_at then return end
  if self.inflight or self.replay[1] or self.writer
     or self.mt - self.mh + 1 >= self.max_rows
     or (t >= self.next_at and self.mt >= self.mh) then
    self:_run()
  end
end

-- Everything not yet flushed goes to disk, ready for the next generation or
-- process: the batch in flight, memory, the file being written, the files
-- being replayed. Never waits.
function Q:_handover()
  self:_collect()
  local b = self.inflight
  self.inflight = nil
  if b and not b.file then self:_spool_batch(b) end
  self:_spill()
  self:_seal_writer(true)
  for _, h in ipairs(self.replay) do
    if h.f then h.f:close() h.f = nil end
    local name = self.name .. "." .. h.key .. "." .. h.total .. ".spool"   -- replayed whole
    local ok, err = os.rename(h.path, self:_path(name))
    if not ok then log(self, "error", "cannot release spool file: " .. tostring(err)) end
  end
  self.replay = {}
end

-- Close hook: the state is closing; a flush that is waiting never resumes.
function Q:_close()
  if self.closed then return end
  self:_collect()                          -- while pushing can still reach the spool
  self.closed = true
  if self.disk then self:_handover() end
end

-- Retire hook (reload with requests in flight): the new generation takes
-- over the backlog now; rows these requests still push stay in memory until
-- the close hook. A flush that is running hands over when its call returns.
function Q:_retire()
  self.retired = true
  if not self.busy and self.disk and not self.closed then self:_handover() end
end

-- The rows the application gathered itself (the collect option) join the
-- queue.
function Q:_collect()
  local collect = self.collect
  if not collect then return end
  local ok, rows = pcall(collect)
  if not ok then
    log(self, "error", "collect: " .. tostring(rows))
  elseif type(rows) == "table" then
    for i = 1, #rows do
      local row = rows[i]
      if type(row) == "table" then self:push(row)
      else log(self, "error", "collect: expected a list of tables, got a " .. type(row) .. " in it") end
    end
  end
end

-- ---- public API ------------------------------------------------------------

function Q:push(row)
  if type(row) ~= "table" then
    error("batch " .. self.name .. ": push: expected a table, got " .. type(row), 2)
  end
  local t = self.mt + 1
  self.mem[t] = row
  self.mt = t
  if t - self.mh + 1 > self.memory_rows then
    if self.disk and not self.closed then
      self:_spill(self.max_rows)          -- a bounded write, not all of memory at once
    else                               -- no disk here: keep the newest
      self:_forget(1)
      self:_count_drop(1, "memory_rows reached with no spool")
    end
  end
end

function Q:stats()
  local pending = self.mt - self.mh + 1
  local b = self.inflight
  if b and not b.file then pending = pending + b.n end
  local rows, bytes = self:_spooled()
  return { pending = pending, spooled_rows = rows, spooled_bytes = bytes, dropped = self.dropped,
           flushed = self.flushed, failures = self.failures }
end

function Q:flush_now()
  while self.busy do core.sleep(0.01) end    -- one flush at a time
  if self.closed or self.retired then return nil, "retired" end
  self.scan_at = 0                           -- also pick up files left by others now
  self:_collect()
  return self:_run()
end

local used_names = {}

local function check(cond, msg, ...)
  if not cond then error("batch.new: " .. string.format(msg, ...), 3) end
end

local function resolve_dir(dir)
  local base = (package.loaded["moongate.config"] or {}).dir or "."
  if dir == nil then
    local env = os.getenv("MOONGATE_SPOOL_DIR")
    if env and env ~= "" then return env end
    return base .. "/spool"
  end
  if dir:sub(1, 1) == "/" then return dir end
  return base .. "/" .. dir
end

function M.new(o)
  check(type(o) == "table", "expected a table of options, got %s", type(o))
  local known = { name = true, flush = true, interval = true, max_rows = true,
                  memory_rows = true, spool_dir = true, spool_limit = true, collect = true }
  for k in pairs(o) do check(known[k], "unknown option %s", tostring(k)) end
  check(type(o.name) == "string", "name: required, a string like \"app-logs\", got %s", type(o.name))
  check(o.name:match("^[%w_.%-]+$") ~= nil, "name: only letters, digits, _ . - allowed, got %q", o.name)
  -- (not under `moongate test`, where a test may open a queue again)
  check(not used_names[o.name] or core.timer == nil,
        "name: %q is already used by another queue", o.name)
  check(type(o.flush) == "function", "flush: required, a function(rows), got %s", type(o.flush))
  check(o.collect == nil or type(o.collect) == "function", "collect: expected a function, got %s",
        type(o.collect))
  local interval = o.interval == nil and 1 or o.interval
  check(type(interval) == "number" and interval > 0, "interval: expected seconds > 0, got %s",
        tostring(interval))
  local max_rows = o.max_rows == nil and 500 or o.max_rows
  check(type(max_rows) == "number" and max_rows >= 1 and max_rows % 1 == 0,
        "max_rows: expected an integer >= 1, got %s", tostring(max_rows))
  local memory_rows = o.memory_rows == nil and 10000 or o.memory_rows
  check(type(memory_rows) == "number" and memory_rows >= 1 and memory_rows % 1 == 0,
        "memory_rows: expected an integer >= 1, got %s", tostring(memory_rows))
  check(o.spool_dir == nil or (type(o.spool_dir) == "string" and o.spool_dir ~= ""),
        "spool_dir: expected a directory path, got %s", tostring(o.spool_dir))
  local limit = o.spool_limit == nil and "64m" or o.spool_limit
  if type(limit) == "string" then limit = core.parse_size(limit) end
  check(type(limit) == "number" and limit >= 0, 'spool_limit: expected a size like "64m", got %s',
        tostring(o.spool_limit))
  used_names[o.name] = true

  local worker = tonumber((package.loaded["moongate.config"] or {}).worker_id) or 0
  if worker < 0 then worker = 0 end
  local q = setmetatable({
    name = o.name, flush = o.flush, collect = o.collect, interval = interval, max_rows = max_rows,
    memory_rows = memory_rows, dir = resolve_dir(o.spool_dir), limit = limit, worker = worker,
    owner = string.format("p%ss%sw%dr%s", SELF_PID, SELF_START, worker, core.random_hex(8)),
    mem = {}, mh = 1, mt = 0, replay = {}, writer = nil, inflight = nil,
    seq = 0, last_stamp = 0,
    dropped = 0, flushed = 0, failures = 0, consecutive = 0,
    busy = false, closed = false, next_at = now() + interval, retry_at = 0, scan_at = 0,
    drop_log_at = 0,
  }, Q)
  -- A worker: a timer drives the flushes, the close hook saves the rest.
  -- A config check (core.timer answers false): memory only, nothing on disk.
  -- moongate test (no core.timer at all): no timer, but the spool works.
  q.active = timer.every(min(interval, 0.1), function() q:_tick() end)
  q.disk = q.active or core.timer == nil
  if q.active then
    timer.on_retire(function() q:_retire() end)
    timer.on_close(function() q:_close() end)
    local ok, err = core.mkdir(q.dir)
    if not ok then log(q, "error", "cannot create the spool directory: " .. tostring(err)) end
  end
  return q
end

return M
