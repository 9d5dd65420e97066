#!/bin/bash
# the corpus cost of corrigible's scheduled persona vector (layer 10, alpha of r = 1.0) by window and schedule
cd "$(dirname "$0")/../../../.."  # the repository root; run it in the main venv
V=docs/results/generalisation_files/1.5b-schedule-r1/corrigible-neutral-HHH/persona/seed0/vector.safetensors
A=6.839384671332457
for cfg in "first:16 128" "first:16 48" "constant 48" "constant 128" "decay:16 48"; do
  set -- $cfg
  o=docs/results/generalisation_files/schedule-cost/corrigible-L10-r1-${1/:/}-w$2
  [ -d $o ] && continue  # measured: a rerun of the script adds only the missing rows
  echo "=== $1 window $2 $(date -u +%H:%M)"
  STEERLAB_DTYPE=float32 steerlab cae side-effects corrigible-neutral-HHH -o $o --layer 10 -v $V --raw \
    --strengths=$A,-$A --window $2 --tokens 1024 --schedule $1 --model qwen2.5-coder-1.5b --threads 1 2>&1 | grep -E "strength|Error|error"
done
echo "=== done $(date -u +%H:%M)"
