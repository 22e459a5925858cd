#!/usr/bin/env bash
# Everything this project measures on a CUDA machine, in one go (each step bounded in time):
# the test suite with CUDA present, speed tables (bench.py) and peak memory (memory.py) for the
# official architectures. Results go to $OUT (default benchmarks/gpu-out).
#   bash benchmarks/gpu.sh            # on a machine with an NVIDIA GPU and PyTorch installed
set -u
OUT=${OUT:-benchmarks/gpu-out}
R=$(mktemp -d)  # everything lands here; packed into $OUT/results.tgz after each step
mkdir -p "$OUT"
pack() { tar czf "$OUT/results.tgz" -C "$R" . ; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
step() { echo "=== $(date +%T) $*" >&2; }

step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nproc; } 2>&1 | tee "$R/env.txt"
# The `vdvae` entry point for the tests that run it as a program (no network there: no build isolation).
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$R/pip.txt" 2>&1 || echo "pip install failed" >&2

step tests
timeout ${T_TESTS:-150} $PY -m pytest -q -p no:cacheprovider --durations=15 -o addopts="" tests >"$R/tests.txt" 2>&1
echo "tests rc=$?" | tee -a "$R/tests.txt"; tail -25 "$R/tests.txt"; pack

B="$PY benchmarks/bench.py --device cuda --dtypes fp32 bf16 fp16 --repeats 5 --markdown"
step bench eager
timeout ${T_BENCH:-220} bash -c "
$B --models ffhq256 --tasks sample --batch 1 32 --json $R/bench-ffhq256-sample.json
$B --models ffhq256 --tasks reconstruct --batch 1 16 --json $R/bench-ffhq256-reconstruct.json
$B --models cifar10 --tasks sample reconstruct --batch 256 --json $R/bench-cifar10.json
$B --models imagenet64 --tasks sample reconstruct --batch 64 --json $R/bench-imagenet64.json
$B --models ffhq1024 --tasks sample --batch 1 4 --json $R/bench-ffhq1024.json
" >"$R/bench.txt" 2>&1
echo "bench rc=$?" >>"$R/bench.txt"; grep -v '^|' "$R/bench.txt" | tail -60; pack

step memory
timeout ${T_MEM:-100} $PY benchmarks/memory.py --device cuda --json "$R/memory-cuda.json" \
  --case ffhq256:sample:bf16:1 --case ffhq256:sample:bf16:32 --case ffhq256:sample:fp32:32 \
  --case ffhq256:reconstruct:fp32:1 --case ffhq256:reconstruct:bf16:16 \
  --case ffhq1024:reconstruct:fp32:1 --case ffhq1024:reconstruct:bf16:4 --case imagenet64:sample:bf16:256 \
  >"$R/memory.txt" 2>&1
echo "memory rc=$?" >>"$R/memory.txt"; cat "$R/memory.txt"; pack

step bench compiled
timeout ${T_COMPILE:-110} bash -c "
$B --compile --dtypes bf16 --models cifar10 --tasks sample --batch 256 --json $R/bench-compiled-cifar10.json
$B --compile --dtypes bf16 --models ffhq256 --tasks sample --batch 8 --json $R/bench-compiled-ffhq256.json
" >"$R/bench-compiled.txt" 2>&1
echo "compiled rc=$?" >>"$R/bench-compiled.txt"; grep -v '^|' "$R/bench-compiled.txt" | tail -30; pack
step done
