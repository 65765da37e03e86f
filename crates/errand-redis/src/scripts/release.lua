-- Put one in-flight job back at the consuming (right) end of its queue, if this attempt still
-- holds it. KEYS[1] in-flight hash, KEYS[2] the queue. ARGV[1] the attempt's fencing token,
-- ARGV[2] the job string. Returns 1 or 0.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
