-- Store a destination's settings and bump the version, unless the name is taken and the
-- caller did not ask to replace it.
-- KEYS: defs, gen. ARGV: name, settings (JSON), replace ("1" or "0").
if ARGV[3] ~= '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
