#!/bin/bash
# 1.5B CAE queue, one single-thread process at a time; each step is skipped once its result exists (resumable).
# DT=float32|bfloat16 (default float32, see docs/results/cae-1.5b.md for the bf16 check)
cd "$(git rev-parse --show-toplevel)"  # a checkout with steerlab installed; outputs under runs/
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STEERLAB_DTYPE=${DT:-float32}
M="--model qwen2.5-coder-1.5b --threads 1"
step() {  # step NAME RESULTFILE command...
  local name=$1 res=$2; shift 2
  [ -f "$res" ] && { echo "skip $name"; return; }
  echo "start $name $(date -u +%H:%M:%S)"
  /usr/bin/time -f "$name wall %e s cpu %U+%S s maxrss %M kB" "$@" > runs/cae15/$name.log 2>&1
  echo "end $name $(date -u +%H:%M:%S) rc=$?"; tail -1 runs/cae15/$name.log
}
L=4,8,12,16,20
step psi-layers runs/cae15/power-seeking-inclination/layer_sweep.csv \
  steerlab cae layers power-seeking-inclination $M --layers $L --n-train 40 --n-test 40 --out runs/cae15/power-seeking-inclination
step corr-strengths runs/cae15/corrigible-neutral-HHH/strength_sweep.csv \
  steerlab cae strengths corrigible-neutral-HHH $M --layer 12 --strengths -2,-1,-0.5,-0.25,0.25,0.5,1,2 \
  --vector docs/results/cae_1.5b_files/bf16-check/${STEERLAB_DTYPE}/caa.safetensors --n-train 40 --n-test 40 --out runs/cae15/corrigible-neutral-HHH
for B in openness agreeableness neuroticism politically-liberal conscientiousness extraversion \
         desire-to-persuade-people-to-be-more-honest-to-others; do
  step $B-layers runs/cae15/$B/layer_sweep.csv \
    steerlab cae layers $B $M --layers $L --n-train 40 --n-test 40 --out runs/cae15/$B
done
