-- wrk script: keep-alive HTTP/1.1 GETs whose Host alternates between the two
-- virtual hosts request by request, so both routes and both upstreams are used.
local hosts = { "a.bench.test", "b.bench.test" }
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", { ["Host"] = hosts[(i % 2) + 1] })
end
