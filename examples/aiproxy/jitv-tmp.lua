require("jit.p").start("F", "/tmp/jitp.txt")
require("moongate.timer").after(14, function() require("jit.p").stop() end)
return dofile("/work/main/examples/aiproxy/gateway.lua")
