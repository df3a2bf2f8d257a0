"""Turn the files ``gpu_suite.sh`` returned into the GPU tables of BENCHMARKS.md and EXPERIMENTS.md.

    python benchmarks/gpu_results.py RESULTS_DIR [RESULTS_DIR ...]            # print the tables
    python benchmarks/gpu_results.py RESULTS_DIR ... --write .                # and fill them in

RESULTS_DIR: folders holding what the stages wrote to ``$OUT`` (several calls' folders, or one
folder they were copied into; a later folder's file wins over an earlier one of the same name).
``--write REPO`` replaces the text between ``<!-- gpu-results:benchmarks -->`` and
``<!-- /gpu-results:benchmarks -->`` in REPO/BENCHMARKS.md (likewise ``experiments`` in
EXPERIMENTS.md), copies the result files to REPO/benchmarks/results/gpu/ and unpacks the evidence
runs to REPO/experiments/results/gpu_evidence/ (where stage 4 of a later session restores them from).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

# The issue's targets, judged on stage 1's row (batch 64 × 512 tokens): (what, row key, threshold).
ROLLOUT_TARGETS = [
    ("hybrid compiled ≥ 2× `model.generate`", "hybrid_compiled_over_generate", 2.0),
    ("hybrid ≥ 0.95× plain, eager", "hybrid_over_plain", 0.95),
    ("hybrid ≥ 0.95× plain, compiled", "hybrid_compiled_over_plain_compiled", 0.95),
    ("hybrid ≥ 5× the reference-style loop", "hybrid_over_reference", 5.0),
    ("hybrid compiled ≥ 5× the reference-style loop", "hybrid_compiled_over_reference", 5.0),
    ("hybrid compiled ≥ 50% of the bandwidth floor", "hybrid_compiled_fraction_of_floor", 0.5),
]
METHODS = ["hybrid", "hybrid_static", "hybrid_compiled", "plain", "plain_compiled", "generate", "reference"]
TRAIN_VARIANTS = ["eager", "compiled", "eager_gc", "compiled_gc"]
MARK = "<!-- gpu-results:{} -->", "<!-- /gpu-results:{} -->"
STATUS = re.compile(r"^stage (\w+): (\S+) (ok|SKIPPED|CUT OFF|FAILED)(.*?)(?: in (\d+) s)?$")


def collect(dirs: list[Path]) -> dict[str, Path]:
    """File name → path over all folders (and one level below); later folders win."""
    files: dict[str, Path] = {}
    for d in dirs:
        for path in sorted(d.glob("*")) + sorted(d.glob("*/*")):
            if path.is_file():
                files[path.name] = path
    return files


def load(files: dict[str, Path], name: str):
    return json.loads(files[name].read_text()) if name in files else None


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def environment(files: dict[str, Path]) -> tuple[list[str], list[str], list[str], bool]:
    """Machine lines, the stage log table's rows and the commands, from the ``stage*_env.txt`` files."""
    machine, log, commands, quick = [], [], [], False
    for name in sorted(n for n in files if re.fullmatch(r"stage\w+_env\.txt", n)):
        lines = files[name].read_text().splitlines()
        if len(lines) < 3:
            continue
        quick |= "quick=1" in lines[0]
        machine.append(f"- stage {lines[0].removeprefix('stage ')}: {lines[1]}; {lines[2]}")
        for line in lines[3:]:
            if line.startswith("$ "):
                commands.append(line[2:])
            elif m := STATUS.match(line):
                stage, what, outcome, _, seconds = m.groups()
                log.append([stage, what, outcome, seconds or "–"])
    return machine, log, commands, quick


def rollout_section(files: dict[str, Path]) -> list[str]:
    rows = []
    meta = None
    for name in ("rollout_b64.json", "rollout_batches.json"):
        result = load(files, name)
        if result:
            meta = meta or result
            rows += result["rows"]
    if not rows:
        return ["Rollout throughput: no results (stages 1 and 5)."]
    rows.sort(key=lambda r: r["batch_size"])
    out = [
        f"Rollout throughput, tokens/s: {meta['model']}, {meta['dtype']}, {rows[0]['new_tokens']} new tokens, "
        f"τ {meta['temperature']}, top-k {meta['top_k']}, sync_every {meta['sync_every']}; each figure the "
        f"median of its row's repeats (`repeats_done`) after a warm-up, the methods taking turns; copy "
        f"bandwidth {meta['copy_bandwidth_gb_s']:.0f} GB/s.",
        "",
    ]
    header = [
        "batch",
        "repeats",
        *METHODS,
        "floor",
        "compiled / generate",
        "hybrid / reference",
        "compiled / floor",
    ]
    body = [
        [r["batch_size"], r.get("repeats_done", "–")]
        + [fmt(r.get(f"{m}_tok_s"), 0) for m in METHODS]
        + [fmt(r["floor_tok_s"], 0)]
        + [
            fmt(r.get(k), 2)
            for k in (
                "hybrid_compiled_over_generate",
                "hybrid_over_reference",
                "hybrid_compiled_fraction_of_floor",
            )
        ]
        for r in rows
    ]
    warm = [
        f"{r['batch_size']}: {r['hybrid_compiled_warmup_s']:.0f} s"
        for r in rows
        if "hybrid_compiled_warmup_s" in r
    ]
    out += table(header, body)
    if warm:
        out += [
            "",
            "Compiled warm-up (compilation + one full rollout), by batch size: " + ", ".join(warm) + ".",
        ]
    fell = [r["batch_size"] for r in rows if any(k.endswith("fell_back_to_eager") for k in r)]
    if fell:
        out += [
            "",
            f"**The compiled backend fell back to eager at batch {fell}: its figures are eager ones.**",
        ]
    return out


def train_section(files: dict[str, Path]) -> tuple[list[str], dict[str, dict]]:
    results = {v: load(files, f"train_step_{v}.json") for v in TRAIN_VARIANTS}
    results = {k: v for k, v in results.items() if v}
    if not results:
        return ["Training step: no results (stage 2)."], {}
    first = next(iter(results.values()))
    out = [
        f"HRPO training step at the paper's GSM8K settings: {first['model']}, {first['dtype']}, "
        f"G={first['num_generations']}, {first['completions_per_step']} completions per step, micro-batch "
        f"{first['micro_batch']}, {first['max_completion_length']} completion tokens, LoRA r={first['lora_r']}; "
        "median over the steps after the first.",
        "",
    ]
    total = first.get("device_memory_gb")
    rows = []
    for r in results.values():
        headroom = f"{total - r['peak_memory_gb']:.1f}" if total else "–"
        rows.append(
            [
                r["rollout_backend"],
                "yes" if r["gradient_checkpointing"] else "no",
                len(r["steps"]),
                fmt(r["step_time_s"], 2),
                fmt(r["rollout_tokens_per_s"], 0),
                fmt(r["peak_memory_gb"], 2),
                headroom,
            ]
        )
    header = [
        "rollout backend",
        "grad. checkpointing",
        "steps",
        "step time (s)",
        "rollout tok/s",
        "peak memory (GB)",
    ]
    out += table(header + [f"headroom of {fmt(total, 0)} GB"], rows)
    return out, results


def parity_section(files: dict[str, Path]) -> list[str]:
    r = load(files, "logprob_parity.json")
    if not r:
        return ["Log-prob parity: no results (stage 2)."]
    out = [
        f"|rollout − teacher-forced| log-probs, {r['model']}, {r['dtype']}, {r['batch_size']} sequences × "
        f"{r['new_tokens']} tokens:",
        "",
    ]
    rows = [
        [name, fmt(b["mean_abs_diff"], 4), fmt(b["p99_abs_diff"], 3), fmt(b["max_abs_diff"], 3), b["tokens"]]
        + (["fell back to eager"] if b.get("fell_back_to_eager") else [""])
        for name, b in r["backends"].items()
    ]
    return out + table(["backend", "mean", "p99", "max", "tokens", ""], rows)


def distributed_section(files: dict[str, Path]) -> list[str]:
    r = load(files, "fsdp_vs_ddp.json")
    if not r:
        return ["FSDP2 / DDP: no results (stage 3)."]
    probes = {}
    if "accelerate_probe.jsonl" in files:
        for line in files["accelerate_probe.jsonl"].read_text().splitlines():
            probes[json.loads(line)["launch"]] = json.loads(line)
    keys = ("loss", "reward", "grad_norm")
    rows = []
    for name, run in r["runs"].items():
        diff = r["max_abs_diff"].get(name, {})
        probe = probes.get(name, {})
        kind = probe.get("distributed_type", "no accelerate" if name == "single" else "–")
        rows.append(
            [name, kind.removeprefix("DistributedType."), run["steps"], fmt(run["step_time_s"], 2)]
            + [fmt(run["peak_memory_gb"], 2)]
            + [
                ("reference" if name == r["reference"] else f"{diff[k]:.2g}" if k in diff else "–")
                for k in keys
            ]
        )
    header = ["launch", "accelerate's type", "steps", "step time (s)", "peak memory (GB)"]
    out = [
        f"A few quickstart steps on SmolLM2-135M-Instruct, one process; largest per-step |Δ| from {r['reference']}:",
        "",
    ]
    return out + table(header + [f"max abs Δ {k}" for k in keys], rows)


def targets_section(files: dict[str, Path], train: dict[str, dict]) -> list[str]:
    stage1 = load(files, "rollout_b64.json")
    row = stage1["rows"][0] if stage1 and stage1["rows"] else {}
    where = f"batch {row['batch_size']} × {row['new_tokens']} tokens" if row else "stage 1"
    body = []
    for what, key, threshold in ROLLOUT_TARGETS:
        value = row.get(key)
        met = "–" if value is None else ("yes" if value >= threshold else "**no**")
        body.append([what, where, fmt(value, 2), met])
    for name, r in train.items():
        total = r.get("device_memory_gb")
        if total:
            fits = r["peak_memory_gb"] < total
            body.append(
                [
                    f"GSM8K-settings step fits ({name})",
                    f"micro-batch {r['micro_batch']}",
                    f"{r['peak_memory_gb']:.1f} of {total:.0f} GB",
                    "yes" if fits else "**no**",
                ]
            )
    return table(["target", "where", "measured", "met"], body)


def evidence_section(files: dict[str, Path]) -> list[str]:
    if "results.md" not in files:
        return ["Evidence run: no results yet (stage 4)."]
    out = [
        "`hrpo sweep experiments/gpu_evidence.yaml` (stage 4): the sweep's own table, held-out accuracy on "
        "the same 200 problems before and after, p from the exact permutation test against grpo.",
        "",
    ]
    return out + files["results.md"].read_text().strip().splitlines()


def render(dirs: list[Path]) -> dict[str, str]:
    """The markdown for BENCHMARKS.md ("benchmarks") and EXPERIMENTS.md ("experiments")."""
    files = collect(dirs)
    machine, log, commands, quick = environment(files)
    rollout = rollout_section(files)
    train, train_results = train_section(files)
    head = (
        ["**QUICK=1 dry run: tiny shapes on a CPU, not GPU figures.**", ""]
        if quick
        else ["Made by `python benchmarks/gpu_results.py` from the files the stages returned.", ""]
    )
    bench = head + ["Machine and versions:", "", *machine, ""]
    bench += ["Targets (issue 16):", "", *targets_section(files, train_results), ""]
    bench += [*rollout, "", *train, "", *parity_section(files), "", *distributed_section(files), ""]
    bench += [
        "Stage log (`stage*_env.txt`):",
        "",
        *table(["stage", "measurement", "outcome", "seconds"], log),
        "",
    ]
    bench += ["Commands:", "", "```bash", *commands, "```"]
    exp = head + evidence_section(files)
    return {"benchmarks": "\n".join(bench), "experiments": "\n".join(exp)}


def replace_block(text: str, key: str, body: str) -> str:
    """``text`` with the lines between the ``key`` markers replaced by ``body`` (markers kept)."""
    begin, end = (m.format(key) for m in MARK)
    if begin not in text or end not in text:
        raise SystemExit(f"gpu_results: markers {begin} … {end} not found")
    before, rest = text.split(begin, 1)
    _, after = rest.split(end, 1)
    return f"{before}{begin}\n{body}\n{end}{after}"


def write(repo: Path, dirs: list[Path], sections: dict[str, str]) -> None:
    """Fill the two documents, copy the result files and unpack the evidence runs."""
    for key, doc in (("benchmarks", "BENCHMARKS.md"), ("experiments", "EXPERIMENTS.md")):
        path = repo / doc
        path.write_text(replace_block(path.read_text(), key, sections[key]))
        print(f"wrote {path}")
    dest = repo / "benchmarks" / "results" / "gpu"
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in collect(dirs).items():
        if path.suffix in (".json", ".jsonl", ".txt", ".log") and path.resolve() != (dest / name).resolve():
            shutil.copyfile(path, dest / name)
    tarball = collect(dirs).get("evidence_runs.tar.gz")
    if tarball:
        evidence = repo / "experiments" / "results" / "gpu_evidence"
        (evidence / "runs").mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                target = evidence / ("runs" if "/" in member.name else "") / member.name
                if member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        print(f"unpacked {tarball} into {evidence}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", type=Path, nargs="+", help="folders of returned files")
    ap.add_argument("--write", type=Path, default=None, metavar="REPO", help="fill in REPO's documents")
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"gpu_results: not folders: {missing}")
    sections = render(args.dirs)
    for key, text in sections.items():
        print(f"<!-- for {key.upper()}.md -->\n{text}\n")
    if args.write:
        write(args.write, args.dirs, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
