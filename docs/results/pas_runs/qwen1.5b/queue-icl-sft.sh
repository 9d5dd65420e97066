#!/bin/bash
# PAS with in-context learning and on a LoRA fine-tuned model, Qwen2.5-Coder-1.5B-Instruct (bfloat16, one thread):
# the 135M ICL / SFT protocol (docs/results/pas.md) on one bias task and TruthfulQA: 3 seeds, 100 items,
# fixed choice orders, strengths ±{4,10,16,22,28}; ICL = 10 exemplars from the training split; SFT = 40 LoRA steps.
# Each step is skipped once its results.json is here (resumable). Usage: [SEEDS=N] queue-icl-sft.sh [STEP ...]
# (session 7 ran the SFT steps with SEEDS=2: a 1.5B LoRA fine-tune per seed on one CPU core)
# (steps, in order: icl-bbq-disability-status sft-bbq-disability-status icl-truthfulqa-mc1 sft-truthfulqa-mc1)
cd "$(git rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STEERLAB_DTYPE=${DT:-auto}  # auto: bfloat16 only on CPUs with avx512_bf16/AMX (steerlab doctor)
D=docs/results/pas_runs/qwen1.5b
mkdir -p runs/pas15
SEEDS="--seeds ${SEEDS:-3}"; COMMON="$SEEDS --cap 100 --choice-seed 0 --strengths 4,10,16,22,28 --model qwen2.5-coder-1.5b --threads 1"
run() {  # run NAME OUTDIR command...
  local name=$1 res=$2/results.json; shift 2
  [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]] && return
  [ -f "$res" ] && { echo "skip $name"; return; }
  echo "start $name $(date -u +%H:%M:%S) $STEERLAB_DTYPE"
  /usr/bin/time -f "$name wall %e s cpu %U+%S s maxrss %M kB" "$@" > runs/pas15/$name.log 2>&1
  local rc=$?
  echo "end $name $(date -u +%H:%M:%S) rc=$rc"; tail -1 runs/pas15/$name.log
}
ONLY="$*"
ICL() { run icl-$1 $D/icl/$1 steerlab pas --data $1 --method all --icl 10 $COMMON --out $D/icl/$1; }
ICL bbq-disability-status
# SFT: iPASwo on BBQ as at 135M; PASf on TruthfulQA, the method that steers it at 1.5B (main table). BBQ reuses
# the main run's base and base+PAS numbers (same cap and splits); TruthfulQA's main run has cap 200, so its
# base numbers are computed here.
run sft-bbq-disability-status $D/sft/bbq-disability-status steerlab pas-sft --data bbq-disability-status \
  --method ipas-wo --steps 40 --base $D/bbq-disability-status $COMMON --out $D/sft/bbq-disability-status
ICL truthfulqa-mc1
run sft-truthfulqa-mc1 $D/sft/truthfulqa-mc1 steerlab pas-sft --data truthfulqa-mc1 \
  --method pasf --steps 40 $COMMON --out $D/sft/truthfulqa-mc1
