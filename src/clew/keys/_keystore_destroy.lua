-- Destroy the data key of KEYS[1]: keep only its generation (and its expiry, if any).
-- Returns 1 if the key was live.
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local sep = string.find(v, ':', 1, true)
if sep == string.len(v) then
  return 0
end
redis.call('SET', KEYS[1], string.sub(v, 1, sep), 'KEEPTTL')
return 1
