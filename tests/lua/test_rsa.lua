-- RSA public keys and RS256 (RSASSA-PKCS1-v1_5 + SHA-256) verification in
-- pure Lua (moongate.rsa), against vectors made with the openssl CLI
-- (OpenSSL 3.0). Only public keys and signatures are pasted here. They
-- were generated with:
--
--   openssl genrsa -out k2048.pem 2048        (also k4096 4096, kother
--   openssl genrsa -out k1024.pem 1024         2048, k1024 1024)
--   openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
--     -pkeyopt rsa_keygen_pubexp:3 -out k2048e3.pem
--   openssl rsa -in K.pem -pubout                  -> *_spki
--   openssl rsa -in K.pem -RSAPublicKey_out        -> *_pkcs1
--   openssl rsa -in k2048.pem -noout -modulus      -> k2048_jwk_n (base64url)
--   openssl dgst -sha256 -sign K.pem msg.txt       -> sig* (base64)
--     with msg.txt = "moongate RS256 test vector" (no newline); sig2048_msg2
--     signs the same text plus "!", sig2048_sha512 uses -sha512
--   bad_*: a hand-made encoded message EM (256 bytes) put through the raw
--     private operation, so that s^e mod n = EM exactly:
--     openssl pkeyutl -decrypt -inkey k2048.pem -pkeyopt rsa_padding_mode:none
--     (the EMs are rebuilt below and compared with what verification sees)
--   ecp256_spki: openssl ecparam -genkey -name prime256v1 | openssl ec -pubout
local rsa = require "moongate.rsa"
local sha = require "moongate.sha256"

local F = {
k2048_spki = [[
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAt7bmAUQElGPXCq6tDpir
nMN5p8aymUVQvYngPY4GN/UoOOpUi4USgrgvaOqff001Xrs+SWIuKse4jEzjjfuF
iBFdDKxztmnUXe8rft9grDxkObTBzTyLR6BTP+N6EZkwvgBsqzsFO4b16tgEB3ZN
fmDTLppk3L4uNxx0Lhg0bVxVFYgm48s3pLD0GzhC+Va5a0SCeiAr/l9Y/gL6zs91
qxkvjMx8bRlqpRuOBWFLrNzSlo64w3rC8Itt3pKQrjAJAd2w8yqJrBmK+j5fXZmE
IHwYih4mrpntYz137cdW8ReIci619kDGui7p81S5S8kJmkJa9Pi1vQWbyV55juM0
+QIDAQAB
-----END PUBLIC KEY-----
]],
k4096_spki = [[
-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAtMQ7H+O2+rvS9Hdx9bJZ
ozv5li/mbvQQTwAw3Bz8veKDgdhgFZ7QNBQ/I4ucCRG5G1pJwdLpXOUMFLit5K5v
rZfbV+Yp8J/VaNU4/B7NHb4jCN3bMOKRWE+KY/Wy/tVph/E/jnNJMKtfIjaylXkH
JqbutUPQ7o7m+giJFLWSu65/uiaum8wV6tAyIs66YDeksAgdkpKiAQI5JvkB+/6b
LVuQwaijhSvbTmIoQZTSABgzdqmgjX7hDxPOUOV1wVeraAcyPovnTB/xZcjzT4sp
pSJdfzzIDAJ/VtsmqyQdawqHpFXo6xf8VA3VRsGAb8Q3RW/e/cajqIaFo1PeRf7c
70EZJ12oqp9W8EqDAAyAevV0TLGxlOnT2qQabZSyLthJ/o2U32UqO9hu4r/fm5+F
BMgllWDg5nARwH9zRoQG9llDbv+oz9/w+19TWtKq+sdcato9RPHFT0de/hQrE597
BEUu9ipl7SPz0eb6jbccYRwlAJlCZVN/SE29x0/MTjaE58SzMfNCn7S3dYIERRvy
1pGk1429aydCXVsI2to2poNB3eS2yc+mhZ826eQu56yx28tpAMdfNcCOZ8I+5ezu
Yai+caVza9LsVgMqbeadIoZSw2Cf9fhkTvUFSWeQinS9aZDhjmF20eNW5PbHxMz5
zw9gPY8tJNy3TFrNSyzoadMCAwEAAQ==
-----END PUBLIC KEY-----
]],
kother_spki = [[
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAlVWBkkkHBLHuAvltjA2q
ojqdrJtvGhfPnPnxKKY35QXIVszN8p8OmPI1nBV99IQkJWUtWD1uev0c4P22AWXU
LGxcYrr3cjhyBbn/2sDDE3zCeimwkytH1JEYW20QeZAjX4Xiq1kmOkSBcio/wd61
h2r4p2TPKWLN6maZU3fulX4h6AOHQH/aA7i0Lpm/ZKE8I3pzDD+4xRbw2DkZjfm5
Cc7UDGVBvM/sVlquCE+mP3UbE17n5iE+Xkase0EhUCyx/TS+yRJBdradZLyure3Q
ptRPqmapLqbe6AF0D+g++1XNgWiaDOEbrS+Es3jjMEKD2Ep/WrvWOnI1vcT4VrXy
EQIDAQAB
-----END PUBLIC KEY-----
]],
k1024_spki = [[
-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCZk/DdsYH04QSnlDiVZSCzJK5G
DCpxygdX+ZwxT76n+mV4ayrEDfyK5onUd9LiDC2SMJCuqMhS4esBATxX4eB7ne0O
lgswi9tCKwVRwfYs/UPtwXK9btoSm36FawTEk2hds9YZXZ/tzrSdPonHmb2OnHX2
6Haj0XPMVj5Aod2OCQIDAQAB
-----END PUBLIC KEY-----
]],
k2048e3_spki = [[
-----BEGIN PUBLIC KEY-----
MIIBIDANBgkqhkiG9w0BAQEFAAOCAQ0AMIIBCAKCAQEAv8x6wvo6Rf+rV3ThGFsh
2ZHm0xFqs9ZL9cg4OnT5UXfQ54rLNlcCJ6ulZiiZzm4x4nQNjLoH2rx+zZyXctwW
ehenYUKh9m7Gw3Kgtx4YJYloaHfKpw6MzHFxNpNj7mdzQaZVib0ALz9ChmJoyMVn
wr6m2YP5wf7A+De/fI041t8xC+LOxlvb0M6yPcM8lCMHB0KExqR+BXN5AR0AT0qA
16+RSthfOz7uDFh48FspU5JiEbyeIs1hRKdlekihMDbmcXm8mDeDDD5V8ehQRAGC
Uk1X+gd2V+0dOb19qBtiui6IJTt4f35+PkBDzNTtiDysFcjfh5kLZ/CA7T4WrIeU
4QIBAw==
-----END PUBLIC KEY-----
]],
k2048_pkcs1 = [[
-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAt7bmAUQElGPXCq6tDpirnMN5p8aymUVQvYngPY4GN/UoOOpUi4US
grgvaOqff001Xrs+SWIuKse4jEzjjfuFiBFdDKxztmnUXe8rft9grDxkObTBzTyL
R6BTP+N6EZkwvgBsqzsFO4b16tgEB3ZNfmDTLppk3L4uNxx0Lhg0bVxVFYgm48s3
pLD0GzhC+Va5a0SCeiAr/l9Y/gL6zs91qxkvjMx8bRlqpRuOBWFLrNzSlo64w3rC
8Itt3pKQrjAJAd2w8yqJrBmK+j5fXZmEIHwYih4mrpntYz137cdW8ReIci619kDG
ui7p81S5S8kJmkJa9Pi1vQWbyV55juM0+QIDAQAB
-----END RSA PUBLIC KEY-----
]],
k4096_pkcs1 = [[
-----BEGIN RSA PUBLIC KEY-----
MIICCgKCAgEAtMQ7H+O2+rvS9Hdx9bJZozv5li/mbvQQTwAw3Bz8veKDgdhgFZ7Q
NBQ/I4ucCRG5G1pJwdLpXOUMFLit5K5vrZfbV+Yp8J/VaNU4/B7NHb4jCN3bMOKR
WE+KY/Wy/tVph/E/jnNJMKtfIjaylXkHJqbutUPQ7o7m+giJFLWSu65/uiaum8wV
6tAyIs66YDeksAgdkpKiAQI5JvkB+/6bLVuQwaijhSvbTmIoQZTSABgzdqmgjX7h
DxPOUOV1wVeraAcyPovnTB/xZcjzT4sppSJdfzzIDAJ/VtsmqyQdawqHpFXo6xf8
VA3VRsGAb8Q3RW/e/cajqIaFo1PeRf7c70EZJ12oqp9W8EqDAAyAevV0TLGxlOnT
2qQabZSyLthJ/o2U32UqO9hu4r/fm5+FBMgllWDg5nARwH9zRoQG9llDbv+oz9/w
+19TWtKq+sdcato9RPHFT0de/hQrE597BEUu9ipl7SPz0eb6jbccYRwlAJlCZVN/
SE29x0/MTjaE58SzMfNCn7S3dYIERRvy1pGk1429aydCXVsI2to2poNB3eS2yc+m
hZ826eQu56yx28tpAMdfNcCOZ8I+5ezuYai+caVza9LsVgMqbeadIoZSw2Cf9fhk
TvUFSWeQinS9aZDhjmF20eNW5PbHxMz5zw9gPY8tJNy3TFrNSyzoadMCAwEAAQ==
-----END RSA PUBLIC KEY-----
]],
k2048_jwk_n = "t7bmAUQElGPXCq6tDpirnMN5p8aymUVQvYngPY4GN_UoOOpUi4USgrgvaOqff001Xrs-SWIuKse4jEzjjfuFiBFdDKxztmnUXe8rft9grDxkObTBzTyLR6BTP-N6EZkwvgBsqzsFO4b16tgEB3ZNfmDTLppk3L4uNxx0Lhg0bVxVFYgm48s3pLD0GzhC-Va5a0SCeiAr_l9Y_gL6zs91qxkvjMx8bRlqpRuOBWFLrNzSlo64w3rC8Itt3pKQrjAJAd2w8yqJrBmK-j5fXZmEIHwYih4mrpntYz137cdW8ReIci619kDGui7p81S5S8kJmkJa9Pi1vQWbyV55juM0-Q",
sig2048 = "YQjGoAbQ+pkDKkb/oVLTQ4gW2d/eJvG4RPoLYCpiWrtgw4leN8vBN1gqlPC2Ifd9gHuRmN4WV4I0RMBdV+MrpFdpfQI5/zNKn5jZ/HRiE/2vDBoxLveqL0gRJqzSOXyCdxcakxTjB0gyQlK1emoUKHMgtMsDImHmCvqCZc9B8w1oICLXEff859ay+gCrHF6grTOPwNesikwOuKJlLmlVzI+LXVi/4iItwRnDS84hNMSky1aXt4lrx5CgZ6JNi6nBNChtYYGtEZJs91uXgsfq1e7iVyC+F4Q36AcVSent85cVHPziydBW18AnOB3o5KytFTDdCTF9NnKxAALmX3Hg/Q==",
sig4096 = "YPEex7Z+k8LEU903EQ/yupIrFqwYttvA4ufQ9s5Uflzxq7KcgeLUGpr9UBzk5RO1ibt+MN9IsUmfpDh26obX0ON5yej80H0hmH7uEjmYrmbV3CV2sqdSy+hQ3QudFh18dFl212DhLHEhg1LXwn8fAYZ919zCCmQjaQp9/FxzAHa5nVphHpZYcU20o8ViLNUwSmLm6rlqijYGMABxBOL1Egw/KrBRabrzIEvONoJuMVOxWPrRQQ5eX82vVQBQ8SeNRx7gDsBuBflh4s0TgFLBNdfr4zL8FECpgGvd+6vrlStVk1GGc9xY4ajgN+rLU77DERAmmEo2xS6P59vA91vx0puUKVhyvldj3Rp60C4c3G9Fn76hzj+hN6qJRKANK9LVzGiRdUEGDVQVTrkY7/X6Anhm1mWPuL8ao2Dcsvj3tHdhkt6FUPDsO4A6zxAZOURZAZd3sxFmXLANdss8rjcs3h0noQD1sCanSG2gZoXnm3vt9/mvBFlMqco4ExIALK1FpnDIs7OprGdrZg5I0LEs9ztMJuxIEQu4CH/6OEy/fdOlsmeJUqFxf7z5ZcfF3A1Wkz2wZW3j0rC6e3DEylQRhX3WO52UEoMF+JRAoqXRJTiYHP251imQ0IdOtEVkVPyQlmkbICvP6o0OIfAlKSafq4nQAvtkLtfX0TN3UF67a3Q=",
sig2048e3 = "lmZ/My1UktmwFtVqLhttm+CQHRH+Qq++4sFrsilMPJi4Y9YZImnddcSNNUEjQnBMzmbVkEmmG2aDhRiUpVP5VGW90rs7w2ClrHZDlZ2Z6hAe/2X5+akWVP/kJOCD5urXqMNdyYtiTQSCqtKlJaPprU7BBMtQtiApciUjBSky7RYQ+f/OZUs7kdGsp6hXnBe9/BAvPSfJG5KHlO+ZMpDDdhraols8GmDfQv/ad82ljY8+TJSA2goG20lUvmlB0OGj+l5/jMo5xjmmICXQFq/RRG2yKjzvcj+NiopmL/S02gym22m0sgU+ricc6BInfR8N3a+dmsYslo3n5K+LD4GUtg==",
sig_other = "daQmxss2KgWnM5B4xVoyMYJDUdUS4k+wICh98JKo6O8GooZVsWkZWr7RI9wproAqnbmOUgk+YXUfjrTitXFcPZoPskc9qIKoMluyKS3xofX5QMvI0SXD0nk2wLkNFFGrUEGTbPAcSsL3oJbtxk/o2aiaLtRdHgcSEtllA6qX3YBjICp3ogAlbciIV/NdvYMMm1d2GC5LEsHN8z67mRA2HmQVEfq8+98ZJL7IwOgvnN48mb6qDZ5wMJTX3aDMAhgZRJ2eHApI/U0bqNNv6hjsAAx4x3/tuNV5y5sXSGsLIQ7Rlhr35/hLbhiJnVYfqh07OlpxlkYsXuDP4i7H+BOsFw==",
sig2048_sha512 = "hEuVtFi/MkH4stWfcxI5a8i5dPQpcrfAixchXDeR1aWOMvPKfpOfyTEoxhpGahWIgAKk10ldH/qGTNRqx5xNIRt4gLaNiMiXQGmnpVzwEgoXqhSMe/ZG05wp02R/+ViI7XJRuc3gn7V9aKuOEL0WuZoiqzT6AXtDkvCA3boJFIbrgq06PsgEpf1MCY/QNsS23aI+DdJkeLKV3Sy6IeFfAGY36YeZ0WzmyARf44lmIdPJYaD4trsOdFgA0IYAiLJRG3PjUpYwof9HN0TXfbEtOuSf6oChtIqO7mBgdVNEH6WhvnsNQXuTkbOMy9v+ogOYA4rKgxZKFDJMBsJubcmckw==",
sig2048_msg2 = "p+S+23qsaPjPwzYd9/E+EUpOeooWuJyQQjibSQcinaqxfy/fBaxi0k7/39224YBhETHrPjSAIQwoShQavSDDTzect5toIQza8jDY5X65R16iYb0yzwob22Y8trporu8DzVOOpL6GXSI6rDV9zulDTkzZnwRLFYcZS3VG5YVLExovqJK5MaiOeVYRMLq8+1ECPP++NQTRqir724jFy1bi7Faua9Bv0xi5VRoscSCzFhYLa6BDqTpg0fnkiuYxP6kcMCe2EZ5hEqWiS+emfX7BTmvOtGbwjmVWSGZPiRlwEVf9t6fdwyXLl8WRQFm1NH1nK5Q9XMlgWbqwlJAMAMy3Qw==",
bad_bt2 = "REbxvVmgMLAZS1Tngulz6lIc/OksOPXx7ZPHPF0PW0fR4U2DrCIeKBL7kdbUgWDhXL2k/uw4Dm5vyxAml3RkBIZVht+drb+JsHCCPBwyJlm28R2rCq40cyOs5wznr/pYB20nOqK52+YuknBUoI3taUxYzOlctVIPUpyne8e0isk6MF9I8avYjL6quDHWaNYcutwd3/RdfkKXAEai8ZSE2ZE+/aNZVfSHuDMPLp9eiZ+3cGsv9YVGQcUibMLQfHEseY2ukWhlvWMbQcbmxLgMIoJZue6pY7BEscmGiHjwZMSqTFE/ecAjzNng2TN7Gj6IzAhLsHaqzDJ4JxXug51WTg==",
bad_nonull = "RCKCY73SLsPX6WxAD5EJTzAVbzdKSZaIrkT8sNtI3uLo+7veI1ZpdK4IfZSdvXnWHqngpMxv5wReGAq3QG/iobHtVFl3fD1cFCCfgpz+YwdONAjKWA7PHMzwABYIoHQd+5/Nn09uFxgLkOG/JvBI31n5bxtsl5bI0eXWJ6U3S5SG5hRFZ16EHSplG63M/Dg8djdA1XxhfR6uy6wesUOxMjkNMg1MThjX94axwt537Qd2OWqIzzVLgeUtpBKXB2rf1w7lq+xRKJQPAvlemELMJsoc4SaFaEAc/qktJoYiJWfYaDS8eHPb63z8zMW/lXmeZyaR9GQM0YIuemfJhlzlOg==",
bad_garbage = "ZNCDSd7upkx3f2jWMB1duG+msNlxaf1x/bbBTs+VWDkiXb64QtKu38J38FMGI7xq4nEEySuaRnpWduzGHxxGo+y5R0Db63SGcE4GA2HsctI/HkATlKpdnZ2M1sgOgAk3ZlHMdZvhVMF+NyE0q2Td8WdXJGVHbkyJ+MLN6Dr4ddb0f12p8/IZFdgy5L9ZfOpxACGcrX0QQsxKbDsIB300ZHfK33Z3ylk3M6wYIyK0pc3PsdKXADGBoNg+w93jAD6eIbifsMW5rXnsuJ0c3Qu28tBgGS53F4lJh3Ms9V4Zcv2gj2QEC9g86z6SFfB/IqhIq5ORjsXKuOyOxWFSs8ve1A==",
bad_zero_in_ps = "pGTwicbIEA4nhaVOFDCEptKTKuFyvxwg27At/1pDMJrtV8GyLyLsJDmLXtTutJSl8GbHuTtWQPCHcaqV5/bqCs/3BR1PpbnrQg5umOjYXKS6Wl9mvyx0BrqJbEYeBY3or1SaCg76wuWIH8PFld+EU4/MzXX4yHH0/qVPtnGSc6f647KjQdZVUNVA7T1DyW47xQMcfeEzddIcrv2sDDZEZAEUZmOvuP1kC/WaHbbFZReug9M8MGOSQx8cAwO8sN2bLMJBzyOgF3WFuXjIJQM6d6Y/n9DX008XZfsdAdKbM1W/sJHgNi98VvdZ9bUWCQJdh0wjgXIKgfzltWYMwZC7EA==",
bad_short_ps = "apMLREYUYpNaWv9KUFjBHKbfTdRjAuoG6T95RPTuWtTh38XwZsZftZzOiOq6CZlytoeu438iHLQQpYF9pz8EVHODVYgQ4mVVyjTEYL2aEVmdOezylI3PUhb+secdhSU170VUENE/Bx/FFie+jmiLG58BsgBmtpDmStMESEnGhbmUZWBvtrjB75ulQzXQu/g8tCgKcvW62uORJUzcXzudbAkcB5ebncZP1twWlhTWwM827ys0fARh7SGH4psPHOKY9NxZoytVTGoYd/CF3k8L4RlqzyvxZbNJs8X3Ycid6S8Mc/JuWcBN2BvUGAV8L6e7APM34WCWkv681kUsEvB/RQ==",

ecp256_spki = [[
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEjnmvExs4e3948EWwzLh5oq6tDDyD
gfM5prfJgwmnNasfM2DhKrPs0x/UKb/l7egEiBTFDsAF6Lpo4NePqvTJEA==
-----END PUBLIC KEY-----
]],
}

local MSG = "moongate RS256 test vector"
local H = sha.sha256(MSG)
local PREFIX = "\48\49\48\13\6\9\96\134\72\1\101\3\4\2\1\5\0\4\32"
local d = rsa.base64_decode

local function key(pem) return assert(rsa.parse_pem(pem)) end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)                       -- for building PEMs in the tests
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    for j = 3, 0, -1 do
      local v = math.floor(n / 64 ^ j) % 64
      out[#out + 1] = B64:sub(v + 1, v + 1)
    end
    if not b then out[#out] = "="; out[#out - 1] = "=" elseif not c then out[#out] = "=" end
  end
  return table.concat(out)
end
local function pem(label, der)
  return "-----BEGIN " .. label .. "-----\n" .. b64(der) .. "\n-----END " .. label .. "-----\n"
end
local function der_of(p) return d(p:match("%-\n(.-)%-%-%-%-%-END")) end

local function flip(s, i, mask)
  return s:sub(1, i - 1) .. string.char(bit.bxor(s:byte(i), mask or 1)) .. s:sub(i + 1)
end

local function fails(want, k, err)
  eq(k, nil)
  if not tostring(err):find(want, 1, true) then
    error(string.format("%q does not contain %q", tostring(err), want), 2)
  end
end

test("keys: SPKI, PKCS#1 and JWK forms give the same key", function()
  local a, b = key(F.k2048_spki), key(F.k2048_pkcs1)
  eq(a.bits, 2048); eq(a.len, 256); eq(a.e, 65537)
  eq(a.n, b.n); eq(a.e, b.e)
  local j = assert(rsa.from_jwk({ kty = "RSA", n = F.k2048_jwk_n, e = "AQAB" }))
  eq(j.n, a.n); eq(j.e, 65537)
  local c = key(F.k4096_spki)
  eq(c.bits, 4096); eq(c.len, 512)
  eq(key(F.k4096_pkcs1).n, c.n)
  eq(key(F.k2048e3_spki).e, 3)
  -- text around the block and CRLF line ends are fine
  eq(key("some comment\r\n" .. F.k2048_spki:gsub("\n", "\r\n")).n, a.n)
end)

test("verify: openssl signatures for 2048, 4096 and e = 3 keys", function()
  eq(rsa.verify_pkcs1_sha256(key(F.k2048_spki), MSG, d(F.sig2048)), true)
  eq(rsa.verify_pkcs1_sha256(key(F.k2048_pkcs1), MSG, d(F.sig2048)), true)
  eq(rsa.verify_pkcs1_sha256(key(F.k4096_spki), MSG, d(F.sig4096)), true)
  eq(rsa.verify_pkcs1_sha256(key(F.k4096_pkcs1), MSG, d(F.sig4096)), true)
  eq(rsa.verify_pkcs1_sha256(key(F.k2048e3_spki), MSG, d(F.sig2048e3)), true)
  eq(rsa.verify_pkcs1_sha256(key(F.kother_spki), MSG, d(F.sig_other)), true)
  eq(rsa.verify_pkcs1_sha256(key(F.k2048_spki), MSG .. "!", d(F.sig2048_msg2)), true)
  -- the recovered encoded message is exactly the EMSA-PKCS1-v1_5 one
  eq(rsa.raw_public(key(F.k2048_spki), d(F.sig2048)),
     "\0\1" .. string.rep("\255", 202) .. "\0" .. PREFIX .. H)
end)

test("verify: flipped bits, wrong key, wrong message, wrong hash", function()
  local k = key(F.k2048_spki)
  local sig = d(F.sig2048)
  for _, i in ipairs({ 1, 2, 100, 255, 256 }) do
    eq(rsa.verify_pkcs1_sha256(k, MSG, flip(sig, i)), false, "bit flipped in byte " .. i)
  end
  eq(rsa.verify_pkcs1_sha256(k, MSG, flip(sig, 128, 0x80)), false)
  eq(rsa.verify_pkcs1_sha256(k, flip(MSG, 3), sig), false)
  eq(rsa.verify_pkcs1_sha256(k, MSG, d(F.sig_other)), false)          -- another key's signature
  eq(rsa.verify_pkcs1_sha256(key(F.kother_spki), MSG, sig), false)     -- checked with the wrong key
  eq(rsa.verify_pkcs1_sha256(k, MSG, d(F.sig2048_msg2)), false)        -- signs another message
  eq(rsa.verify_pkcs1_sha256(k, MSG, d(F.sig2048_sha512)), false)      -- SHA-512 DigestInfo
  eq(rsa.verify_pkcs1_sha256(key(F.k4096_spki), MSG, d(F.sig2048)), false)
end)

test("verify: signature length must equal the modulus length, s < n", function()
  local k = key(F.k2048_spki)
  local sig = d(F.sig2048)
  eq(rsa.verify_pkcs1_sha256(k, MSG, sig:sub(2)), false)
  eq(rsa.verify_pkcs1_sha256(k, MSG, sig:sub(1, -2)), false)
  eq(rsa.verify_pkcs1_sha256(k, MSG, "\0" .. sig), false)             -- same value, 257 bytes
  eq(rsa.verify_pkcs1_sha256(k, MSG, sig .. "\0"), false)
  eq(rsa.verify_pkcs1_sha256(k, MSG, ""), false)
  eq(rsa.verify_pkcs1_sha256(k, MSG, nil), false)
  eq(rsa.raw_public(k, k.n), nil)                                      -- s = n
  eq(rsa.raw_public(k, string.rep("\255", 256)), nil)                  -- s > n
  local nb = { k.n:byte(1, -1) }                                       -- s = n + 1
  local i = #nb
  while nb[i] == 255 do nb[i] = 0; i = i - 1 end
  nb[i] = nb[i] + 1
  eq(rsa.raw_public(k, string.char(unpack(nb))), nil)
  -- s = n - 1 is below n: computed, then refused by the encoding check
  local nm1 = flip(k.n, 256, 1)                                        -- n is odd
  eq(rsa.raw_public(k, nm1), nm1)                                      -- (-1)^65537 = -1
  eq(rsa.verify_pkcs1_sha256(k, MSG, nm1), false)
  eq(rsa.raw_public(k, string.rep("\0", 255) .. "\1"), string.rep("\0", 255) .. "\1")   -- 1^e
  eq(rsa.raw_public(k, string.rep("\0", 256)), string.rep("\0", 256))                   -- 0^e
end)

test("verify: every other padding structure is refused", function()
  local k = key(F.k2048_spki)
  local ff = function(n) return string.rep("\255", n) end
  local ems = {
    bt2 = "\0\2" .. ff(202) .. "\0" .. PREFIX .. H,
    nonull = "\0\1" .. ff(204) .. "\0" .. "\48\47\48\11\6\9\96\134\72\1\101\3\4\2\1" .. "\4\32" .. H,
    garbage = "\0\1" .. ff(8) .. "\0" .. PREFIX .. H .. string.rep("\66", 194),
    zero_in_ps = "\0\1" .. ff(100) .. "\0" .. ff(101) .. "\0" .. PREFIX .. H,
    short_ps = "\0\1" .. ff(7) .. "\0" .. PREFIX .. H .. string.rep("\0", 195),
  }
  for name, em in pairs(ems) do
    eq(#em, 256, name)
    local sig = d(F["bad_" .. name])
    eq(rsa.raw_public(k, sig), em, name .. " decodes to the crafted message")
    eq(rsa.verify_pkcs1_sha256(k, MSG, sig), false, name)
  end
end)

test("keys: too small, malformed, not RSA, not public: clear errors", function()
  fails("RSA key of 1024 bits is too small (at least 2048)", rsa.parse_pem(F.k1024_spki))
  fails("not a PEM block", rsa.parse_pem("MIIBIjANBgkqhkiG9w0BAQEFAAOC"))
  fails("expected a PEM string", rsa.parse_pem(nil))
  fails('got "BEGIN RSA PRIVATE KEY" (give the public key',
        rsa.parse_pem("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----"))
  fails('got "BEGIN CERTIFICATE"', rsa.parse_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"))
  fails("labels differ", rsa.parse_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----"))
  fails("not valid base64", rsa.parse_pem("-----BEGIN PUBLIC KEY-----\nAA*A\n-----END PUBLIC KEY-----"))
  fails("not an RSA key", rsa.parse_pem(F.ecp256_spki))
  local der = der_of(F.k2048_spki)
  fails("trailing data", rsa.parse_pem(pem("PUBLIC KEY", der .. "\0")))
  fails("truncated", rsa.parse_pem(pem("PUBLIC KEY", der:sub(1, -2))))
  -- a PKCS#1 body under the SPKI label, and the other way round
  fails('under "BEGIN PUBLIC KEY" is a PKCS#1', rsa.parse_pem(pem("PUBLIC KEY", der_of(F.k2048_pkcs1))))
  fails('under "BEGIN RSA PUBLIC KEY" is a SubjectPublicKeyInfo', rsa.parse_pem(pem("RSA PUBLIC KEY", der)))
  fails("expected tag 0x30", rsa.parse_pem(pem("RSA PUBLIC KEY", "\2\1\0")))
  -- 30 82 01 22 | 30 0d 06 09 <oid> 05 00 | 03 82 01 0f 00 <RSAPublicKey>:
  -- byte 24 is the BIT STRING's unused-bits count
  eq(der:byte(24), 0)
  fails("unused bits", rsa.parse_pem(pem("PUBLIC KEY", flip(der, 24, 1))))
  -- the NULL parameters replaced by something else
  eq(der:sub(18, 19), "\5\0")
  fails("parameters", rsa.parse_pem(pem("PUBLIC KEY", der:sub(1, 17) .. "\4\0" .. der:sub(20))))
  -- PKCS#1: 30 82 01 0a 02 82 01 01 00 <n> 02 03 01 00 01
  local p1 = der_of(F.k2048_pkcs1)
  eq(p1:byte(9), 0)
  fails("negative INTEGER", rsa.parse_pem(pem("RSA PUBLIC KEY", p1:sub(1, 8) .. "\128" .. p1:sub(10))))
  fails("shortest form", rsa.parse_pem(pem("RSA PUBLIC KEY", p1:sub(1, 9) .. "\0" .. p1:sub(11))))
  fails("indefinite length", rsa.parse_pem(pem("RSA PUBLIC KEY", "\48\128" .. p1:sub(5))))
  fails("shortest form", rsa.parse_pem(pem("RSA PUBLIC KEY", "\48\130\0\10" .. p1:sub(5, 5))))
end)

test("keys: JWK checks", function()
  local n = F.k2048_jwk_n
  fails("kty", rsa.from_jwk({ kty = "EC", n = n, e = "AQAB" }))
  fails("alg", rsa.from_jwk({ kty = "RSA", n = n, e = "AQAB", alg = "RS512" }))
  fails("use", rsa.from_jwk({ kty = "RSA", n = n, e = "AQAB", use = "enc" }))
  fails("private key", rsa.from_jwk({ kty = "RSA", n = n, e = "AQAB", d = "AQAB" }))
  fails("n: missing", rsa.from_jwk({ kty = "RSA", e = "AQAB" }))
  fails("base64url", rsa.from_jwk({ kty = "RSA", n = n .. "+", e = "AQAB" }))
  fails("at least 3", rsa.from_jwk({ kty = "RSA", n = n, e = "AQ" }))           -- e = 1
  fails("odd", rsa.from_jwk({ kty = "RSA", n = n, e = "AQAA" }))                -- e = 65536
  fails("2^32", rsa.from_jwk({ kty = "RSA", n = n, e = "AQAAAAE" }))            -- 5 bytes
  fails("too small", rsa.from_jwk({ kty = "RSA", n = n:sub(1, 170), e = "AQAB" }))
  local function b64u(s) return (b64(s):gsub("=", ""):gsub("[+/]", { ["+"] = "-", ["/"] = "_" })) end
  local bytes = rsa.b64url_decode(n)
  eq(b64u(bytes), n)
  fails("even", rsa.from_jwk({ kty = "RSA", n = b64u(flip(bytes, #bytes, 1)), e = "AQAB" }))
  -- a leading zero byte in n (some producers add one) is tolerated
  local padded = b64u("\0" .. bytes)
  eq(assert(rsa.from_jwk({ kty = "RSA", n = padded, e = "AQAB" })).n, bytes)
end)
