#!/usr/bin/env bash
# The integration tests use the machine's PostgreSQL (127.0.0.1:5432, database 'test') and Redis
# (127.0.0.1:6379). Start them if they are installed but down; the tests that need them skip with a clear
# reason when they cannot be reached at all.
set -uo pipefail

if command -v redis-cli >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting redis ..."
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  fi
fi
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting postgresql ..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
fi
for _ in $(seq 1 20); do
  redis_ok=1; pg_ok=1
  command -v redis-cli >/dev/null 2>&1 && { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis_ok=0; }
  command -v pg_isready >/dev/null 2>&1 && { pg_isready -h 127.0.0.1 -p 5432 -q || pg_ok=0; }
  [ "$redis_ok" = 1 ] && [ "$pg_ok" = 1 ] && exit 0
  sleep 0.5
done
echo "warning: redis or postgresql is not reachable; the tests that need them will be skipped" >&2
exit 0
