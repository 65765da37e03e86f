-- Counts one use of a rate limit if it is under the limit, on Redis's clock.
-- KEYS[1] the limit's state, KEYS[2] its sequence (window: unique member names).
-- ARGV[1] kind: bucket | window, ARGV[2] limit, ARGV[3] interval in ms.
-- bucket: KEYS[1] is a hash {slot, count} for the current epoch-aligned interval.
-- window: KEYS[1] is a sorted set of uses scored by their time (ms).
-- Returns 0 when counted, else the ms until a use would be let through (at least 1).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, interval = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[1] == 'bucket' then
  local slot = math.floor(now / interval)
  local state = redis.call('HMGET', KEYS[1], 'slot', 'count')
  local count = 0
  if tonumber(state[1]) == slot then
    count = tonumber(state[2])
  end
  if count >= limit then
    return math.max((slot + 1) * interval - now, 1)
  end
  redis.call('HSET', KEYS[1], 'slot', slot, 'count', count + 1)
  redis.call('PEXPIRE', KEYS[1], interval * 2)
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - interval)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(tonumber(oldest[2]) + interval - now, 1)
end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], now, now .. '-' .. seq)
redis.call('PEXPIRE', KEYS[1], interval)
redis.call('PEXPIRE', KEYS[2], interval)
return 0
