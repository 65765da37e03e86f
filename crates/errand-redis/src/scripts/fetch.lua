-- Reliable fetch: move up to ARGV[1] jobs from the queues (KEYS, in the order to try them) into
-- this process's in-flight hashes, one per queue: ARGV[2] .. <queue name>, names in ARGV[4..].
-- ARGV[3] is the fencing counter: the batch takes the next tokens from it in one INCRBY.
-- Each job is held as field <token> = <job string>: acks and settles name the attempt they end
-- by its token, so a stale attempt cannot end a later fetch of the same job. One HSET per queue
-- holds the whole batch. Job strings are never decoded.
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
  local args = {}
  for _, item in ipairs(items) do
    args[#args + 1] = string.format('%d', token)
    args[#args + 1] = item
    token = token + 1
    out[#out + 1] = i
    out[#out + 1] = item
    if #args >= 2000 then
      redis.call('HSET', ARGV[2] .. ARGV[3 + i], unpack(args))
      args = {}
    end
  end
  if #args > 0 then
    redis.call('HSET', ARGV[2] .. ARGV[3 + i], unpack(args))
  end
end
return out
