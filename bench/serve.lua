-- wrk script for bench/serve.sh: POST /model/parse with the texts of a file (one per line,
-- $REFIT_BENCH_TEXTS), each connection cycling through them from its own starting point.
-- No `response` hook (calling Lua for every answer slows wrk down): failed answers show up
-- in wrk's "Non-2xx or 3xx responses" line, which bench/serve.sh treats as a failed run.

local path = os.getenv("REFIT_BENCH_TEXTS") or "bench/results/serve-texts.txt"
local bodies = {}

local function json_string(s)
  local escaped = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. escaped .. '"'
end

for line in io.lines(path) do
  if #line > 0 then
    bodies[#bodies + 1] = '{"text": ' .. json_string(line) .. "}"
  end
end
assert(#bodies > 0, "no texts in " .. path)

local counter = 0
next_body = 1 -- global: setup() sets it per thread

function setup(thread)
  -- Threads start at different texts.
  counter = counter + 1
  thread:set("next_body", (counter * 7) % #bodies + 1)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format(nil, "/model/parse", nil, body)
end
