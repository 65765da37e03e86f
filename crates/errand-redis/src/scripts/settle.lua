-- Take a job out of flight and store it in a sorted set, atomically.
-- KEYS[1] where the job is held, KEYS[2] target set (retry, schedule or dead).
-- ARGV[1] what names the job there: its fencing token when KEYS[1] is an in-flight hash
-- (ARGV[6] = 'field'), or the entry itself when KEYS[1] is a list (ARGV[6] = 'entry': the
-- poison list, or an in-flight list written by an older version).
-- ARGV[2] the new payload, ARGV[3] its score, ARGV[4] dead-set trim: drop scores below this
-- ('' = no trim), ARGV[5] keep at most this many.
-- Returns 0 (and changes nothing) when this attempt no longer holds the job: its lease was lost.
local removed
if ARGV[6] == 'field' then
  removed = redis.call('HDEL', KEYS[1], ARGV[1])
else
  removed = redis.call('LREM', KEYS[1], -1, ARGV[1])
end
if removed == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
end
return 1
