-- Acks: end the attempts named by their fencing tokens, and say which still held their job.
-- KEYS are in-flight hashes; ARGV[i] is the number of tokens for KEYS[i], followed by that many
-- tokens, key after key. A token's field is present exactly while its attempt holds the job
-- (a rescue, a release or an earlier end removes it).
-- Returns one 1 (held, now removed) or 0 (no longer held) per token, in order.
-- Per key: one HMGET to learn which are held, one HDEL for all: two calls for the whole group.
local out = {}
local o = 0
local at = 1
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  local first, last = at + 1, at + n
  at = last + 1
  local held = redis.call('HMGET', key, unpack(ARGV, first, last))
  local any = false
  for j = 1, n do
    o = o + 1
    if held[j] then
      out[o] = 1
      any = true
    else
      out[o] = 0
    end
  end
  if any then
    redis.call('HDEL', key, unpack(ARGV, first, last))
  end
end
return out
