-- Move due jobs from a sorted set (KEYS[1]) to their queues, atomically per job.
-- KEYS[2] the `queues` set, KEYS[3] the outbox list (cluster mode; unused otherwise), KEYS[4..]
-- the lists of the queues jobs go to. Every key is declared: on a Redis Cluster a script that
-- would touch a key moved away mid-run is refused (TRYAGAIN) before it writes anything.
-- Then quadruples from ARGV[1]: the member as stored, the payload to push (with a fresh
-- enqueued_at), the queue name, and the index in KEYS of the queue's list, or 0 when the queue
-- is in another shard: the job then goes to the outbox as '<queue>\n<payload>', in the same
-- step, for the caller to push there.
-- A member already taken by another poller (ZREM = 0) is skipped, so no job is pushed twice.
local n = 0
for i = 1, #ARGV, 4 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local at = tonumber(ARGV[i + 3])
    if at > 0 then
      redis.call('LPUSH', KEYS[at], ARGV[i + 1])
      redis.call('SADD', KEYS[2], ARGV[i + 2])
    else
      redis.call('RPUSH', KEYS[3], ARGV[i + 2] .. '\n' .. ARGV[i + 1])
    end
    n = n + 1
  end
end
return n
