-- wrk script for benches/run.sh.
--   HOSTS    space-separated Host headers, alternated request by request
--   CLOSE=1  send "Connection: close": one new connection (and TLS handshake) per request
--   CONNECT  address to connect to instead of resolving the URL's host, so the URL can
--            carry a made-up name that is sent as SNI
local connect = os.getenv("CONNECT")
if connect and connect ~= "" then
  wrk.resolve = function(host, service)
    wrk.addrs = wrk.lookup(connect, service)
  end
end
local reqs = {}
function init(args)
  for h in string.gmatch(os.getenv("HOSTS") or "a.bench.test", "%S+") do
    local headers = { Host = h }
    if os.getenv("CLOSE") == "1" then headers["Connection"] = "close" end
    reqs[#reqs + 1] = wrk.format("GET", "/", headers)
  end
end
local i = 0
function request()
  i = i + 1
  return reqs[(i % #reqs) + 1]
end
