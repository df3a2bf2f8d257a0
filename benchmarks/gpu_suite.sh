#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one run, for a lent GPU machine (one call of the
# device tool). Results go to $OUT (default benchmarks/results). The model is Qwen2.5-1.5B-Instruct's
# architecture with random weights in bf16; weights are never downloaded. Needs the tokenizer files
# in $TOKENIZER (default benchmarks/.tokenizer: `make bench-tokenizer` writes them; carry that path).
#   OUT=/tmp/out bash benchmarks/gpu_suite.sh                 # on the GPU machine
#   QUICK=1 bash benchmarks/gpu_suite.sh                      # 2-layer model, short runs: checks the script
set -euo pipefail
OUT=${OUT:-benchmarks/results}
TOKENIZER=${TOKENIZER:-benchmarks/.tokenizer}
CFG=benchmarks/configs/qwen2.5-1.5b-instruct.json
PY=${PYTHON:-python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
model=(--random-config "$CFG" --tokenizer "$TOKENIZER")
batches=(8 32 64 128); tokens=512; repeats=3; steps=3; completion=512; parity_tokens=256; tag=${TAG:-gpu}
if [[ -n "${QUICK:-}" ]]; then
  model+=(--override num_hidden_layers=2 hidden_size=256 intermediate_size=512 num_attention_heads=4 num_key_value_heads=2)
  batches=(2 4); tokens=8; repeats=1; steps=2; completion=8; parity_tokens=8; tag=quick
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu_$tag.txt" 2>/dev/null || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$OUT/gpu_$tag.txt"
"$PY" benchmarks/rollout_throughput.py "${model[@]}" --batch-sizes "${batches[@]}" --new-tokens $tokens \
  --repeats $repeats --sync-every 8 --output "$OUT/rollout_throughput_$tag.json"
"$PY" benchmarks/train_step.py "${model[@]}" --steps $steps --max-completion-length $completion \
  --output "$OUT/train_step_$tag.json"
"$PY" benchmarks/train_step.py "${model[@]}" --steps $steps --max-completion-length $completion \
  --gradient-checkpointing --output "$OUT/train_step_checkpointing_$tag.json"
"$PY" benchmarks/train_step.py "${model[@]}" --steps $steps --max-completion-length $completion \
  --rollout-backend compiled --sync-every 8 --output "$OUT/train_step_compiled_$tag.json"
"$PY" benchmarks/logprob_parity.py "${model[@]}" --batch-size 16 --new-tokens $parity_tokens \
  --output "$OUT/logprob_parity_$tag.json"
echo "results in $OUT"
