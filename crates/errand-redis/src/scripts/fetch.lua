-- Reliable fetch: move up to ARGV[1] jobs from the queues (KEYS, in the order to try them) into
-- this process's in-flight lists, one per queue: ARGV[2] .. <queue name>, names in ARGV[3..].
-- Strings are moved as they are; nothing is decoded or re-encoded here.
-- Returns a flat array: queue index (1-based), job string, queue index, job string, ...
local max = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  if max <= 0 then break end
  local items = redis.call('RPOP', key, max)
  if items then
    local inflight = ARGV[2] .. ARGV[2 + i]
    for _, item in ipairs(items) do
      redis.call('LPUSH', inflight, item)
      out[#out + 1] = i
      out[#out + 1] = item
    end
    max = max - #items
  end
end
return out
