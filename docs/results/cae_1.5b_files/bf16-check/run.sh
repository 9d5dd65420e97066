#!/bin/bash
# bf16 vs fp32 on the same items: corrigible-neutral-HHH, layers 8,12,16 at r=±0.5, 40 train / 40 test, seed 0
cd "$(git rev-parse --show-toplevel)"  # a checkout with steerlab installed; outputs under runs/
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for dt in float32 bfloat16; do
  [ -f runs/bf16/$dt/layer_sweep.csv ] && continue
  STEERLAB_DTYPE=$dt /usr/bin/time -f "$dt wall %e s cpu %U+%S s maxrss %M kB" \
    steerlab cae layers corrigible-neutral-HHH --model qwen2.5-coder-1.5b --layers 8,12,16 \
    --n-train 40 --n-test 40 --threads 1 --out runs/bf16/$dt > runs/bf16/$dt.log 2>&1
done
