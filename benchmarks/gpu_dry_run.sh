#!/usr/bin/env bash
# The GPU kit's whole sequence on this CPU (`make gpu-dry-run`), QUICK=1 shapes: every stage of
# gpu_suite.sh as the device-tool calls of BENCHMARKS.md ("GPU kit") would run it, then the
# results step. Each call sees only what it would carry (.gpu-kit/base and its own part) and a
# fresh KIT_HOME, so the stash / reassembly / sha256 check / GGUF conversion run as on the device.
#   PYTHON=.venv/bin/python bash benchmarks/gpu_dry_run.sh      # needs `make gpu-kit` first
set -euo pipefail
PY=${PYTHON:-python3}
sim=${DRY_RUN_DIR:-$(mktemp -d /tmp/hrpo-gpu-dry-run.XXXXXX)}
kit=$PWD/.gpu-kit
[[ -f $kit/base/manifest.json ]] || { echo "no $kit: run make gpu-kit first"; exit 2; }
parts=$(ls -d "$kit"/part-* | wc -l)
export QUICK=1 PYTHON=$PY KIT_HOME=$sim/home OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "dry run in $sim ($parts model parts)"

# carried N PATH...: the folder a call would carry, holding the kit's base and the given paths.
carried() {
  local dir=$sim/carry$1; shift
  mkdir -p "$dir"
  ln -sfn "$kit/base" "$dir/base"
  for path in "$@"; do ln -sfn "$path" "$dir/$(basename "$path")"; done
  echo "$dir"
}

# call NAME STAGE KIT_FOLDER [VAR=VALUE...]: one device-tool call, its $OUT in $sim/out/NAME.
call() {
  local name=$1 stage=$2 carry=$3; shift 3
  echo "=== call $name: gpu_suite.sh $stage, carrying $(ls "$carry" | tr '\n' ' ')"
  env "$@" KIT="$carry" OUT="$sim/out/$name" bash benchmarks/gpu_suite.sh "$stage" > "$sim/$name.console" 2>&1 ||
    { tail -30 "$sim/$name.console"; echo "=== call $name FAILED"; exit 1; }
  grep -E "^(gpu_kit|stage $stage)" "$sim/$name.console"
}

# Session A: one part per call (the last call also carries the remaining parts, if more than 3).
call A1 1 "$(carried 1 "$kit/part-1")"
call A2 2 "$(carried 2 "$kit/part-2")"
call A3 3 "$(carried 3 "$kit"/part-[3-9])"
# The evidence run, first seed only; then a later session on a fresh runs folder restores that
# seed's finished runs from the returned tarball and runs the next one (the model stays stashed).
call A4 4 "$sim/carry3" SEED_GROUPS=0
rm -rf "$KIT_HOME/runs"
mkdir -p "$sim/evidence" && cp "$sim/out/A4/evidence_runs.tar.gz" "$sim/evidence/"
call B4 4 "$(carried 4 "$sim/evidence")"
call A5 5 "$sim/carry3"

echo "=== results step: python benchmarks/gpu_results.py $sim/out/*"
"$PY" benchmarks/gpu_results.py "$sim"/out/* > "$sim/results.md"
cat "$sim/results.md"
ran=$(cat "$sim"/*.console | grep -c "every measurement ok")
echo "=== dry run done: $ran of 6 calls with every measurement ok; files in $sim"
[[ $ran == 6 ]]
