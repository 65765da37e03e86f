-- Move due jobs from a sorted set (KEYS[1]) to their queues, atomically per job.
-- ARGV[1] queue key prefix, ARGV[2] the `queues` set key, then triples from ARGV[3]:
-- the member as stored, the payload to push (with a fresh enqueued_at), the queue name.
-- A member already taken by another poller (ZREM = 0) is skipped, so no job is pushed twice.
local n = 0
for i = 3, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', ARGV[1] .. ARGV[i + 2], ARGV[i + 1])
    redis.call('SADD', ARGV[2], ARGV[i + 2])
    n = n + 1
  end
end
return n
