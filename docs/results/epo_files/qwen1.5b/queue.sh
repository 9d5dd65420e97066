#!/bin/bash
# EPO on Qwen2.5-Coder-1.5B-Instruct (bfloat16, one thread): can a 12-token suffix reverse corrigible-neutral-HHH
# steered at layer 12 (r = +0.5 of the layer's residual norm: alpha 11), and at what cross-entropy?
# A reduced search (30 iterations, population 4, 4 children per slot) for time; each run skipped once its epo.json
# is here. Usage: queue.sh [--after PATTERN] (wait until no process matches PATTERN first).
cd "$(git rev-parse --show-toplevel)"
[ "$1" = --after ] && while pgrep -f "$2" > /dev/null; do sleep 30; done
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STEERLAB_DTYPE=${DT:-auto}  # auto: bfloat16 only on CPUs with avx512_bf16/AMX (steerlab doctor)
D=docs/results/epo_files/qwen1.5b
mkdir -p runs/epo15
run() {  # run NAME behaviour layer strength
  [ -f $D/$1/epo.json ] && { echo "skip $1"; return; }
  echo "start $1 $(date -u +%H:%M:%S)"
  /usr/bin/time -f "$1 wall %e s cpu %U+%S s maxrss %M kB" \
    steerlab attack --behaviour $2 --layer $3 --strength $4 --positions after_user --model qwen2.5-coder-1.5b \
    --n-train 150 --n-attack 2 --n-test 30 --n-sign 24 --iterations 30 --population 4 --seq-len 12 \
    --children 4 --top-k 512 --restart-every 15 --seed 0 --eval-points 4 --threads 1 --out $D/$1 > runs/epo15/$1.log 2>&1
  local rc=$?
  echo "end $1 $(date -u +%H:%M:%S) rc=$rc"; tail -1 runs/epo15/$1.log
}
run corrigible-neutral-HHH corrigible-neutral-HHH 12 11
run power-seeking-inclination power-seeking-inclination 12 -11
# The 135M protocol's search size (100 iterations, P = 8, 4 children, restart every 50) on corrigible-neutral-HHH.
N=corrigible-neutral-HHH-100
[ -f $D/$N/epo.json ] && echo "skip $N" || {
  echo "start $N $(date -u +%H:%M:%S)"
  /usr/bin/time -f "$N wall %e s cpu %U+%S s maxrss %M kB" \
    steerlab attack --behaviour corrigible-neutral-HHH --layer 12 --strength 11 --positions after_user --model qwen2.5-coder-1.5b \
    --n-train 150 --n-attack 2 --n-test 30 --n-sign 24 --iterations 100 --population 8 --seq-len 12 \
    --children 4 --top-k 512 --restart-every 50 --seed 0 --eval-points 4 --threads 1 --out $D/$N > runs/epo15/$N.log 2>&1
  rc=$?
  echo "end $N $(date -u +%H:%M:%S) rc=$rc"; tail -1 runs/epo15/$N.log; }
