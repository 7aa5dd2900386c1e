-- wrk script: POST /predict with real MNIST test PNGs, rotating through them.
--
--   wrk -s bench/predict.lua URL -- LISTFILE FILES_PER_REQUEST
--
-- LISTFILE holds one PNG path a line; each request carries FILES_PER_REQUEST of them as
-- multipart/form-data parts named "file". All requests are built once, up front, so the
-- client spends its time on the network, not in Lua. done() prints one JSON line that
-- bench/run.py reads.

-- wrk loads this script by the path it was given; its neighbour is found the same way.
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_common.lua")

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

