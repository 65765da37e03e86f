-- Reliable fetch: move up to ARGV[1] jobs from the queues (KEYS, in the order to try them) into
-- this process's in-flight lists, one per queue: ARGV[2] .. <queue name>, names in ARGV[4..].
-- ARGV[3] is the fencing counter: the batch takes the next tokens from it in one INCRBY.
-- Strings are moved as they are; nothing is decoded or re-encoded here.
-- Returns a flat array: the first token (0 when nothing moved), then queue index (1-based),
-- job string, queue index, job string, ... (tokens follow in order from the first).
local max = tonumber(ARGV[1])
local out = {0}
local moved = 0
for i, key in ipairs(KEYS) do
  if max <= 0 then break end
  local items = redis.call('RPOP', key, max)
  if items then
    local inflight = ARGV[2] .. ARGV[3 + i]
    for _, item in ipairs(items) do
      redis.call('LPUSH', inflight, item)
      out[#out + 1] = i
      out[#out + 1] = item
    end
    max = max - #items
    moved = moved + #items
  end
end
if moved > 0 then
  out[1] = redis.call('INCRBY', ARGV[3], moved) - moved + 1
end
return out
