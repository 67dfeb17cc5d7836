-- Forget a destination and bump the version; 0 when there was none.
-- KEYS: defs, gen. ARGV: name.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('INCR', KEYS[2])
return 1
