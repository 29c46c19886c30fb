-- SHA-256 / HMAC-SHA256 against published test vectors (FIPS 180-2, RFC 4231).
local s = require "moongate.sha256"

test("sha256 vectors", function()
  eq(s.hex(s.sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
  eq(s.hex(s.sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  eq(s.hex(s.sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
  eq(s.hex(s.sha256(string.rep("a", 1000))), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
end)

test("hmac-sha256 vectors (RFC 4231 cases 1, 2, 6)", function()
  eq(s.hex(s.hmac_sha256(string.rep("\11", 20), "Hi There")),
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
  eq(s.hex(s.hmac_sha256("Jefe", "what do ya want for nothing?")),
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
  eq(s.hex(s.hmac_sha256(string.rep("\170", 131), "Test Using Larger Than Block-Size Key - Hash Key First")),
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
end)
