-- Records a token's last use, unless the token is gone.
-- KEYS: tokens, last uses. ARGV: name, time.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 0
