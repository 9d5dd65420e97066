#!/bin/bash
# PAS on Qwen2.5-Coder-1.5B-Instruct (bfloat16, one thread), the 135M main table's protocol: every method,
# 5 seeds, fixed choice orders, strengths ±{4,10,16,22,28}, the default layer grid scaled to 28 blocks.
# Each task is skipped once its results.json is here (resumable). Usage: queue.sh [TASK ...]
cd "$(git rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STEERLAB_DTYPE=${DT:-auto}  # auto: bfloat16 only on CPUs with avx512_bf16/AMX (steerlab doctor)
D=docs/results/pas_runs/qwen1.5b
mkdir -p runs/pas15
for T in ${@:-openbookqa truthfulqa-mc1 bbq-nationality bbq-disability-status bbq-physical-appearance bbq-sexual-orientation}; do
  CAP=100; [ "$T" = truthfulqa-mc1 ] || [ "$T" = bbq-nationality ] && CAP=200
  [ -f $D/$T/results.json ] && { echo "skip $T"; continue; }
  echo "start $T $(date -u +%H:%M:%S) cap $CAP $STEERLAB_DTYPE"
  /usr/bin/time -f "$T wall %e s cpu %U+%S s maxrss %M kB" \
    steerlab pas --data $T --method all --seeds 5 --cap $CAP --choice-seed 0 --strengths 4,10,16,22,28 \
    --model qwen2.5-coder-1.5b --out $D/$T > runs/pas15/$T.log 2>&1
  rc=$?
  echo "end $T $(date -u +%H:%M:%S) rc=$rc"; tail -1 runs/pas15/$T.log
done
