#!/usr/bin/env bash
# GPU check for hf: captioners; installs nothing. Builds BLIP-base and GIT-base architectures
# (random weights, saved in float32, loaded in bfloat16), writes JPEG/PNG/WebP tar shards, then per
# model reports:
#   1. the Beam pipeline end to end (`imgindex caption`, DirectRunner): its own images/s table;
#   2. benchmarks/gpu_throughput.py: our read -> decode -> preprocess -> caption loop with a
#      prefetch thread (GPU JPEG decode, then CPU decode), the raw model on preprocessed batches
#      already on the GPU, and peak GPU memory (torch.cuda.max_memory_allocated) for each.
# Usage: bash benchmarks/gpu_check.sh [IMAGES] [SHARDS] [BATCH]   (defaults 512 8 64)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-512}
SHARDS=${2:-8}
BATCH=${3:-64}
WORK=${WORK:-/tmp/imgindex-gpu-check}
PY=${PY:-.venv/bin/python}
IMGINDEX=${IMGINDEX:-.venv/bin/imgindex}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$WORK"

"$PY" - <<EOF
import torch, transformers
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF

"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.captioning.hf_tiny import build
for family in ("blip", "git"):
    d = Path(sys.argv[1]) / f"{family}-base"
    if not (d / "config.json").is_file():
        build(family, d, "base")
EOF

if [ ! -d "$WORK/shards" ]; then
  "$IMGINDEX" sample-archive "$WORK/shards" --images "$IMAGES" --shards "$SHARDS" --format tar \
    --workers 8
fi

echo
echo "| model | path | images/s | images | peak GPU memory |"
echo "|---|---|---:|---:|---:|"
for family in blip git; do
  "$PY" benchmarks/gpu_throughput.py "$WORK/$family-base" "$WORK/shards/*.tar" \
    --batch-size "$BATCH" --dtype bfloat16
done

for family in blip git; do
  echo
  echo "== imgindex caption (Beam DirectRunner), $family-base, batch $BATCH =="
  start=$(date +%s.%N)
  "$IMGINDEX" caption "$WORK/shards" --out "$WORK/out-$family" --model "hf:$WORK/$family-base" \
    --batch-size "$BATCH" --beam-size 1 --device cuda --overwrite
  end=$(date +%s.%N)
  "$PY" -c "print(f'wall {($end - $start):.1f} s for $IMAGES images: {$IMAGES / ($end - $start):.1f} img/s including start-up')"
done
