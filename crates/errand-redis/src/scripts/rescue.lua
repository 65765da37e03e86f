-- Recover the in-flight jobs of one process, if (and only if) its heartbeat has expired.
-- KEYS[1] the process's heartbeat hash, KEYS[2] Errand's registry hash, KEYS[3] Sidekiq's
-- `processes` set, KEYS[4] the poison list (jobs to bury), KEYS[5] cluster mode's hash of
-- recovery counts (jid -> count; unused on one server), then pairs from KEYS[6]: an in-flight
-- key of the process and its queue's list. Every key but one server's per-jid counters is
-- declared: on a Redis Cluster a script that would touch a key moved away mid-run is refused
-- (TRYAGAIN) before it writes anything.
-- ARGV[1] identity; ARGV[2] '1' to require the heartbeat to be gone (recovery), '0' for the
-- process's own clean shutdown, or '2' (cluster mode: recovery of one shard's queues, whose
-- heartbeat check and unregistering the caller does, each in its own step; KEYS[1..3] are then
-- unused); ARGV[3] recoveries that make a poison pill; ARGV[4] the per-jid recovery counter
-- prefix, or '' to count in KEYS[5].
-- Jobs go back unchanged to the consuming (right) end of their queue, the oldest fetched
-- consumed first. On recovery each job's counter (by jid, kept 7 days) goes up by one; a job
-- that reaches the limit goes to the poison list instead, for the caller to bury.
-- Returns the number moved, or -1 if the process is alive.
-- An in-flight key is a hash (field <fencing token> = job string). One written by an older
-- version is a list of '<token>:<job string>' entries (or bare job strings, from before tokens):
-- both are recovered.
local WEEK = 604800
local function job_of(entry)
  local _, last = string.find(entry, '^%d+:')
  if last then
    return string.sub(entry, last + 1)
  end
  return entry
end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local recovering = ARGV[2] == '1' or ARGV[2] == '2'
local limit = tonumber(ARGV[3])
local n = 0
-- One more recovery of `jid`: true when it reaches the limit (the counter is then dropped).
local function recovered_too_often(jid)
  local count
  if ARGV[4] == '' then
    -- Reset to 0, not deleted: deleting the last field would delete the hash, and on a Redis
    -- Cluster the next job's count would then fail mid-run while the slot migrates.
    count = redis.call('HINCRBY', KEYS[5], jid, 1)
    redis.call('EXPIRE', KEYS[5], WEEK)
    if count >= limit then
      redis.call('HSET', KEYS[5], jid, 0)
    end
  else
    local counter = ARGV[4] .. jid
    count = redis.call('INCR', counter)
    redis.call('EXPIRE', counter, WEEK)
    if count >= limit then
      redis.call('DEL', counter)
    end
  end
  return count >= limit
end
local function put_back(to, job)
  n = n + 1
  if recovering then
    local ok, decoded = pcall(cjson.decode, job)
    if ok and type(decoded) == 'table' and type(decoded['jid']) == 'string'
      and recovered_too_often(decoded['jid']) then
      redis.call('RPUSH', KEYS[4], job)
      return
    end
  end
  redis.call('RPUSH', to, job)
end
for i = 6, #KEYS, 2 do
  local from, to = KEYS[i], KEYS[i + 1]
  local kind = redis.call('TYPE', from)['ok']
  if kind == 'hash' then
    -- Newest first, so the oldest fetched ends up at the consuming end.
    local flat = redis.call('HGETALL', from)
    local held = {}
    for j = 1, #flat, 2 do
      held[#held + 1] = {tonumber(flat[j]), flat[j + 1]}
    end
    table.sort(held, function(a, b) return a[1] > b[1] end)
    for _, e in ipairs(held) do
      put_back(to, e[2])
    end
    redis.call('DEL', from)
  elseif kind == 'list' then
    local entry = redis.call('LPOP', from)
    while entry do
      put_back(to, job_of(entry))
      entry = redis.call('LPOP', from)
    end
  end
end
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
end
return n
