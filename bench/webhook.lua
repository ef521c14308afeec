-- wrk script: POST /webhook with a unique notification uuid per request and a realistic hint mix.
--
--   BENCH_NONCE=1a2b3c4d HINTS_MIN=1 HINTS_MAX=12 wrk -t1 -c32 -d30s -s bench/webhook.lua http://127.0.0.1:PORT
--
-- uuids are <nonce>-<thread>-4000-8000-<counter>: unique within a run and, with a fresh nonce, across
-- runs. BENCH_METHOD and BENCH_PATH (default POST /webhook) aim the same requests elsewhere (the
-- ceiling: GET /healthz). Each request carries 1 to 12 distinct hints (uniform count, uniform choice) from the twelve
-- Extension Info hints. done() prints one JSON line prefixed with "RESULT " for bench/bench.py.

local hints = {
  "AccountSettings", "AccountStatus", "AnsweringRules", "CompanyNumbers", "DialingPlan",
  "ExtensionInfo", "Features", "Limits", "Permissions", "ProfileImage", "VideoConfiguration",
  "CallQueueMembersChange",
}

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  nonce = string.sub((os.getenv("BENCH_NONCE") or "00000000") .. "00000000", 1, 8)
  hints_min = tonumber(os.getenv("HINTS_MIN") or "1")
  hints_max = tonumber(os.getenv("HINTS_MAX") or "12")
  counter = 0
  math.randomseed(os.time() + id * 7919)
  headers = { ["Content-Type"] = "application/json" }
  -- The ceiling run sends the same bodies as GET /healthz: same bytes, same generator cost, no work.
  method = os.getenv("BENCH_METHOD") or "POST"
  path = os.getenv("BENCH_PATH") or "/webhook"
end

function request()
  counter = counter + 1
  local k = math.random(hints_min, hints_max)
  local pool = { unpack(hints) }
  local chosen = {}
  for i = 1, k do
    local j = math.random(i, #pool)
    pool[i], pool[j] = pool[j], pool[i]
    chosen[i] = '"' .. pool[i] .. '"'
  end
  local ext = tostring(math.random(100000000, 999999999))
  local uuid = string.format("%s-%04x-4000-8000-%012x", nonce, id, counter)
  local body = '{"uuid":"' .. uuid .. '","event":"/restapi/v1.0/account/~/extension/' .. ext ..
    '","timestamp":"2026-11-27T12:00:00.000Z","subscriptionId":"9d38419f-645f-4ee3-a053-8cf1368c21c4",' ..
    '"ownerId":"' .. ext .. '","body":{"extensionId":"' .. ext .. '","eventType":"Update","hints":[' ..
    table.concat(chosen, ",") .. ']}}'
  return wrk.format(method, path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_ms":{"p50":%.3f,"p90":%.3f,"p99":%.3f,"p999":%.3f,"max":%.3f,"mean":%.3f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000))
end
