-- A lease set: the sorted set KEYS[1] of holders scored by when their lease ends (ms on
-- Redis's clock), and the fencing counter KEYS[2]. A token is the larger of the last one plus
-- one and the current time in ms, so tokens only grow even when the counter is gone: it
-- expires ARGV[6] ms after the lease it was taken with (a mutex per order leaves no key
-- behind), and the next token, the time, is larger than any handed out before it.
-- ARGV[1] operation: acquire | renew | release, ARGV[2] holder, ARGV[3] ttl in ms,
-- ARGV[4] most holders at once (acquire), ARGV[5] '1' to hand out a fencing token (acquire),
-- ARGV[6] how long the fencing counter outlives the lease, ms (acquire).
-- acquire returns {1, token} (token '0' without fencing) or {0, a current holder};
-- renew and release return 1 when the holder had a live lease, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local op, holder, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = redis.call('ZSCORE', KEYS[1], holder)
if op == 'acquire' then
  if not mine and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return {0, redis.call('ZRANGE', KEYS[1], 0, 0)[1]}
  end
  redis.call('ZADD', KEYS[1], now + ttl, holder)
  -- The set lives as long as its longest lease.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1)
  local token = '0'
  if ARGV[5] == '1' then
    local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
    token = string.format('%d', math.max(last + 1, now))
    redis.call('SET', KEYS[2], token, 'PX', ttl + tonumber(ARGV[6]))
  end
  return {1, token}
end
if not mine then
  return 0
end
if op == 'renew' then
  redis.call('ZADD', KEYS[1], now + ttl, holder)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1)
else
  redis.call('ZREM', KEYS[1], holder)
end
return 1
