-- wrk script: POST Open Inference Protocol (V2) requests with prebuilt binary bodies.
--
--   wrk -s bench/v2.lua URL/v2/models/MODEL/infer -- LISTFILE
--
-- LISTFILE holds one line per body: its path and the length of its JSON header (the
-- Inference-Header-Content-Length). bench/run.py builds the bodies (64 MNIST test PNGs as
-- one binary BYTES 'image' tensor each); this script only sends them, rotating. done()
-- (bench/wrk_common.lua) prints the JSON line bench/run.py reads.

-- wrk loads this script by the path it was given; its neighbour is found the same way.
dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_common.lua")

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

