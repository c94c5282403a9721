#!/usr/bin/env bash
# GPU check for hf: captioners; installs nothing. Builds BLIP-base and GIT-base architectures
# (random weights, saved in float32, loaded in bfloat16), writes all-JPEG WebDataset shards of the
# generated world (img2dataset's layout), then per model reports (benchmarks/gpu_throughput.py):
#   - the raw model on batches already preprocessed on the GPU (exactly 20 new tokens);
#   - our read -> decode -> preprocess -> caption loop end to end, GPU JPEG decode and CPU decode;
#   - peak GPU memory (torch.cuda.max_memory_allocated) of each, and GPU-vs-CPU decode agreement;
#   - the raw model again without captioning/hf/patches.py's fixes (BLIP: eager vision attention);
#   - where Apache Beam is installed, `imgindex caption` (the Beam pipeline) end to end.
# Usage: bash benchmarks/gpu_check.sh [IMAGES] [SHARDS] [BATCH...]   (defaults 4096 16 64 256)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-4096}
SHARDS=${2:-16}
shift $(( $# > 2 ? 2 : $# )) || true
BATCHES=${*:-64 256}
WORK=${WORK:-/tmp/imgindex-gpu-check}
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=".:${PYTHONPATH:-}"
mkdir -p "$WORK"

"$PY" - <<PYEOF
import os, torch, transformers
print(f"device: {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PYEOF

"$PY" - "$WORK" "$IMAGES" "$SHARDS" <<'PYEOF'
import os, sys, time
from pathlib import Path
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from tests.captioning.hf.tiny import build
work, images, shards = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
for family in ("blip", "git"):
    d = work / f"{family}-base"
    if not (d / "config.json").is_file():
        build(family, d, "base")
if not (work / "shards").is_dir():
    write_archive(str(work / "shards"), ArchiveConfig(images=images, shards=shards, seed=11,
                  workers=os.cpu_count() or 2, image_format="jpg"))
print(f"models and {images} JPEG images ready in {time.perf_counter() - t:.0f} s", flush=True)
PYEOF

echo
echo "| model | path | images/s | images | peak GPU memory |"
echo "|---|---|---:|---:|---:|"
for family in blip git; do
  "$PY" benchmarks/gpu_throughput.py "$WORK/$family-base" "$WORK/shards/*.tar" \
    --batch-size $BATCHES --dtype bfloat16 --cpu-decode --ab-speed-fixes
done

if "$PY" -c "import apache_beam" 2>/dev/null; then
  BATCH=${BATCHES##* }
  for family in blip git; do
    echo
    echo "== imgindex caption (Beam), $family-base, batch $BATCH =="
    start=$(date +%s.%N)
    "$PY" -m pipelines.cli.main caption "$WORK/shards" --out "$WORK/out-$family" \
      --model "hf:$WORK/$family-base" --batch-size "$BATCH" --beam-size 1 --device cuda --overwrite
    end=$(date +%s.%N)
    "$PY" -c "print(f'wall {($end - $start):.1f} s for $IMAGES images: {$IMAGES / ($end - $start):.1f} img/s including start-up')"
  done
else
  echo
  echo "Apache Beam is not installed here: the Beam pipeline's own GPU run is skipped."
fi
