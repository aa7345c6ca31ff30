#!/usr/bin/env bash
# The probe benchmark on a CUDA GPU: batched torch L-BFGS on the GPU vs scikit-learn (CPU)
# and cuML (GPU), the same grid and tolerance. Needs: pip install -e ".[gpu]".
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/probe.py --device cuda --cuml "$@"
