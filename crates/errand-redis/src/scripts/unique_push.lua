-- A unique job's push: takes the permit set KEYS[1] (at most one holder, scored by when its
-- permit ends, ms on Redis's clock) for the job's jid and stores the job, in one step.
-- KEYS[2] the queue's list, or the schedule set when ARGV[5] is a score; KEYS[3] the queue names
-- (registered for an immediate push, as a plain push does).
-- ARGV[1] jid, ARGV[2] ttl in ms, ARGV[3] payload, ARGV[4] queue name, ARGV[5] score or ''.
-- ARGV[6] '1' in cluster mode: KEYS[2] is then the fleet's outbox, where the job goes as
-- '<queue>\n<payload>' (or '\t<score>\n<payload>' to be scheduled) for the caller to push on.
-- Returns {1, ''} when the job is stored (now, or by an earlier call with this jid whose reply
-- was lost) and {0, holder} when another job holds the permit (nothing written).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {1, ''}
end
local holder = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if holder then
  return {0, holder}
end
local ends = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], ends, ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ends + 1)
if ARGV[6] == '1' then
  if ARGV[5] == '' then
    redis.call('RPUSH', KEYS[2], ARGV[4] .. '\n' .. ARGV[3])
  else
    redis.call('RPUSH', KEYS[2], '\t' .. ARGV[5] .. '\n' .. ARGV[3])
  end
elseif ARGV[5] == '' then
  redis.call('SADD', KEYS[3], ARGV[4])
  redis.call('LPUSH', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
end
return {1, ''}
