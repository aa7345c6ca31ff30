#!/usr/bin/env bash
# Here, before a GPU call of the campaign (docs/campaign.md): put what the GPU machine lacks
# into two git-ignored folders that travel with the call's `carry`, and check that the call
# fits the 64 MiB a call may send:
#   .data/fashion-mnist/  Fashion-MNIST's four IDX files, recompressed as .xz (26 MB, not 31)
#   .whl/                 the platformdirs wheel (the one dependency the GPU image lacks)
# Then, on the device:  run(command="bash benchmarks/campaign_gpu.sh", carry=[".data", ".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
src="${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
for d in /.data/ /.whl/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"; done
mkdir -p .data/fashion-mnist .whl
for f in "$src"/*-ubyte.gz; do
  xz_file=".data/fashion-mnist/$(basename "${f%.gz}").xz"
  [ -s "$xz_file" ] || gzip -dc "$f" | xz -9 -T0 >"$xz_file"
done
rm -f .whl/platformdirs-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 -d .whl \
  "platformdirs==$(python3 -c 'import platformdirs; print(platformdirs.__version__)')"
python3 - <<'PY'
import os, subprocess
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                       capture_output=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(f) for f in files if f and os.path.isfile(f))
carried = sum(os.path.getsize(os.path.join(r, f)) for d in (".data", ".whl")
              for r, _, fs in os.walk(d) for f in fs)
total, limit = tree + carried, 64 * 2**20
print(f"travels: working tree {tree / 2**20:.1f} MiB + carried {carried / 2**20:.1f} MiB "
      f"= {total / 2**20:.1f} MiB of {limit / 2**20:.0f}")
if total > limit:
    raise SystemExit("over the device tool's 64 MiB: move large tracked files the campaign "
                     "does not read (models/*/model.safetensors, notebooks/) out of the tree "
                     "for the call, and back after it")
PY
