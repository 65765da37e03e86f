-- Reliable fetch: move up to ARGV[1] jobs from the queues (KEYS, in the order to try them) into
-- this process's in-flight lists, one per queue: ARGV[2] .. <queue name>, names in ARGV[4..].
-- ARGV[3] is the fencing counter: the batch takes the next tokens from it in one INCRBY.
-- Each job is held as '<token>:<job string>': acks and settles name the attempt they end, so a
-- stale attempt cannot end a later fetch of the same job. Job strings are never decoded.
-- Returns a flat array: the first token (0 when nothing moved), then queue index (1-based),
-- job string, queue index, job string, ... (tokens follow in order from the first).
local max = tonumber(ARGV[1])
local taken = {}
local moved = 0
for i, key in ipairs(KEYS) do
  if max <= 0 then break end
  local items = redis.call('RPOP', key, max)
  if items then
    taken[#taken + 1] = {i, items}
    max = max - #items
    moved = moved + #items
  end
end
local out = {0}
if moved == 0 then
  return out
end
local token = redis.call('INCRBY', ARGV[3], moved) - moved + 1
out[1] = token
for _, batch in ipairs(taken) do
  local i, items = batch[1], batch[2]
  local inflight = ARGV[2] .. ARGV[3 + i]
  for _, item in ipairs(items) do
    redis.call('LPUSH', inflight, string.format('%d:', token) .. item)
    token = token + 1
    out[#out + 1] = i
    out[#out + 1] = item
  end
end
return out
