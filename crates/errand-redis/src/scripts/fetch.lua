-- Reliable fetch: move up to ARGV[1] jobs from ARGV[2] = n queues into this process's in-flight
-- hashes, one per queue. KEYS[1..n] the queues' lists, in the order to try them; KEYS[n+1..2n]
-- their in-flight hashes, in the same order; KEYS[2n+1] the fencing counter, from which the
-- batch takes its tokens in one INCRBY. Every key is declared: on a Redis Cluster a script that
-- would touch a key moved away mid-run is refused (TRYAGAIN) before it writes anything.
-- ARGV[3], in cluster mode (where each shard has a counter), is the least first token this
-- caller accepts: the first token is then the largest of the counter's next, this floor and
-- Redis's clock in microseconds, so tokens grow across shards as time does ('' otherwise).
-- Each job is held as field <token> = <job string>: acks and settles name the attempt they end
-- by its token, so a stale attempt cannot end a later fetch of the same job. One HSET per queue
-- holds the whole batch. Job strings are never decoded.
-- Returns a flat array: the first token (0 when nothing moved), then queue index (1-based),
-- job string, queue index, job string, ... (tokens follow in order from the first).
local max = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local seq = KEYS[2 * n + 1]
local taken = {}
local moved = 0
for i = 1, n do
  if max <= 0 then break end
  local items = redis.call('RPOP', KEYS[i], max)
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
local token
if ARGV[3] == '' then
  token = redis.call('INCRBY', seq, moved) - moved + 1
else
  local now = redis.call('TIME')
  token = math.max(tonumber(redis.call('GET', seq) or '0') + 1, tonumber(ARGV[3]),
    tonumber(now[1]) * 1000000 + tonumber(now[2]))
  redis.call('SET', seq, string.format('%d', token + moved - 1))
end
out[1] = token
for _, batch in ipairs(taken) do
  local i, items = batch[1], batch[2]
  local inflight = KEYS[n + i]
  local args = {}
  for _, item in ipairs(items) do
    args[#args + 1] = string.format('%d', token)
    args[#args + 1] = item
    token = token + 1
    out[#out + 1] = i
    out[#out + 1] = item
    if #args >= 2000 then
      redis.call('HSET', inflight, unpack(args))
      args = {}
    end
  end
  if #args > 0 then
    redis.call('HSET', inflight, unpack(args))
  end
end
return out
