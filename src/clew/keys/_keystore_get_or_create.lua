-- The live data key of KEYS[1], or ARGV[1] stored as a new one when there is none.
-- A value is "<generation>:<wrapped key>"; a destroyed key keeps "<generation>:" so that
-- the key made after it gets the next generation and old records stay unreadable.
local v = redis.call('GET', KEYS[1])
local generation = 1
if v then
  local sep = string.find(v, ':', 1, true)
  if sep < string.len(v) then
    return v
  end
  generation = tonumber(string.sub(v, 1, sep - 1)) + 1
end
local created = tostring(generation) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], created)
return created
