-- wrk script: the anchor load (anchors/task.lua: POST WRK_PATH with a new X-Flare-Device-ID per
-- request), plus a census of the answers: how many had each HTTP status, FEG status and message.
-- Used for short checks that a row answers what it should under load, not for the timed runs
-- (the response() callback makes wrk read every body).
local counter = 0
local prefix = os.getenv("DEV_PREFIX") or "census-"
local path = os.getenv("WRK_PATH") or "/task?job_id=j1"
local body = '{"capabilities":{"methods":["cnn"]}}'
local hdrs = {
  ["Content-Type"] = "application/json",
  ["X-Flare-Device-Info"] = "platform=android&app_name=anchor&app_version=1.0",
}
seen = {}  -- global: done() reads it from the thread with thread:get
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

request = function()
  counter = counter + 1
  hdrs["X-Flare-Device-ID"] = prefix .. counter
  return wrk.format("POST", path, hdrs, body)
end

response = function(status, headers, resp)
  local feg = string.match(resp, '"status":%s*"([%u_]+)"') or "?"
  local msg = string.match(resp, '"message":%s*"([^"]*)"') or ""
  local key = status .. " " .. feg .. " " .. msg
  seen[key] = (seen[key] or 0) + 1
end

done = function(summary, latency, requests)
  local total, parts = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("seen")) do
      total[k] = (total[k] or 0) + v
    end
  end
  for k, v in pairs(total) do
    parts[#parts + 1] = string.format('"%s": %d', k, v)
  end
  io.write('CENSUS_JSON {' .. table.concat(parts, ", ") .. '}\n')
end
