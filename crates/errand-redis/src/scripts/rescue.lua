-- Recover the in-flight jobs of one process, if (and only if) its heartbeat has expired.
-- KEYS[1] the process's heartbeat hash, KEYS[2] Errand's registry hash, KEYS[3] Sidekiq's
-- `processes` set, KEYS[4] the poison list (jobs to bury). ARGV[1] identity, ARGV[2] its
-- in-flight key prefix, ARGV[3] queue key prefix, ARGV[4] 1 to require the heartbeat to be
-- gone (recovery) or 0 (own clean shutdown), ARGV[5] recoveries that make a poison pill,
-- ARGV[6] the per-job recovery counter prefix, ARGV[7..] queue names.
-- Jobs go back unchanged to the consuming (right) end of their queue, the oldest fetched
-- consumed first. On recovery each job's counter (by jid, kept 7 days) goes up by one; a job
-- that reaches the limit goes to the poison list instead, for the caller to bury.
-- Returns the number moved, or -1 if the process is alive.
-- An in-flight key is a hash (field <fencing token> = job string). One written by an older
-- version is a list of '<token>:<job string>' entries (or bare job strings, from before tokens):
-- both are recovered.
local function job_of(entry)
  local _, last = string.find(entry, '^%d+:')
  if last then
    return string.sub(entry, last + 1)
  end
  return entry
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local recovering = ARGV[4] == '1'
local limit = tonumber(ARGV[5])
local n = 0
local function put_back(q, job)
  n = n + 1
  if recovering then
    local ok, decoded = pcall(cjson.decode, job)
    if ok and type(decoded) == 'table' and type(decoded['jid']) == 'string' then
      local counter = ARGV[6] .. decoded['jid']
      local count = redis.call('INCR', counter)
      redis.call('EXPIRE', counter, 604800)
      if count >= limit then
        redis.call('DEL', counter)
        redis.call('RPUSH', KEYS[4], job)
        return
      end
    end
  end
  redis.call('RPUSH', ARGV[3] .. q, job)
end
for i = 7, #ARGV do
  local q = ARGV[i]
  local from = ARGV[2] .. q
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
      put_back(q, e[2])
    end
    redis.call('DEL', from)
  elseif kind == 'list' then
    local entry = redis.call('LPOP', from)
    while entry do
      put_back(q, job_of(entry))
      entry = redis.call('LPOP', from)
    end
  end
end
if recovering then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
end
return n
