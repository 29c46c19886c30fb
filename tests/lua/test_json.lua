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
end)

test("member decodes escaped keys before comparing", function()
  eq(json.member('{"\\u006dodel":"m"}', "model"), '"m"')
  eq(json.member('{"a\\"b":1}', 'a"b'), "1")
  eq(json.member('{"\\ud83d\\ude00":1}', "\xf0\x9f\x98\x80"), "1")   -- a surrogate pair
  eq(json.member('{"\\ud83d":1}', "\xed\xa0\xbd"), false)             -- a lone surrogate is no key
end)

test("member refuses what is not one well-formed JSON object", function()
  local bad = { "", "  ", "[]", '"x"', "1", "{", '{"a"}', '{"a":1,}', '{"a":1 "b":2}', '{"a":"unterminated}',
                '{"a":[1,2}', "{a:1}", '{"a":01}', '{"a":1.}', '{"a":.5}', '{"a":tru}', '{"a":1}x',
                '{"a":"\\x"}', '{"a":"\\u12"}', '{"a":"tab\there"}', '{"a":1}{"b":2}',
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
