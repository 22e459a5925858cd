#!/usr/bin/env bash
# Everything this project measures on a CUDA machine, in one call bounded to ten minutes: the test
# suite with CUDA present; speed (sample and reconstruct) and peak memory (batch 1 and the largest
# batch timed) for both families, VDVAE (bench.py) and NVAE (bench_nvae.py); a training step
# (train_bench.py); compiled VDVAE sampling. Every step has its own time limit and the whole run a
# deadline (DEADLINE seconds, default 590): a step that would start too late is skipped and says
# so, and whatever finished is packed into $OUT/results.tgz after each step.
#   bash benchmarks/gpu.sh                        # on a machine with an NVIDIA GPU and PyTorch
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu.sh     # every piece, tiny, on a CPU (checks the script)
set -u
OUT=${OUT:-benchmarks/gpu-out}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
DEADLINE=${DEADLINE:-590}
START=$(date +%s)
R=$(mktemp -d)  # everything lands here; packed into $OUT/results.tgz after each step
mkdir -p "$OUT"
pack() { tar czf "$OUT/results.tgz" -C "$R" . ; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
step() { echo "=== $(date +%T) (+$(( $(date +%s) - START ))s) $*" >&2; }
# budget WANT: seconds for the next step, at most what is left before the deadline (0: skip it)
budget() { local left=$(( DEADLINE - ($(date +%s) - START) )); local b=$(( $1 < left ? $1 : left ));
           if [ "$b" -lt 15 ]; then echo 0; else echo "$b"; fi; }
# run NAME WANT CMD...: CMD under its budget, output in $R/NAME.txt, its status on the last line
run() { local name=$1 want=$2; shift 2; local b; b=$(budget "$want")
        if [ "$b" -eq 0 ]; then echo "$name skipped: deadline" | tee -a "$R/$name.txt"; return; fi
        step "$name (limit ${b}s)"
        timeout "$b" "$@" >>"$R/$name.txt" 2>&1; local rc=$?
        echo "$name rc=$rc$([ $rc -eq 124 ] && echo ' (time limit)')" | tee -a "$R/$name.txt"; pack; }

if [ "$SMOKE" = 1 ]; then  # tiny shapes, one repeat: each piece runs, nothing is measured
  REP=1; NV_MODELS="mnist"; NV_B1="1"; NV_BIG="2"; VD_BIG="2"; VD_BIG256="1"; TRAIN="small32 nvae-small32"
  TRAIN_BATCH=2; TESTS="tests/test_nvae_fused.py tests/test_dtypes.py"; COMPILE_MODELS="cifar10"
  MEM_CASES=(cifar10:sample:fp32:1 nvae-mnist:sample:fp32:1 nvae-mnist:reconstruct:bf16:2)
else
  REP=5; NV_MODELS="celebahq256"; NV_B1="1"; NV_BIG="16"; VD_BIG="256"; VD_BIG256="32"
  TRAIN="cifar10 nvae-cifar10"; TRAIN_BATCH=32; TESTS="tests"; COMPILE_MODELS="cifar10"
  MEM_CASES=(ffhq256:sample:bf16:1 ffhq256:sample:bf16:32 ffhq256:reconstruct:bf16:16 cifar10:sample:bf16:256
             nvae-celebahq256:sample:bf16:1 nvae-celebahq256:sample:bf16:16 nvae-celebahq256:reconstruct:bf16:16
             nvae-cifar10:sample:bf16:256)
fi
MEM_ARGS=(); for c in "${MEM_CASES[@]}"; do MEM_ARGS+=(--case "$c"); done

step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'available', torch.cuda.is_available())"
  nproc; } 2>&1 | tee "$R/env.txt"
# The `vdvae` entry point for the tests that run it as a program (no network there: no build isolation).
[ "$SMOKE" = 1 ] || $PY -m pip install -q --no-deps --no-build-isolation -e . >"$R/pip.txt" 2>&1 || echo "pip install failed" >&2

run tests "${T_TESTS:-150}" $PY -m pytest -q -p no:cacheprovider --durations=15 -o addopts="" $TESTS
tail -25 "$R/tests.txt"

# VDVAE: sample and reconstruct, batch 1 and a large batch (fp32, bf16, fp16; plain fp32 first)
B="$PY benchmarks/bench.py --device $DEVICE --dtypes fp32 bf16 fp16 --repeats $REP --markdown"
if [ "$SMOKE" = 1 ]; then
  run bench-vdvae 120 $B --models cifar10 --tasks sample reconstruct --batch 1 $VD_BIG --json "$R/bench-vdvae-cifar10.json"
else
  run bench-vdvae "${T_BENCH:-130}" bash -c "
  $B --models ffhq256 --tasks sample --batch 1 $VD_BIG256 --json $R/bench-ffhq256-sample.json
  $B --models ffhq256 --tasks reconstruct --batch 1 16 --json $R/bench-ffhq256-reconstruct.json
  $B --models cifar10 --tasks sample reconstruct --batch 1 $VD_BIG --json $R/bench-cifar10.json"
fi
grep -v '^|' "$R/bench-vdvae.txt" | tail -40

# NVAE: the same, plain fp32 (the official code's path) first, then what the CLI runs
N="$PY benchmarks/bench_nvae.py --device $DEVICE --repeats $REP"
NV_CIFAR=$([ "$SMOKE" = 1 ] && echo true || echo "$N --models cifar10 --tasks sample --batch 1 256 --json $R/bench-nvae-cifar10.json")
run bench-nvae "${T_NVAE:-100}" bash -c "
$N --models $NV_MODELS --tasks sample reconstruct --batch $NV_B1 $NV_BIG --json $R/bench-nvae-$NV_MODELS.json
$NV_CIFAR"
tail -30 "$R/bench-nvae.txt"

# Peak memory, both families, batch 1 and the largest batch timed above
run memory "${T_MEM:-90}" $PY benchmarks/memory.py --device "$DEVICE" --json "$R/memory.json" "${MEM_ARGS[@]}"
cat "$R/memory.txt"

# A training step (forward, backward, optimizer, EMA), plain fp32 against bf16 autocast channels-last
run train "${T_TRAIN:-50}" $PY benchmarks/train_bench.py --device "$DEVICE" --models $TRAIN --batch $TRAIN_BATCH \
  --rounds $([ "$SMOKE" = 1 ] && echo 1 || echo 3) --steps $([ "$SMOKE" = 1 ] && echo 1 || echo 3) \
  --variants "fp32 (plain)" "bf16 autocast channels-last" --json "$R/train.json"
cat "$R/train.txt"

# Compiled VDVAE sampling (bf16): last, since compiling takes what is left
run bench-compiled "${T_COMPILE:-50}" $B --compile --dtypes bf16 --models $COMPILE_MODELS --tasks sample \
  --batch $VD_BIG --json "$R/bench-compiled-cifar10.json"
grep -v '^|' "$R/bench-compiled.txt" | tail -20
step done
