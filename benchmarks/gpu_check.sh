#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on one H100): scoring throughput of CIFAR
# ResNet-18 W4A4 (whole scoring pass vs bare forward, batch 1024), then a few QAT epochs
# of it on CIFAR-10 at 10% (acs) and on the full data, from a short full-precision run.
# JSON goes under $OUT when set (the device tool brings it back), else benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
RUNS="$(mktemp -d)"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu_check_device.txt"
python -m pip install -q -e . 2>&1 | tail -1 || true
export CORESET_CURATE_PROGRESS=0
python benchmarks/scoring_throughput.py --device cuda --model resnet18_cifar --batch-size 1024
COMMON="--set data=../shared/data/cifar10 --set model=resnet18_cifar --set batch_size=512 \
 --set eval_batch_size=2048 --set score_batch_size=2048 --set channels_last=true"
timeout 150 python -m coreset_curate train $COMMON --set mode=fp --set epochs=3 \
  --set lr=0.2 --set warmup_epochs=1 --out "$RUNS/fp" > "$OUT_DIR/gpu_check_fp.json"
for m in "acs 0.1" "full 1.0"; do
  set -- $m
  timeout 150 python -m coreset_curate train $COMMON --set mode=qat \
    --set teacher="$RUNS/fp/model.pt" --set epochs=4 --set reselect_every=2 \
    --set optimizer=adam --set lr=1.0e-3 --set method="$1" --set fraction="$2" \
    --out "$RUNS/qat_$1" > "$OUT_DIR/gpu_check_qat_$1.json"
done
echo "gpu check done: $OUT_DIR"
