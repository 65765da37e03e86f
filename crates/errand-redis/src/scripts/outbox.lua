-- Cluster mode: claim up to ARGV[3] entries of an outbox (KEYS[1], a list of jobs to push on,
-- see `drain_outbox`) for delivery. Each claimed entry moves to the claims (KEYS[2], a sorted
-- set scored by when the claim lapses, ms on Redis's clock) for ARGV[1] ms, so no two callers
-- deliver one entry; the deliverer removes it from the claims once pushed. Claims that lapsed
-- (their deliverer died between the claim and the push) go back to the outbox first, to be
-- claimed again: each entry is delivered at least once.
-- ARGV[2] is unused (reserved). Returns the claimed entries.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], entry)
  redis.call('RPUSH', KEYS[1], entry)
end
local claimed = redis.call('LPOP', KEYS[1], tonumber(ARGV[3]))
if not claimed then
  return {}
end
for _, entry in ipairs(claimed) do
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), entry)
end
return claimed
