#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md and EXPERIMENTS.md in stages, one device-tool call each
# (BENCHMARKS.md, "GPU kit": which part of .gpu-kit each call carries, and the time estimates).
#   bash benchmarks/gpu_suite.sh STAGE        # on the GPU machine; results in $OUT
#   QUICK=1 bash benchmarks/gpu_suite.sh 1    # tiny shapes, a few steps: checks a stage on CPU
# Stages, most valuable first (0: only stash the model part this call carried, in seconds):
#   1  rollout throughput at batch 64 × 512 tokens: hybrid and plain, eager and compiled; generate; the
#      reference-style loop (Qwen2.5-1.5B architecture, random bf16 weights)
#   2  HRPO training step at the paper's GSM8K settings: eager/compiled, ± gradient checkpointing; bf16 log-prob parity
#   3  a few HRPO steps on SmolLM2 under accelerate launch with FSDP2, with DDP, and without accelerate, compared
#   4  the evidence run: SmolLM2 arithmetic, HRPO r_min 0.95/0.99 vs GRPO, 4 seeds × 200 steps (several sessions)
#   5  rollout throughput at batch 128, 8 and 32 (hybrid eager, static cache and compiled; plain; generate)
# Every stage first runs `gpu_kit.py setup` (stashes the model part this call carried), writes each
# result file to $OUT as soon as it exists, and stops starting measurements once BUDGET_S seconds
# have passed (a measurement running then is cut off at the budget), so a stage always returns in time.
# Environment: OUT (results; default benchmarks/results/gpu), KIT (.gpu-kit), KIT_HOME
# (/tmp/hrpo-gpu-kit), BUDGET_S (per-stage default below), ONLY (names of the measurements to run,
# space-separated; default all), QUICK, PYTHON (python3), JOBS (stage 4's runs side by side, 6) and
# SEED_GROUPS (stage 4's seeds, a sweep call per group: "0,1 2,3").
set -uo pipefail
stage=${1:?usage: gpu_suite.sh STAGE (0-5)}
OUT=${OUT:-benchmarks/results/gpu}
KIT=${KIT:-.gpu-kit}
KIT_HOME=${KIT_HOME:-/tmp/hrpo-gpu-kit}
PY=${PYTHON:-python3}
declare -A budget=([1]=270 [2]=240 [3]=150 [4]=500 [5]=480)
[[ -n "${QUICK:-}" ]] && budget=([1]=900 [2]=900 [3]=900 [4]=900 [5]=900)  # a CPU compiles slowly
BUDGET_S=${BUDGET_S:-${budget[$stage]:-300}}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/stage$stage.log") 2>&1
tee_pid=$!
export PYTHONUNBUFFERED=1 PYTHONPATH="$KIT_HOME/site:src${PYTHONPATH:+:$PYTHONPATH}" HRPO_CACHE="$KIT_HOME/cache"
export KIT KIT_HOME
deadline=$((SECONDS + BUDGET_S))
env_file="$OUT/stage${stage}_env.txt"
failed=0

# What ran where: the GPU, the library versions, then each command with its outcome and seconds.
{
  echo "stage $stage $(date -u +%Y-%m-%dT%H:%M:%SZ) quick=${QUICK:-0} budget_s=$BUDGET_S"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import sys, torch, transformers, accelerate, peft; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"
} > "$env_file"

# measure NAME CMD...: run CMD under what is left of the budget, unless ONLY leaves NAME out.
measure() {
  local name=$1; shift
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return 0; fi
  local left=$((deadline - SECONDS)) start=$SECONDS rc
  if ((left < 10)); then
    echo "stage $stage: $name SKIPPED (budget of ${BUDGET_S}s spent)" | tee -a "$env_file"
    return 0
  fi
  echo "stage $stage: $name: $*"
  timeout --kill-after=10 "$left" "$@"
  rc=$?
  local outcome="ok"
  ((rc == 124 || rc == 137)) && outcome="CUT OFF at the budget"
  ((rc != 0 && rc != 124 && rc != 137)) && outcome="FAILED (exit $rc)"
  [[ $outcome == ok ]] || failed=1
  echo "stage $stage: $name $outcome in $((SECONDS - start)) s" | tee -a "$env_file"
  { printf '$'; printf ' %q' "$@"; echo; } >> "$env_file"
}

need=(); [[ $stage == [34] ]] && need=(--need-model)  # stages 3 and 4 train the real SmolLM2
"$PY" benchmarks/gpu_kit.py setup "${need[@]}" || exit $?
CFG=benchmarks/configs/qwen2.5-1.5b-instruct.json
TOKENIZER=${TOKENIZER:-$KIT_HOME/tokenizer}
[[ -d $TOKENIZER ]] || TOKENIZER=benchmarks/.tokenizer
model=(--random-config "$CFG" --tokenizer "$TOKENIZER")
tokens=512; repeats=2; steps=3; completion=512; parity_tokens=256; b64=64; others=(128 8 32)
if [[ -n "${QUICK:-}" ]]; then
  model+=(--override num_hidden_layers=2 hidden_size=128 intermediate_size=256 num_attention_heads=4 num_key_value_heads=2
    vocab_size=49152)  # the SmolLM2 tokenizer's ids
  tokens=8; repeats=1; steps=2; completion=8; parity_tokens=8; b64=4; others=(2)
fi
rollout=(benchmarks/rollout_throughput.py "${model[@]}" --new-tokens $tokens --sync-every 8)
train=(benchmarks/train_step.py "${model[@]}" --steps $steps --max-completion-length $completion --sync-every 8)

# small_run NAME LAUNCHER...: a few HRPO steps of the quickstart recipe on SmolLM2 (stage 3).
small_run() {
  local name=$1; shift
  local run=$KIT_HOME/runs/$name
  rm -rf "$run"
  local cfg=(--config quickstart output_dir="$run" max_steps=5 eval_limit=0 save_steps=0 log_completions_steps=0 sync_every=8)
  [[ -n "${QUICK:-}" ]] && cfg+=(max_steps=2 max_completion_length=8)
  measure "$name" "$@" -m hrpo.cli train "${cfg[@]}" --no-plots
  [[ ! -f $run/metrics.jsonl ]] || cp "$run/metrics.jsonl" "$OUT/${name}_metrics.jsonl"
}

case $stage in
0) ;;
1)
  measure rollout_b64 "$PY" "${rollout[@]}" --batch-sizes $b64 --repeats $repeats \
    --methods hybrid hybrid_compiled plain plain_compiled generate reference --output "$OUT/rollout_b64.json"
  ;;
2)
  measure train_eager "$PY" "${train[@]}" --output "$OUT/train_step_eager.json"
  measure train_compiled "$PY" "${train[@]}" --rollout-backend compiled --output "$OUT/train_step_compiled.json"
  measure train_eager_gc "$PY" "${train[@]}" --gradient-checkpointing --output "$OUT/train_step_eager_gc.json"
  measure parity "$PY" benchmarks/logprob_parity.py "${model[@]}" --batch-size 16 --new-tokens $parity_tokens \
    --backends eager_dynamic eager_static compiled --output "$OUT/logprob_parity.json"
  measure train_compiled_gc "$PY" "${train[@]}" --gradient-checkpointing --rollout-backend compiled \
    --output "$OUT/train_step_compiled_gc.json"
  ;;
3)
  measure convert "$PY" -c "from hrpo.loading import default_model_path; print(default_model_path())"
  # One process: FSDP2 with a world of one on a GPU (on a CPU accelerate sets up no FSDP at all;
  # accelerate_probe.py records which it was).
  for launch in fsdp ddp; do
    acc=("$PY" -m accelerate.commands.launch --num_processes 1 --config_file "src/hrpo/configs/accelerate/$launch.yaml")
    measure "probe_$launch" "${acc[@]}" benchmarks/accelerate_probe.py "$launch" "$OUT/accelerate_probe.jsonl"
    small_run "$launch" "${acc[@]}"
  done
  small_run single "$PY"
  measure compare "$PY" benchmarks/compare_runs.py "$OUT"/fsdp_metrics.jsonl "$OUT"/ddp_metrics.jsonl \
    "$OUT"/single_metrics.jsonl --output "$OUT/fsdp_vs_ddp.json"
  ;;
4)
  # Finished runs of earlier sessions: the returned tarball (carried back in .gpu-kit/evidence) or
  # the copy gpu_results.py --write committed.
  sweep=experiments/gpu_evidence.yaml groups=(${SEED_GROUPS:-0,1 2,3}) jobs=${JOBS:-6} threads=2
  earlier=("$KIT"/evidence/*.tar.gz experiments/results/gpu_evidence/runs)
  if [[ -n "${QUICK:-}" ]]; then
    sweep=$KIT_HOME/gpu_evidence_quick.yaml groups=(${SEED_GROUPS:-0 1}) jobs=${JOBS:-3} threads=1
    earlier=("$KIT"/evidence/*.tar.gz)
    "$PY" benchmarks/gpu_kit.py quick-sweep experiments/gpu_evidence.yaml "$sweep" || exit 2
  fi
  runs=$("$PY" -c "import sys; from hrpo.sweep import load_sweep; print(load_sweep(sys.argv[1]).output_dir)" "$sweep")
  "$PY" benchmarks/gpu_kit.py restore-runs "$runs" "${earlier[@]}"
  # Once, before the runs start side by side (they would wait on each other's conversion).
  measure convert "$PY" -c "from hrpo.loading import default_model_path; print(default_model_path())"
  for seeds in "${groups[@]}"; do
    measure "evidence_seeds_${seeds/,/_}" "$PY" -m hrpo.cli sweep "$sweep" --jobs "$jobs" --threads $threads --seeds "$seeds"
    "$PY" benchmarks/gpu_kit.py pack-runs "$runs" "$OUT/evidence_runs.tar.gz"
  done
  "$PY" -m hrpo.cli sweep "$sweep" --summarize-only > /dev/null && cp "$runs"/results.md "$runs"/results.json "$OUT"/
  ;;
5)
  measure rollout_batches "$PY" "${rollout[@]}" --batch-sizes "${others[@]}" --repeats 1 \
    --methods hybrid hybrid_static hybrid_compiled plain generate --output "$OUT/rollout_batches.json"
  ;;
*) echo "unknown stage $stage (0-5)"; exit 2 ;;
esac
if ((failed)); then echo "stage $stage done in $SECONDS s, some measurement failed or was cut off; results in $OUT"
else echo "stage $stage done in $SECONDS s, every measurement ok; results in $OUT"; fi
exec >&- 2>&-; wait "$tee_pid"  # the log complete before the call returns
exit $failed
