-- Cluster mode: push jobs onto queues of one shard, in one step. KEYS[1] the shard's `queues`
-- set, KEYS[2..] the queue lists. ARGV, for each list in order: its queue name, the number of
-- jobs, then the jobs (pushed at the left end, in order). Returns the number pushed.
local at, n = 1, 0
for i = 2, #KEYS do
  local name, count = ARGV[at], tonumber(ARGV[at + 1])
  redis.call('SADD', KEYS[1], name)
  local first = at + 2
  while first < at + 2 + count do
    local last = math.min(first + 999, at + 1 + count)
    redis.call('LPUSH', KEYS[i], unpack(ARGV, first, last))
    first = last + 1
  end
  n = n + count
  at = at + 2 + count
end
return n
