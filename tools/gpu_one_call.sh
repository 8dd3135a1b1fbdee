#!/usr/bin/env bash
# One command of at most 10 minutes on an offline GPU machine: the GPU report and SemanIR's GPU training
# recipe (packages/semanir/docs/training.md) together. The tree installs offline into .gpu-env;
# the training (denoise_gray_small_gpu, max_time MAX_TIME) runs beside the GPU lane, then the
# quick benchmarks run on a quiet GPU. Everything is packed into $OUT after each phase
# (results.tgz, summary.md, last.ckpt: at most 3 files), so a call cut short still brings back
# what it did. Prepare here, at the repository root:
#   python3 tools/gpu_report.py wheelhouse                  # gpu-wheelhouse/, 34 MiB
#   python3 tools/gpu_report.py training-data ../shared/data/train400 \
#     ../shared/data/set12/{01,02,05}.png
# (.gpu-data/: the images as lossless WebP, 7.7 MB; with the whole of Set12, the tree, the
# wheelhouse and the data would pass the 64 MiB copied there: validation there uses three
# Set12 images, the evaluation is done here), then run, carrying gpu-wheelhouse and .gpu-data:
#   mkdir -p outputs && bash tools/gpu_one_call.sh 2>&1 | tee outputs/device.log
# Variables: OUT (required), MAX_TIME (training, default 00:00:05:15), TESTS_S (GPU lane limit,
# 170), BENCH_S (each benchmark's limit, 70), WHEELHOUSE, TRAIN_EXTRA (more fit flags).
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
TRAIN=outputs/denoise_gray_small_gpu
pack() {
  tar czf "$OUT/results.tgz.partial" outputs/gpu-report outputs/device.log outputs/train.log \
    outputs/nvidia-smi.txt "$TRAIN/pretrained" $(ls "$TRAIN"/lightning_logs/*/metrics.csv "$TRAIN"/lightning_logs/*/hparams.yaml 2>/dev/null) 2>/dev/null
  mv "$OUT/results.tgz.partial" "$OUT/results.tgz"
  cp outputs/gpu-report/summary.md "$OUT/summary.md" 2>/dev/null
  last=$(ls -t "$TRAIN"/lightning_logs/*/checkpoints/last.ckpt 2>/dev/null | head -1)
  [ -n "$last" ] && cp "$last" "$OUT/last.ckpt"
  return 0
}
mkdir -p outputs
nvidia-smi > outputs/nvidia-smi.txt 2>&1
say "install"
python3 tools/gpu_report.py install --wheelhouse "${WHEELHOUSE:-gpu-wheelhouse}" || { say "install failed"; pack; exit 1; }
say "training (background), max_time ${MAX_TIME:-00:00:05:15}"
( timeout -k 10 400 .gpu-env/bin/semanir fit --config denoise_gray_small_gpu --data.data_root .gpu-data \
    --trainer.max_time "${MAX_TIME:-00:00:05:15}" ${TRAIN_EXTRA:-} > outputs/train.log 2>&1; echo "train exit $?" >> outputs/train.log ) &
TRAIN_PID=$!
say "gpu lane"
python3 tools/gpu_report.py run tests --limit tests="${TESTS_S:-170}"
pack
say "waiting for the training"
wait $TRAIN_PID
say "training done"; tail -3 outputs/train.log
pack
say "benchmarks"
python3 tools/gpu_report.py run kernels semanir --limit kernels="${BENCH_S:-70}" --limit semanir="${BENCH_S:-70}"
pack
say "done"
