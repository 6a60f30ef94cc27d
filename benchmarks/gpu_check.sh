#!/usr/bin/env bash
# One prepared GPU check (about 5 minutes on one H100/H200, start-up aside):
#   1. scoring throughput of CIFAR ResNet-18 W4A4, the whole scoring pass against a bare
#      forward pass, batch 1024, in float32 and under bf16 autocast;
#   2. a short full-precision ResNet-18 run (the teacher of step 3);
#   3. four QAT epochs of ResNet-18 W4A4 at 10% (acs, re-selecting every 2 epochs) and on
#      the full data, from that teacher.
# Data: CIFAR-10 Parquet at $DATA (default ../shared/data/cifar10, else .gpu_data/cifar10,
# which a caller fills with what fits on the device: one training shard and part of test).
# JSON goes under $OUT when set (the device tool brings it back), else
# benchmarks/results/gpu_check/. Each step runs even when an earlier one failed; the
# script exits non-zero if any failed.
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # tiny CPU run that checks the script
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$OUT_DIR"; export OUT="$OUT_DIR"  # scoring_throughput.py writes there too
DATA="${DATA:-../shared/data/cifar10}"
[ -d "$DATA" ] || DATA=.gpu_data/cifar10
PY="${PYTHON:-python3}"
export CORESET_CURATE_PROGRESS=0 PYTHONUNBUFFERED=1
# Packages the device image lacks (datasets) travel as wheels in .whl/
if ! "$PY" -c "import datasets" 2>/dev/null && [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/cc-site .whl/*.whl && export PYTHONPATH="/tmp/cc-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  DEV=cpu; SCORE_ARGS="--limit 512 --batch-size 128 --repeats 1"
  LIMIT="--set limit_train=512 --set limit_test=256"; EPOCHS_FP=1; EPOCHS_QAT=2
else
  DEV=cuda; SCORE_ARGS="--batch-size 1024 --repeats 3"; LIMIT=""; EPOCHS_FP=3; EPOCHS_QAT=4
fi
failed=0
step() {  # step NAME COMMAND...: run, log, remember a failure, go on
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@"; then echo "== $name: ok in $((SECONDS - t0)) s"
  else echo "== $name: FAILED (exit $?) after $((SECONDS - t0)) s"; failed=1; fi
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c "import sys, torch, pyarrow, datasets; print(sys.version.split()[0], 'torch',
torch.__version__, 'pyarrow', pyarrow.__version__, 'datasets', datasets.__version__,
'cuda', torch.cuda.is_available())"
  echo "data: $DATA"; ls -la "$DATA"; } 2>&1 | tee "$OUT_DIR/gpu_check_device.txt"

RUNS="$(mktemp -d)"
step scoring_fp32 timeout 150 "$PY" benchmarks/scoring_throughput.py --device $DEV --data "$DATA" \
  --model resnet18_cifar $SCORE_ARGS
step scoring_bf16 timeout 150 "$PY" benchmarks/scoring_throughput.py --device $DEV --data "$DATA" \
  --model resnet18_cifar $SCORE_ARGS --bf16
COMMON=(--set "data=$DATA" --set model=resnet18_cifar --set device=$DEV --set batch_size=512
  --set channels_last=true $LIMIT)
step train_fp timeout 200 "$PY" -m coreset_curate train "${COMMON[@]}" --set mode=fp \
  --set epochs=$EPOCHS_FP --set lr=0.2 --set warmup_epochs=1 --out "$RUNS/fp"
cp "$RUNS/fp/summary.json" "$OUT_DIR/gpu_check_fp.json" 2>/dev/null
for m in "acs 0.1" "full 1.0"; do
  set -- $m
  step "qat_$1" timeout 200 "$PY" -m coreset_curate train "${COMMON[@]}" --set mode=qat \
    --set teacher="$RUNS/fp/model.pt" --set epochs=$EPOCHS_QAT --set reselect_every=2 \
    --set optimizer=adam --set lr=1.0e-3 --set method="$1" --set fraction="$2" \
    --out "$RUNS/qat_$1"
  cp "$RUNS/qat_$1/summary.json" "$OUT_DIR/gpu_check_qat_$1.json" 2>/dev/null
done
rm -rf "$RUNS"
echo "gpu check done: $OUT_DIR (failed=$failed)"
exit $failed
