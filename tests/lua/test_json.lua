-- moongate.json: empty arrays that stay arrays, and in-place member edits.
local json = require "moongate.json"
local cjson = require "cjson"

test("empty arrays encode as []", function()
  eq(json.encode({ a = json.array({}) }), '{"a":[]}')
  eq(json.encode({ a = json.empty_array }), '{"a":[]}')
  eq(json.encode({ a = json.array({ 1, 2 }) }), '{"a":[1,2]}')
  eq(json.encode({ s = "moongate:empty-array" }), '{"s":"moongate:empty-array"}')
end)

test("set_member replaces a top-level member and keeps every other byte", function()
  local body = '{"messages":[{"role":"user","content":"say \\"model\\": no"}],"tools":[],' ..
               '"seed":123456789012345,"model" : "gpt-4o" ,"x":{"model":"inner"}}'
  local out = json.set_member(body, "model", '"upstream-m"')
  eq(out, '{"messages":[{"role":"user","content":"say \\"model\\": no"}],"tools":[],' ..
          '"seed":123456789012345,"model" : "upstream-m" ,"x":{"model":"inner"}}')
  eq(cjson.decode(out).x.model, "inner")
end)

test("set_member adds an absent member first, and handles the empty object", function()
  eq(json.set_member('{"a":1}', "stream_options", '{"include_usage":true}'),
     '{"stream_options":{"include_usage":true},"a":1}')
  eq(json.set_member(' { } ', "m", '"x"'), ' {"m":"x" } ')
  eq(json.set_member('{"m":1,"m":[1,{"m":2}]}', "m", "3"), '{"m":3,"m":3}')
end)

test("set_member refuses what is not an object", function()
  local bad = { "", "[]", '"x"', "{", '{"a"}', '{"a":1,}', '{"a":"unterminated}', '{"a":[1,2}', "{a:1}" }
  for _, text in ipairs(bad) do
    local out, err = json.set_member(text, "a", "1")
    eq(out, nil, text)
    eq(type(err), "string", text)
  end
  raises(function() json.set_member({}, "a", "1") end, "expected three strings")
end)

test("member_is says when set_member would change nothing, and false when unsure", function()
  local v = '"gpt-4o-mini"'
  assert(json.member_is('{"model":"gpt-4o-mini","messages":[]}', "model", v))
  assert(json.member_is('{ "messages": [], "model" : "gpt-4o-mini" }', "model", v))
  assert(json.member_is('{"model"\t:\r\n "gpt-4o-mini"\n}', "model", v))   -- any JSON whitespace
  eq(json.member_is('{"a b":"gpt-4o-mini"}', "a b", v), false)              -- a key that is not a plain name
  eq(json.member_is('{"model":"gpt-4o-mini"', "model", v), false)          -- nothing after the value
  -- an escaped quote never makes a second plain "model"
  assert(json.member_is('{"messages":[{"content":"say \\"model\\""}],"model":"gpt-4o-mini"}', "model", v))
  local unsure = {
    '{"model":"gpt-4o","messages":[]}',                       -- another value
    '{"model":"gpt-4o-mini-x"}',                              -- a longer value with that prefix
    '{"model":"gpt-4o-mini","model":"gpt-4o"}',               -- twice: a decoder takes the last
    '{"mod\\u0065l":"gpt-4o","model":"gpt-4o-mini"}',         -- an escaped spelling of the key
    '{"model":"gpt-4o-mini","x":"a \\u00e9"}',                -- any \u escape: the slow path
    '{"messages":[{"content":"x\\"model"}],"model":"gpt-4o-mini"}',   -- "model" inside a string
    '{"messages":[]}',                                        -- absent
  }
  for _, text in ipairs(unsure) do
    eq(json.member_is(text, "model", v), false, text)
    -- and set_member gives the same answer either way
    local out = json.set_member(text, "model", v)
    eq(cjson.decode(out).model, "gpt-4o-mini", text)
  end
  raises(function() json.member_is("{}", 1, v) end, "expected three strings")
end)

test("member finds top-level members' JSON text without decoding", function()
  local answer = '{"id":"c-1","choices":[{"message":{"content":"x","usage":"inner"}}],' ..
                 '"usage":{"prompt_tokens":3,"completion_tokens":5} ,"model":"gpt-4o-mini"}'
  local usage, model, absent = json.member(answer, "usage", "model", "nope")
  eq(usage, '{"prompt_tokens":3,"completion_tokens":5}')
  eq(model, '"gpt-4o-mini"')
  eq(absent, false)
  eq(json.member(' { "a" : [1, {"b": null}] } ', "a"), '[1, {"b": null}]')
  eq(json.member('{"n":-1.5e+3,"t":true,"f":false,"z":null}', "n"), "-1.5e+3")
  eq(json.member('{"a":1,"a":2}', "a"), "2")                   -- the last, as decoders keep
  eq(json.member('{}', "a"), false)
  -- what lua-cjson takes beyond RFC 8259, member takes too
  eq(json.member('{"a":"raw\tcontrol\ncharacters"}', "a"), '"raw\tcontrol\ncharacters"')
  for _, n in ipairs({ "01", "1.", "0x1F", "-inf", "NaN", "Infinity" }) do
    eq(json.member('{"a":' .. n .. '}', "a"), n)
    eq(type(cjson.decode('{"a":' .. n .. '}')), "table")
  end
end)

test("member decodes escaped keys before comparing", function()
  eq(json.member('{"\\u006dodel":"m"}', "model"), '"m"')
  eq(json.member('{"a\\"b":1}', 'a"b'), "1")
  eq(json.member('{"\\ud83d\\ude00":1}', "\xf0\x9f\x98\x80"), "1")   -- a surrogate pair
  eq(json.member('{"\\ud83d":1}', "\xed\xa0\xbd"), false)             -- a lone surrogate is no key
end)

test("member refuses what is not one well-formed JSON object", function()
  local bad = { "", "  ", "[]", '"x"', "1", "{", '{"a"}', '{"a":1,}', '{"a":1 "b":2}', '{"a":"unterminated}',
                '{"a":[1,2}', "{a:1}", '{"a":.5}', '{"a":+1}', '{"a":-}', '{"a":tru}', '{"a":1}x',
                '{"a":"\\x"}', '{"a":"\\u12"}', '{"a":"nul\0"}', '{"a":1}{"b":2}',
                '{"a":' .. string.rep("[", 1001) .. string.rep("]", 1001) .. "}" }
  for _, text in ipairs(bad) do
    local v, err = json.member(text, "a")
    eq(v, nil, text)
    assert(type(err) == "string" and err ~= "", text)
  end
  eq(json.member('{"a":' .. string.rep("[", 900) .. string.rep("]", 900) .. "}", "b"), false)
  eq(pcall(json.member, {}, "a"), false)
  eq(pcall(json.member, "{}"), false)
  eq(pcall(json.member, "{}", 1), false)
end)

-- json.member's scan decides whether an upstream answer is a JSON object (the
-- relay answers 502 otherwise). Differential check against cjson on texts
-- generated and then mutated byte by byte (a fixed seed: the same texts every
-- run): whenever cjson decodes an object, member must accept it and find the
-- same members; whenever member accepts, cjson must decode an object.
-- (cjson also takes what JSON does not -- NaN, Infinity, hex numbers, leading
-- zeros -- which member refuses; those texts are left out of the generator's
-- alphabet and the mutations do not produce them.)
test("member finds a string's end wherever it falls in the 8-byte steps of the scan", function()
  -- The scan skips plain string content a word at a time: a quote, a
  -- backslash or a NUL at any offset must still be seen, and a stop byte's
  -- neighbours (0x21, 0x23, 0x5b, 0x5d, 0x01) must not be taken for one.
  local fill = "ab!#[]\1c\239\191\189xyz0123456789"
  for len = 0, 24 do
    local content = fill:rep(2):sub(1, len)
    for _, tail in ipairs({ "", "\\n", '\\"', "\\u00e9" }) do
      local text = '{"a":"' .. content .. tail .. '","b":1}'
      local a, b = json.member(text, "a", "b")
      eq(a, '"' .. content .. tail .. '"')
      eq(b, "1")
      eq(json.member('{"a":"' .. content .. tail .. '\0","b":1}', "b"), nil)   -- NUL: refused, as cjson does
      eq(json.member('{"a":"' .. content .. tail, "a"), nil)                 -- unterminated
    end
  end
end)

test("member agrees with cjson on generated and mutated texts", function()
  local seed = 12345
  local function rand(n)                  -- Park-Miller: exact in doubles, the same every run
    seed = seed * 16807 % 2147483647
    return seed % n + 1
  end
  local strings = { '"a"', '"model"', '"usage"', '"x\\"y"', '"\\u006d"', '"tab\\t"', '""', '"caf\xc3\xa9"' }
  local scalars = { "0", "-1", "12.5", "1e3", "-0.25E-2", "true", "false", "null" }
  local function value(depth)
    local r = rand(depth > 3 and 2 or 4)
    if r == 1 then return strings[rand(#strings)] end
    if r == 2 then return scalars[rand(#scalars)] end
    local parts = {}
    if r == 3 then
      for i = 1, rand(4) - 1 do parts[i] = value(depth + 1) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    for i = 1, rand(4) - 1 do parts[i] = strings[rand(#strings)] .. ":" .. value(depth + 1) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  local noise = { "{", "}", "[", "]", ",", ":", '"', "\\", " ", "1", "-", ".", "e", "t", "n", "\n", "\0" }
  local checked, accepted = 0, 0
  for _ = 1, 3000 do
    local parts = {}
    for i = 1, rand(4) - 1 do parts[i] = strings[rand(#strings)] .. ":" .. value(1) end
    local text = "{" .. table.concat(parts, ",") .. "}"
    if rand(2) == 1 then                  -- mutate: replace, insert or delete one byte
      local at, how = rand(#text), rand(3)
      local c = noise[rand(#noise)]
      if how == 1 then text = text:sub(1, at - 1) .. c .. text:sub(at + 1)
      elseif how == 2 then text = text:sub(1, at - 1) .. c .. text:sub(at)
      else text = text:sub(1, at - 1) .. text:sub(at + 1) end
    end
    local _, obj = pcall(cjson.decode, text)
    local is_object = type(obj) == "table" and (next(obj) == nil and text:match("^%s*{") ~= nil or obj[1] == nil)
    local model, usage = json.member(text, "model", "usage")
    checked = checked + 1
    if is_object then
      accepted = accepted + 1
      assert(model ~= nil, "member refused what cjson decoded as an object: " .. text)
      if type(obj.model) == "table" then
        assert(model and model:find("^[%[{]"), text)
      else
        local got = nil
        if model then got = cjson.decode("[" .. model .. "]")[1] end
        eq(got, obj.model, text)
      end
      eq(usage == false, obj.usage == nil, text)
    else
      eq(model, nil, "member accepted what cjson did not decode as an object: " .. text .. " (cjson: " .. tostring(obj) .. ")")
    end
  end
  assert(checked == 3000 and accepted > 600 and accepted < 2800, accepted)
end)

test("member gives one result per key, or nil and the reason", function()
  local text = '{"a":1,"b":"x","c":[2],"d":null}'
  eq(select("#", json.member(text, "a")), 1)
  eq(select("#", json.member(text, "a", "b")), 2)
  eq(select("#", json.member(text, "a", "b", "c")), 3)
  eq(select("#", json.member(text, "a", "b", "c", "d")), 4)
  local a, b, c, d = json.member(text, "a", "zz", "c", "d")
  eq(a, "1"); eq(b, false); eq(c, "[2]"); eq(d, "null")
  for n = 1, 4 do
    local keys = { "a", "b", "c", "d" }
    eq(select("#", json.member("[1]", unpack(keys, 1, n))), 2)
    local v, err = json.member("[1]", unpack(keys, 1, n))
    eq(v, nil); eq(type(err), "string")
  end
  raises(function() json.member(text) end, "expected a text and key strings")
  raises(function() json.member(text, "a", 5) end, "string expected")
end)
