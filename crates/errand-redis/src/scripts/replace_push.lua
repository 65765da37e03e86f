-- A debounced push: stores the job and, in the same step, removes the job last pushed under the
-- same key if it still waits (byte for byte) in its queue or the schedule set.
-- KEYS[1] the key's record (a hash: jid, raw, scheduled), KEYS[2] the schedule set, KEYS[3] the
-- queue's list, KEYS[4] the queue names.
-- ARGV[1] jid, ARGV[2] ttl in ms, ARGV[3] payload, ARGV[4] queue name, ARGV[5] score or ''.
-- Returns the removed job's jid, or '' when none was removed.
-- The new job is stored before the previous one is removed: on a Redis Cluster a command on a
-- key this script emptied fails while its slot migrates, so nothing here empties a key it then
-- touches again. A push identical to the waiting one (a retried call) stores nothing twice.
local prev = redis.call('HMGET', KEYS[1], 'jid', 'raw', 'scheduled')
local same = prev[2] == ARGV[3]
if ARGV[5] == '' then
  if not (same and prev[3] ~= '1' and redis.call('LPOS', KEYS[3], ARGV[3])) then
    redis.call('SADD', KEYS[4], ARGV[4])
    redis.call('LPUSH', KEYS[3], ARGV[3])
  end
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
end
local replaced = ''
if prev[2] and not same then
  local removed
  if prev[3] == '1' then
    removed = redis.call('ZREM', KEYS[2], prev[2])
  else
    removed = redis.call('LREM', KEYS[3], -1, prev[2])
  end
  if removed == 1 then
    replaced = prev[1]
  end
end
redis.call('HSET', KEYS[1], 'jid', ARGV[1], 'raw', ARGV[3],
  'scheduled', ARGV[5] == '' and '0' or '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return replaced
