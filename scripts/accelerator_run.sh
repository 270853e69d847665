#!/usr/bin/env bash
# One pass over what matters on an accelerator: the epoch benchmark, the quick main job, and the
# paper's MNIST table (teacher, student alone, distilled student) with the paper configs.
#   KD_JAX_MNIST_DIR=/path/to/mnist scripts/accelerator_run.sh OUT_DIR
# Results (JSON, plot, log) land flat in OUT_DIR.
set -euo pipefail
out=${1:?usage: scripts/accelerator_run.sh OUT_DIR}
mkdir -p "$out"
runs=$(mktemp -d)
export PYTHONUNBUFFERED=1
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"

python3 -m kd_jax.benchmark --out "$out/benchmark.json"

start=$(date +%s)
python3 -m kd_jax.pipeline --workdir "$runs/quick"
echo "quick pipeline wall time: $(( $(date +%s) - start ))s"
cp "$runs/quick/summary.json" "$out/quick_summary.json"

start=$(date +%s)
python3 -m kd_jax.pipeline --workdir "$runs/paper" --teacher_config configs/teacher.py \
  --student_config configs/distill.py
echo "paper pipeline wall time: $(( $(date +%s) - start ))s"
cp "$runs/paper/summary.json" "$out/paper_summary.json"
cp "$runs/paper/test_errors.png" "$out/paper_test_errors.png"
cat "$runs/paper/teacher/metrics.jsonl" > "$out/paper_teacher_metrics.jsonl"
