#!/usr/bin/env bash
# Set up (if needed) and run the test suite; extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# The Redis store tests start their own redis-server on loopback (Debian: redis-server).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server \
    || echo "could not install redis-server: the Redis tests will be skipped"
fi
.venv/bin/python -m pytest "$@"
status=$?
# pytest exits 5 when a selection holds no test: not a failure of the code.
if [ "$status" -eq 5 ]; then exit 0; fi
exit "$status"
