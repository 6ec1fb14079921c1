-- One wrk script for every scenario, parameterised by environment variables
-- (set by bench/load.py) so each contender gets byte-identical settings:
--   BENCH_METHOD       GET (default) or POST
--   BENCH_HEADERS      extra headers, "Name: value" separated by "\n"
--   BENCH_BODY_SIZE    request body of that many bytes (uploads)
--   BENCH_LOGIN_USERS  POST JSON logins rotating over users <prefix>0..N-1
--   BENCH_LOGIN_PREFIX, BENCH_LOGIN_PASSWORD
-- done() prints one line "BENCH_JSON {...}" that load.py parses.

wrk.method = os.getenv("BENCH_METHOD") or "GET"

for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

local body_size = tonumber(os.getenv("BENCH_BODY_SIZE") or "0")
if body_size > 0 then
  wrk.body = string.rep("x", body_size)
end

local login_users = tonumber(os.getenv("BENCH_LOGIN_USERS") or "0")
if login_users > 0 then
  local prefix = os.getenv("BENCH_LOGIN_PREFIX") or "login"
  local password = os.getenv("BENCH_LOGIN_PASSWORD") or ""
  local n = 0
  local thread_offset = 0
  setup = function(thread)
    thread_offset = thread_offset + 1
    thread:set("offset", thread_offset * 7919)
  end
  request = function()
    n = n + 1
    local user = prefix .. tostring(((offset or 0) + n) % login_users)
    local body = '{"username":"' .. user .. '","password":"' .. password .. '"}'
    return wrk.format("POST", "/_gateway/api/login",
                      {["Content-Type"] = "application/json"}, body)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
