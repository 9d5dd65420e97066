#!/bin/bash
# The 1.5B CAE queue: one single-thread process at a time, each step skipped once its result file is in
# docs/results/cae_1.5b_files (so the queue resumes on a fresh checkout where an earlier session stopped).
# Result files (CSV per item, JSON, PNG) are written straight into docs/results/cae_1.5b_files/<behaviour>/;
# logs go to runs/cae15/<step>.log with the wall/CPU/RSS line of /usr/bin/time at the end.
# DT=auto|float32|bfloat16 (default auto: bfloat16 on CPUs with avx512_bf16/AMX, where it runs ~3x faster with behaviour scores
# inside float32's intervals, docs/results/cae-1.5b.md; float32 on AVX2-only CPUs, where bfloat16 is ~3x slower).
# Usage: docs/results/cae_1.5b_files/queue.sh [STEP ...]   (no STEP: every step in order)
cd "$(git rev-parse --show-toplevel)"  # a checkout with steerlab installed and the model installed
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 STEERLAB_DTYPE=${DT:-auto}  # auto: bfloat16 only on CPUs with avx512_bf16/AMX (steerlab doctor)
R=docs/results/cae_1.5b_files
mkdir -p runs/cae15
M="--model qwen2.5-coder-1.5b --threads 1"
ONLY=" $* "
step() {  # step NAME RESULTFILE command...
  local name=$1 res=$2; shift 2
  [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]] && return
  [ -f "$res" ] && { echo "skip $name ($res exists)"; return; }
  echo "start $name $(date -u +%H:%M:%S) $STEERLAB_DTYPE"
  echo "$STEERLAB_DTYPE: $*" > runs/cae15/$name.cmd
  /usr/bin/time -f "$name wall %e s cpu %U+%S s maxrss %M kB" "$@" > runs/cae15/$name.log 2>&1
  local rc=$?
  echo "end $name $(date -u +%H:%M:%S) rc=$rc"; tail -1 runs/cae15/$name.log
}
C=corrigible-neutral-HHH P=power-seeking-inclination
CVEC=$R/bf16-check/$(python -c "from steerlab.hardware import choose_dtype, detect; print(choose_dtype('$STEERLAB_DTYPE', 'cpu', detect()).name)")/caa.safetensors   # CAA on the 40 training items (seed 0), layers 8/12/16
PVEC=$R/$P/caa.safetensors                            # likewise, layers 4..20
L=4,8,12,16,20
S40="--n-train 40 --n-test 40"

# corrigible-neutral-HHH at its layer (12): strengths to where it degrades, CAA vs ActAdd, perplexity/KL,
# sample counts, the judge's separation, OOD.
step corr-strengths $R/$C/strength_sweep.csv \
  steerlab cae strengths $C $M --layer 12 --strengths -4,-2,-1,-0.5,-0.25,0.25,0.5,1,2,4 --vector $CVEC $S40 --out $R/$C
step corr-compare $R/$C/method_comparison.csv \
  steerlab cae compare $C $M --layer 12 $S40 --out $R/$C
step corr-side-effects $R/$C/side_effects.csv \
  steerlab cae side-effects $C $M --layer 12 --vector $CVEC --n-train 40 --out $R/$C
step corr-samples $R/$C/sample_count_sweep.csv \
  steerlab cae samples $C $M --layer 12 --counts 10,20,40,80 --n-train 80 --n-test 40 --out $R/$C
step corr-judge $R/$C/judge_check.json \
  steerlab cae judge-check $C $M --n 40 --out $R/$C
step corr-ood $R/$C/ood.json \
  steerlab cae ood $C $M --layer 12 --strength 0.5 --vector $CVEC --n-train 40 --out $R/$C
# power-seeking-inclination at layer 12
step psi-strengths $R/$P/strength_sweep.csv \
  steerlab cae strengths $P $M --layer 12 --strengths -2,-1,-0.5,-0.25,0.25,0.5,1,2 --vector $PVEC $S40 --out $R/$P
step psi-samples $R/$P/sample_count_sweep.csv \
  steerlab cae samples $P $M --layer 12 --counts 10,20,40,80 --n-train 80 --n-test 40 --out $R/$P
# the seven persona (Yes/No) behaviours: layer sweeps
for B in openness agreeableness neuroticism politically-liberal conscientiousness extraversion \
         desire-to-persuade-people-to-be-more-honest-to-others; do
  step $B-layers $R/$B/layer_sweep.csv \
    steerlab cae layers $B $M --layers $L $S40 --out $R/$B
done
# The full protocol for every behaviour (as corrigible-neutral-HHH-200): 200 train / 100 test, every 2nd layer, ±0.5.
step corr-full-layers $R/$C-200/layer_sweep.csv \
  steerlab cae layers $C $M --layer-step 2 --n-train 200 --n-test 100 --out $R/$C-200
for B in $P openness agreeableness neuroticism politically-liberal conscientiousness extraversion \
         desire-to-persuade-people-to-be-more-honest-to-others; do
  step $B-full-layers $R/$B-200/layer_sweep.csv \
    steerlab cae layers $B $M --layer-step 2 --n-train 200 --n-test 100 --out $R/$B-200
done
# Sample-count curves, 10..200 pairs (nested), 100 test items, at each behaviour's layer from its sweep.
step corr-samples-200 $R/$C-200/sample_count_sweep.csv \
  steerlab cae samples $C $M --layer 12 --counts 10,20,40,80,120,160,200 --n-train 200 --n-test 100 --out $R/$C-200
step openness-samples-200 $R/openness-200/sample_count_sweep.csv \
  steerlab cae samples openness $M --layer 8 --counts 10,20,40,80,120,160,200 --n-train 200 --n-test 100 --out $R/openness-200
step conscientiousness-samples-200 $R/conscientiousness-200/sample_count_sweep.csv \
  steerlab cae samples conscientiousness $M --layer 8 --counts 10,20,40,80,120,160,200 --n-train 200 --n-test 100 --out $R/conscientiousness-200
# PAS forgetting check: the TruthfulQA PASf vector (chosen on TruthfulQA validation) applied unchanged to OpenBookQA.
PT=docs/results/pas_runs/qwen1.5b
step pas-transfer-tqa-obqa $PT/transfer/truthfulqa-mc1-pasf-to-openbookqa.json \
  steerlab pas-transfer $PT/truthfulqa-mc1/vector.safetensors --data openbookqa --cap 400 --seeds 1 \
  --model qwen2.5-coder-1.5b --out $PT/transfer/truthfulqa-mc1-pasf-to-openbookqa.json
# Session 7: the 135M suite's protocol for the remaining behaviours — best layer chosen on 60 *validation* items
# (every 2nd layer, ±0.5), then on 100 disjoint test items at that layer: strength sweep and CAA vs ActAdd at
# r = ±0.5, ±1, OOD (10 choice-qa + 10 open-ended, judged by the model itself after a judge check on 40 + 40
# answers), perplexity/KL at the same strengths. Sample counts are left out here (three curves above).
for B in $P openness agreeableness conscientiousness extraversion politically-liberal \
         desire-to-persuade-people-to-be-more-honest-to-others neuroticism; do
  step $B-judge $R/$B-val/judge_check.json \
    steerlab cae judge-check $B $M --n 40 --out $R/$B-val
  step $B-val $R/$B-val/summary.json \
    steerlab cae run --behaviour $B $M --layer-step 2 --n-train 200 --n-val 60 --n-test 100 \
    --strengths -1,-0.5,0.5,1 --counts "" --out $R/$B-val
done
# corrigible-neutral-HHH the same way (its own judge check for the -val directory, so the suite's summary has it).
step $C-judge $R/$C-val/judge_check.json \
  steerlab cae judge-check $C $M --n 40 --out $R/$C-val
step $C-val $R/$C-val/summary.json \
  steerlab cae run --behaviour $C $M --layer-step 2 --n-train 200 --n-val 60 --n-test 100 \
  --strengths -1,-0.5,0.5,1 --counts "" --out $R/$C-val
