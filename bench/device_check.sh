#!/usr/bin/env bash
# bench/device_check.sh: the prepared GPU check, at most 5 minutes on one CUDA GPU.
#   1. the tests marked `cuda` (tests/test_cuda.py: engine, GradCAMCallback under fp16 MixedPrecision, a timm ViT,
#      `fastcam run --device cuda`), each against the same computation on the CPU or in float32;
#   2. bench/gpu.py: Grad-CAM vs a forward pass at batch 32 and 128, fp32 and fp16, ViT-B/16 and ResNet-50, and
#      `fastcam run` files/s.
# Run from a fresh copy of the repository on the GPU machine:   bash bench/device_check.sh
# Results (markdown) go to $OUT (default bench/results): device_check.md (summary), gpu.md (bench), device_tests.log.
# It installs `.[dev]` only when a needed package is missing, and every step has its own time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"; mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
el() { echo $(( $(date +%s) - t0 )); }
{
echo "# fastcam device check ($(date -u '+%Y-%m-%d %H:%M UTC'), \`bash bench/device_check.sh\`)"
echo
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1); $(nproc) CPU cores"
} > "$OUT/device_check.md"

if ! "$PY" -c "import fastai, timm, pytorch_grad_cam, pydicom, skimage, kornia" 2>/dev/null; then
  echo "== installing .[dev] (a package was missing)"
  timeout 150 "$PY" -m pip install -q -e ".[dev]" > "$OUT/device_install.log" 2>&1 \
    && echo "- installed .[dev] in $(el) s" >> "$OUT/device_check.md" \
    || echo "- pip install -e .[dev] FAILED or timed out after $(el) s (see device_install.log)" >> "$OUT/device_check.md"
else echo "- packages already installed ($(el) s)" >> "$OUT/device_check.md"; fi
"$PY" -c "import torch; print('- torch', torch.__version__, 'CUDA', torch.version.cuda, 'available:', torch.cuda.is_available())" >> "$OUT/device_check.md" 2>&1

echo "== tests marked cuda"
t1=$(date +%s)
timeout 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py > "$OUT/device_tests.log" 2>&1
rc=$?
{ echo; echo "## tests marked cuda (exit $rc, $(( $(date +%s) - t1 )) s)"; echo; echo '```'; tail -n 25 "$OUT/device_tests.log"; echo '```'; } >> "$OUT/device_check.md"

echo "== GPU bench"
t2=$(date +%s)
left=$(( 285 - $(el) )); [ $left -lt 30 ] && left=30
if [ $left -lt 150 ]; then quick=--quick; else quick=; fi
timeout $left "$PY" bench/gpu.py --out "$OUT/gpu.md" $quick > "$OUT/gpu.log" 2>&1
brc=$?
{ echo; echo "## GPU bench (exit $brc, $(( $(date +%s) - t2 )) s${quick:+, --quick})"; echo; if [ -s "$OUT/gpu.md" ]; then tail -n +3 "$OUT/gpu.md"; else tail -n 30 "$OUT/gpu.log"; fi; } >> "$OUT/device_check.md"
echo >> "$OUT/device_check.md"; echo "total $(el) s" >> "$OUT/device_check.md"
cat "$OUT/device_check.md"
[ $rc -eq 0 ] && [ $brc -eq 0 ]
