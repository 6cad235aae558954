-- wrk script for bench/gc.sh: GET /<cache>/<hash>.narinfo for hash parts drawn at random from
-- a file (one per line), as Nix asks a cache about the paths of a closure. With HOT, only the
-- last HOT lines (the newest paths: what CI reads again and again).
--   wrk -s bench/gc_narinfo.lua URL -- HASHES_FILE [CACHE [HOT]]
-- done() prints one line: "gc_narinfo: requests N p50_us X p90_us X p99_us X max_us X
-- non2xx N errors N" (latencies in microseconds).

local hashes = {}
local cache = "main"
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  local file = args[1] or os.getenv("GC_HASHES")
  if args[2] then cache = args[2] end
  for line in io.lines(file) do
    if #line > 0 then hashes[#hashes + 1] = line end
  end
  if #hashes == 0 then error("gc_narinfo.lua: no hash parts in " .. tostring(file)) end
  local hot = tonumber(args[3] or "0")
  if hot > 0 and hot < #hashes then
    local last = {}
    for i = #hashes - hot + 1, #hashes do last[#last + 1] = hashes[i] end
    hashes = last
  end
  math.randomseed(os.time() * 1000 + (id or 0))
end

function request()
  local h = hashes[math.random(#hashes)]
  return wrk.format("GET", "/" .. cache .. "/" .. h .. ".narinfo")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "gc_narinfo: requests %d p50_us %d p90_us %d p99_us %d max_us %d non2xx %d errors %d\n",
    summary.requests, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
