#!/usr/bin/env bash
# The GPU campaign (docs/campaign.md) as one command on a lent H200, prepared here by
# benchmarks/campaign_prepare.sh:  run(command="bash benchmarks/campaign_gpu.sh",
# carry=[".data", ".whl"], timeout_s=590). The GPU machine has its own python3 with torch,
# pandas, pyarrow, scipy and safetensors, no network, and no platformdirs (its wheel travels).
# First the smoke size on the GPU (about half a minute: a GPU-only failure shows there, with
# its traceback), then the campaign; what comes back is $OUT/campaign (8 files, see
# igpt_eval/studies/campaign.py). BUDGET_MIN and FINETUNE_MIN override the minutes; a
# rehearsal here: OUT=/tmp/sim PYTHON=.venv/bin/python DEVICE=cpu bash $0 --smoke
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
device="${DEVICE:-cuda}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 IGPT_EVAL_CACHE=/tmp/igpt-cache
out="${OUT:-/tmp/campaign-out}"
data="${DATA_DIR:-.data/fashion-mnist}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
start=$(date +%s)
"$py" -m igpt_eval.cli --debug campaign --smoke --device "$device" --data-dir "$data" \
  --out /tmp/campaign-smoke --overwrite --no-progress
echo "smoke run on the GPU: $(($(date +%s) - start)) s"
"$py" -m igpt_eval.cli --debug campaign --device "$device" --data-dir "$data" \
  --budget-min "${BUDGET_MIN:-4.5}" --finetune-min "${FINETUNE_MIN:-0.75}" \
  --out "$out/campaign" --work /tmp/campaign-work --no-progress "$@"
echo "campaign: $(($(date +%s) - start)) s in all"
