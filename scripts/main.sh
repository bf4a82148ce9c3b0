#!/usr/bin/env bash
# Set up (if needed) and run the main job on the built-in ml-100k; extra arguments go to adarec.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/adarec teacher --dataset ml-100k --model sasrec --config configs/quick.yaml \
  --out runs/ml-100k-quick "$@"
