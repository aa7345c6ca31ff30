#!/usr/bin/env bash
# The prepared device check (benchmarks/gpu_check.py), as one command on a lent GPU machine:
# that machine has its own python3 with torch, transformers and scikit-learn but no network
# and no platformdirs, so a wheel of it travels in .whl/ (benchmarks/campaign_prepare.sh puts
# it there; docs/campaign.md, "The GPU call"). Results and the
# log go to $OUT when it is set (the device tool brings that folder back), else to
# benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
