-- moongate.core helpers that Lua code calls on the request path.
local core = require "moongate.core"

test("clean_utf8 hands clean text back as it is", function()
  for _, s in ipairs({ "", "gpt-4o-mini", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", string.rep("x", 5000) }) do
    eq(core.clean_utf8(s), s)
  end
end)

test("clean_utf8 turns every byte outside a valid character into ?", function()
  eq(core.clean_utf8("a\0b"), "a?b")
  eq(core.clean_utf8("\xff\xfe"), "??")
  eq(core.clean_utf8("ok \xe2\x82"), "ok ??")                 -- cut mid-character (a 1000-byte cut)
  eq(core.clean_utf8("\xc0\xafx"), "??x")                     -- overlong
  eq(core.clean_utf8("\xed\xa0\x80"), "???")                  -- a surrogate
  eq(core.clean_utf8("\xe2\x82\xac\x80\xc3\xa9"), "\xe2\x82\xac?\xc3\xa9")
end)

test("clean_utf8 refuses what is not a string", function()
  local ok, err = pcall(core.clean_utf8, 42)
  eq(ok, false)
  assert(tostring(err):find("string expected"), err)
  eq(pcall(core.clean_utf8), false)
end)

test("userdata methods refuse a value of another type, naming the type they want", function()
  local dict = core.shdict("test_core_check", 64 * 1024)
  eq(dict:set("k", "v"), true)
  eq(dict:get("k"), "v")
  local get = dict.get
  local ok, err = pcall(get, {}, "k")
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got table", 1, true), err)
  ok, err = pcall(get, io.stdout, "k")          -- a userdata of another type
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got userdata", 1, true), err)
  ok, err = pcall(get, newproxy(), "k")               -- a userdata of 0 bytes
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got userdata", 1, true), err)
  ok, err = pcall(get, require("cjson").null, "k")   -- a light userdata (NULL)
  eq(ok, false)
  assert(tostring(err):find("moongate.shdict expected, got userdata", 1, true), err)
end)
