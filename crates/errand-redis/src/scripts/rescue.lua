-- Recover the in-flight jobs of one process, if (and only if) its heartbeat has expired.
-- KEYS[1] the process's heartbeat hash, KEYS[2] Errand's registry hash, KEYS[3] Sidekiq's
-- `processes` set. ARGV[1] identity, ARGV[2] its in-flight key prefix, ARGV[3] queue key prefix,
-- ARGV[4] 1 to require the heartbeat to be gone (recovery) or 0 (own clean shutdown),
-- ARGV[5..] queue names. Jobs go back unchanged to the consuming (right) end of their queue,
-- oldest fetched consumed first. Returns the number moved, or -1 if the process is alive.
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local n = 0
for i = 5, #ARGV do
  local q = ARGV[i]
  while redis.call('LMOVE', ARGV[2] .. q, ARGV[3] .. q, 'LEFT', 'RIGHT') do
    n = n + 1
  end
end
if ARGV[4] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
end
return n
