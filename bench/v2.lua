-- wrk script: POST Open Inference Protocol (V2) requests with prebuilt binary bodies.
--
--   wrk -s bench/v2.lua URL/v2/models/MODEL/infer -- LISTFILE
--
-- LISTFILE holds one line per body: its path and the length of its JSON header (the
-- Inference-Header-Content-Length). bench/run.py builds the bodies (64 MNIST test PNGs as
-- one binary BYTES 'image' tensor each); this script only sends them, rotating. done()
-- prints the JSON line bench/run.py reads, as bench/predict.lua does.

local requests = {}
local index = 0

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  for line in io.lines(args[1]) do
    local path, header_length = line:match("^(%S+) (%d+)$")
    local headers = {
      ["Content-Type"] = "application/octet-stream",
      ["Inference-Header-Content-Length"] = header_length,
    }
    requests[#requests + 1] = wrk.format("POST", nil, headers, read_file(path))
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
