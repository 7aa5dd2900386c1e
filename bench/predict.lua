-- wrk script: POST /predict with real MNIST test PNGs, rotating through them.
--
--   wrk -s bench/predict.lua URL -- LISTFILE FILES_PER_REQUEST
--
-- LISTFILE holds one PNG path a line; each request carries FILES_PER_REQUEST of them as
-- multipart/form-data parts named "file". All requests are built once, up front, so the
-- client spends its time on the network, not in Lua. done() prints one JSON line that
-- bench/run.py reads.

local requests = {}
local index = 0

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  local list, per_request = args[1], tonumber(args[2] or "1")
  local images = {}
  for path in io.lines(list) do
    images[#images + 1] = read_file(path)
  end
  local boundary = "----mnistservebench7d0f3a"
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  local offset = 0
  local n_requests = math.max(1, math.floor(#images / per_request))
  for r = 0, n_requests - 1 do
    local parts = {}
    for i = 0, per_request - 1 do
      local k = (offset + r * per_request + i) % #images + 1
      parts[#parts + 1] = "--" .. boundary .. "\r\n"
        .. 'Content-Disposition: form-data; name="file"; filename="' .. k .. '.png"\r\n'
        .. "Content-Type: image/png\r\n\r\n" .. images[k] .. "\r\n"
    end
    local body = table.concat(parts) .. "--" .. boundary .. "--\r\n"
    requests[#requests + 1] = wrk.format("POST", nil, headers, body)
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
