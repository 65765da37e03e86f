-- Move one member of a sorted set into the dead set, atomically, with the dead set's trim
-- (the admin side's "kill").
-- KEYS[1] the sorted set the member is in, KEYS[2] the dead set.
-- ARGV[1] the member exactly as stored, ARGV[2] the dead entry, ARGV[3] its score (now),
-- ARGV[4] drop dead entries scored below this, ARGV[5] keep at most this many (the newest);
-- the same trim as settle.lua.
-- Returns 0 (and adds nothing) when the member was not in the set.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
return 1
