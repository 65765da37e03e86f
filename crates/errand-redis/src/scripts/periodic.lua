-- Periodic entries. KEYS[1] the definitions hash (name -> JSON), KEYS[2] the entry's state hash
-- (last_tick, last_jid, last_run, paused, seen_at). ARGV[1] the operation, ARGV[2] the name.
-- claim: KEYS[3] the queue's list, KEYS[4] the queue names; ARGV[3] the tick's time, ARGV[4]
--   the jid, ARGV[5] now, ARGV[6] the queue's name, ARGV[7] the payload. Enqueues the job and
--   makes the tick the last, only if the entry exists, is not paused and the tick is later
--   than its last: each (entry, tick) is enqueued at most once. Returns 1 or 0. ARGV[8] '1' in
--   cluster mode: KEYS[3] is then the fleet's outbox, where the job goes as
--   '<queue>\n<payload>' for the caller to push on.
-- pause: ARGV[3] '1' or '0'. Returns 0 when there is no such entry.
-- prune: ARGV[3] a time; removes the entry if it was last declared before it. Returns 1 or 0.
local op, name = ARGV[1], ARGV[2]
if redis.call('HEXISTS', KEYS[1], name) == 0 then
  return 0
end
if op == 'claim' then
  local state = redis.call('HMGET', KEYS[2], 'paused', 'last_tick')
  if state[1] == '1' then
    return 0
  end
  if state[2] and tonumber(state[2]) >= tonumber(ARGV[3]) then
    return 0
  end
  redis.call('HSET', KEYS[2], 'last_tick', ARGV[3], 'last_jid', ARGV[4], 'last_run', ARGV[5])
  if ARGV[8] == '1' then
    redis.call('RPUSH', KEYS[3], ARGV[6] .. '\n' .. ARGV[7])
    return 1
  end
  redis.call('SADD', KEYS[4], ARGV[6])
  redis.call('LPUSH', KEYS[3], ARGV[7])
  return 1
elseif op == 'pause' then
  redis.call('HSET', KEYS[2], 'paused', ARGV[3])
  return 1
elseif op == 'prune' then
  local seen = tonumber(redis.call('HGET', KEYS[2], 'seen_at') or '0')
  if seen >= tonumber(ARGV[3]) then
    return 0
  end
  redis.call('HDEL', KEYS[1], name)
  redis.call('DEL', KEYS[2])
  return 1
end
return redis.error_reply('unknown operation ' .. op)
