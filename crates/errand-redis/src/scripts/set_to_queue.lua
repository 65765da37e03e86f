-- Move one member of a sorted set onto a queue, atomically (the admin side's "retry now",
-- "add to queue").
-- KEYS[1] the sorted set (retry, schedule or dead), KEYS[2] the queue's list, KEYS[3] `queues`.
-- ARGV[1] the member exactly as stored, ARGV[2] the payload to push, ARGV[3] the queue name.
-- Returns 0 (and pushes nothing) when the member was not in the set: it moved or changed
-- since it was read, or another caller moved it first.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
