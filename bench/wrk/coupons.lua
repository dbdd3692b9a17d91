-- wrk script for bench/service_load.py: the coupon service's traffic mix, one sample per response.
--
--   wrk -t N -c N -d 15s --timeout 60s -s bench/wrk/coupons.lua http://127.0.0.1:PORT \
--       -- codes=FILE hot=FILE tokenfile=FILE out=FILE run=ID mode=spread|hot idem=0|1
--
-- Mix (per request, random): 70% POST /api/v1/redemptions (a unique order id: run id, wrk
-- thread id and a per-thread counter), 20% POST /api/v1/coupons/{code}/validate, 10%
-- GET /api/v1/coupons/{code}. mode=hot sends every redeem to the codes of one campaign
-- (the file `hot`), validate and get stay on the spread codes. idem=1 adds a unique
-- Idempotency-Key to every redeem.
--
-- Latency per request needs the request matched to its response, which wrk's Lua API does
-- not do per connection; the runner therefore starts one connection per wrk thread (-t = -c),
-- so within a thread request() and response() strictly alternate. Times are CLOCK_MONOTONIC
-- microseconds (LuaJIT FFI), the clock of Python's time.monotonic(), so samples line up with
-- the runner's connection sampler. request() runs just before the request is written.
--
-- Retry-After: a 503 carrying it makes the thread's next request wait that long (delay()).
--
-- Output (file `out`, written by done()): one line per response,
--   kind status send_us recv_us error_code
-- kind r|v|g, error_code from the JSON error body or "-"; status -1 for a request still
-- unanswered when wrk stopped; then "# wrk key=value ..." with wrk's own counters
-- (connect/read/write errors, timeouts).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec_t")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local function read_lines(path)
  local lines = {}
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if line ~= "" then lines[#lines + 1] = line end
  end
  f:close()
  return lines
end

-- ------------------------------------------------------------------ main state (setup, done)

local threads = {}
local next_tid = 0

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  threads[#threads + 1] = thread
end

-- ------------------------------------------------------------------ per-thread state

local codes, hot_codes, token, run_id, hot_mode, idem
local counter = 0
samples = {} -- global: done() reads it with thread:get
out_path = nil -- global, as above
-- the request in flight on this thread's connection (globals: done() reads them)
pending_kind, pending_send = nil, 0
local backoff = 0

function init(args)
  local opts = {}
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  codes = read_lines(opts.codes)
  hot_codes = opts.hot and read_lines(opts.hot) or codes
  token = read_lines(opts.tokenfile)[1]
  run_id = opts.run or "run"
  hot_mode = opts.mode == "hot"
  idem = opts.idem == "1"
  out_path = opts.out
  math.randomseed(tid * 7919 + now_us() % 1000003)
  samples = {}
end

local function pick(list)
  return list[math.random(1, #list)]
end

function request()
  counter = counter + 1
  local roll = math.random()
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  local customer = "cust-" .. math.random(1, 5000)
  local req
  if roll < 0.7 then
    local code = hot_mode and pick(hot_codes) or pick(codes)
    local order = run_id .. "-t" .. tid .. "-" .. counter
    if idem then headers["Idempotency-Key"] = "k-" .. order end
    pending_kind = "r"
    req = wrk.format("POST", "/api/v1/redemptions", headers,
      '{"code":"' .. code .. '","customer_id":"' .. customer .. '","order_id":"' .. order
      .. '","order_total":"25.00"}')
  elseif roll < 0.9 then
    pending_kind = "v"
    req = wrk.format("POST", "/api/v1/coupons/" .. pick(codes) .. "/validate", headers,
      '{"customer_id":"' .. customer .. '","order_total":"25.00"}')
  else
    pending_kind = "g"
    headers["Content-Type"] = nil
    req = wrk.format("GET", "/api/v1/coupons/" .. pick(codes), headers, nil)
  end
  pending_send = now_us()
  return req
end

function response(status, headers, body)
  local recv = now_us()
  local code = "-"
  if status >= 300 and body then
    code = body:match('"code"%s*:%s*"([^"]+)"') or "-"
  end
  if status == 503 then
    local after = headers["Retry-After"] or headers["retry-after"]
    local seconds = tonumber(after or "")
    if seconds and seconds > 0 then backoff = seconds * 1000 end
  end
  samples[#samples + 1] = string.format("%s %d %d %d %s", pending_kind or "?", status,
    pending_send, recv, code)
  pending_kind = nil
end

function delay()
  local ms = backoff
  backoff = 0
  return ms
end

function done(summary, latency, requests)
  local out = nil
  local lines = 0
  for _, thread in ipairs(threads) do
    local path = thread:get("out_path")
    if out == nil and path then out = assert(io.open(path, "w")) end
    local got = thread:get("samples") or {}
    for _, line in ipairs(got) do
      out:write(line, "\n")
      lines = lines + 1
    end
    local kind = thread:get("pending_kind")
    if kind then -- sent, never answered before wrk stopped: counted, not timed
      out:write(string.format("%s -1 %d %d -\n", kind, thread:get("pending_send"), now_us()))
      lines = lines + 1
    end
  end
  if out == nil then return end
  local e = summary.errors
  out:write(string.format("# wrk requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d samples=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, lines))
  out:close()
end
