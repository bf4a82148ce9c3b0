#!/usr/bin/env bash
# Set up (if needed) and run the main job on the built-in ml-100k; extra arguments go to adarec.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/adarec run --dataset ml-100k --config configs/ml-100k.yaml --out runs/ml-100k "$@"
