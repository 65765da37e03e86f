-- Cluster mode: claim up to ARGV[3] entries of an outbox (KEYS[1], a list of jobs to push on,
-- see `drain_outbox`) for delivery. Each claimed entry is held in the claims (KEYS[2], a sorted
-- set scored by when the claim lapses, ms on Redis's clock) for ARGV[1] ms, so no two callers
-- deliver one entry; the deliverer removes it from the claims once pushed. Claims that lapsed
-- (their deliverer died between the claim and the push) are claimed again by this caller, first:
-- each entry is delivered at least once. Nothing here empties a key it then touches again (on a
-- Redis Cluster such a command fails while the slot migrates): lapsed claims are re-stamped, not
-- removed and re-added.
-- ARGV[2] is unused (reserved). Returns the claimed entries.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
local max = tonumber(ARGV[3])
local claimed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, max)
for _, entry in ipairs(claimed) do
  redis.call('ZADD', KEYS[2], lease, entry)
end
if #claimed < max then
  local fresh = redis.call('LPOP', KEYS[1], max - #claimed)
  if fresh then
    for _, entry in ipairs(fresh) do
      redis.call('ZADD', KEYS[2], lease, entry)
      claimed[#claimed + 1] = entry
    end
  end
end
return claimed
