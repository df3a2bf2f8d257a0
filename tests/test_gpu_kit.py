"""The GPU kit's CPU-side pieces (benchmarks/gpu_kit.py, gpu_results.py, compare_runs.py) on small
made-up files: split and reassembly with sha256 checks, one part per call, the evidence runs'
round trip, and the results step on files shaped like what the QUICK dry run returns."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare_runs  # noqa: E402
import gpu_kit  # noqa: E402
import gpu_results  # noqa: E402


def make_kit(tmp_path: Path, data: bytes, parts: int) -> Path:
    """A kit like `prepare` writes, with a fake GGUF, one fake wheel and a tokenizer folder."""
    kit = tmp_path / "kit"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(data)
    (kit / "base" / "wheels").mkdir(parents=True)
    wheel = kit / "base" / "wheels" / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/__init__.py", "VALUE = 1\n")
    (kit / "base" / "tokenizer").mkdir()
    (kit / "base" / "tokenizer" / "tokenizer.json").write_text("{}")
    manifest = {
        "gguf": {"name": gguf.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "parts": gpu_kit.split_file(gguf, kit, parts),
        "wheels": [{"name": wheel.name, "sha256": gpu_kit.sha256(wheel)}],
        "tokenizer": "tokenizer",
    }
    (kit / "base" / gpu_kit.MANIFEST).write_text(json.dumps(manifest))
    return kit


def carrying(tmp_path: Path, kit: Path, part: int) -> Path:
    """What one call carries: the base and one part."""
    call = tmp_path / f"call{part}"
    call.mkdir()
    (call / "base").symlink_to(kit / "base")
    (call / f"part-{part}").symlink_to(kit / f"part-{part}")
    return call


def test_split_then_setup_call_by_call_reassembles_the_exact_file(tmp_path):
    data = bytes(range(256)) * 41 + b"tail"  # not a multiple of the part count
    kit = make_kit(tmp_path, data, parts=3)
    assert sum(p.stat().st_size for p in kit.glob("part-*/*")) == len(data)
    home = tmp_path / "home"
    for part in (1, 2):
        assert gpu_kit.setup(carrying(tmp_path, kit, part), home, need_model=True) == 3
    assert gpu_kit.setup(carrying(tmp_path, kit, 3), home, need_model=True) == 0
    assert (home / "site" / gpu_kit.MODULE / "model.gguf").read_bytes() == data
    assert (home / "site" / "fake" / "__init__.py").is_file()
    assert (home / "tokenizer" / "tokenizer.json").is_file()
    # A later call carrying nothing new finds everything in place.
    assert gpu_kit.setup(tmp_path / "nothing", home, need_model=True) == 0


def test_a_damaged_part_is_refused(tmp_path):
    kit = make_kit(tmp_path, b"x" * 1000, parts=2)
    part = next((kit / "part-1").iterdir())
    part.write_bytes(b"y" * part.stat().st_size)
    with pytest.raises(SystemExit, match="damaged"):
        gpu_kit.setup(carrying(tmp_path, kit, 1), tmp_path / "home", need_model=False)


def test_join_checks_the_whole_file(tmp_path):
    part = tmp_path / "p"
    part.write_bytes(b"abc")
    with pytest.raises(SystemExit, match="sha256"):
        gpu_kit.join_parts([part], tmp_path / "out", "0" * 64)
    assert not (tmp_path / "out").exists()


def make_run(sweep: Path, variant: str, seed: int, finished: bool) -> None:
    run = sweep / variant / f"seed-{seed}"
    (run / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-1" / "weights").write_text("big")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    if finished:
        (run / "eval_after.json").write_text("{}")


def test_finished_runs_travel_without_checkpoints(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep, "grpo", 0, finished=True)
    make_run(sweep, "grpo", 1, finished=False)
    (sweep / "results.md").write_text("| table |\n")
    tarball = tmp_path / "runs.tar.gz"
    gpu_kit.pack_runs(sweep, tarball)
    fresh = tmp_path / "fresh"
    gpu_kit.restore_runs(fresh, [tarball, tmp_path / "missing.tar.gz"])
    assert (fresh / "grpo" / "seed-0" / "eval_after.json").is_file()
    assert not (fresh / "grpo" / "seed-0" / "checkpoints").exists()
    assert not (fresh / "grpo" / "seed-1").exists()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def dry_run_files(out: Path) -> None:
    """One file of each kind the stages return, shaped as the QUICK dry run writes them."""
    out.mkdir()
    (out / "stage1_env.txt").write_text(
        "stage 1 2026-12-03T18:00:00Z quick=1 budget_s=240\nno nvidia-smi\npython 3.11.7 torch 2.13.0+cpu\n"
        "stage 1: rollout_b64 ok in 101 s\n$ python benchmarks/rollout_throughput.py --batch-sizes 4\n"
        "stage 1: rollout_batches SKIPPED (budget of 240s spent)\n"
    )
    row = {"batch_size": 64, "new_tokens": 512, "floor_tok_s": 100.0, "hybrid_compiled_warmup_s": 50.0}
    row |= {f"{m}_tok_s": 10.0 + i for i, m in enumerate(gpu_results.METHODS)}
    row |= {
        "hybrid_compiled_over_generate": 2.5,
        "hybrid_over_plain": 0.9,
        "hybrid_compiled_fraction_of_floor": 0.4,
    }
    meta = {"model": "qwen", "dtype": "torch.bfloat16", "temperature": 0.5, "top_k": 50, "sync_every": 8}
    write_json(out / "rollout_b64.json", meta | {"repeats": 2, "copy_bandwidth_gb_s": 20.0, "rows": [row]})
    step = {"model": "qwen", "dtype": "torch.bfloat16", "num_generations": 4, "completions_per_step": 32}
    step |= {"micro_batch": 8, "max_completion_length": 512, "lora_r": 32, "device_memory_gb": 139.7}
    step |= {"rollout_backend": "eager", "gradient_checkpointing": False, "step_time_s": 12.0}
    step |= {"rollout_tokens_per_s": 1500.0, "peak_memory_gb": 40.0, "steps": [{}, {}, {}]}
    write_json(out / "train_step_eager.json", step)
    backend = {"mean_abs_diff": 0.03, "p99_abs_diff": 0.3, "max_abs_diff": 0.5, "tokens": 128}
    parity = {"model": "qwen", "dtype": "torch.bfloat16", "batch_size": 16, "new_tokens": 8}
    write_json(out / "logprob_parity.json", parity | {"backends": {"compiled": backend}})
    metrics = [
        {"step": s, "loss": 0.1 * s, "reward": 0.5, "step_time": 1.0, "peak_memory_gb": 2.0} for s in (1, 2)
    ]
    for name, shift in (("fsdp", 0.0), ("ddp", 0.001), ("single", 0.0)):
        text = "".join(json.dumps(m | {"loss": m["loss"] + shift}) + "\n" for m in metrics)
        (out / f"{name}_metrics.jsonl").write_text(text)
    names = [out / f"{n}_metrics.jsonl" for n in ("fsdp", "ddp", "single")]
    write_json(out / "fsdp_vs_ddp.json", compare_runs.compare(names))
    (out / "accelerate_probe.jsonl").write_text(
        json.dumps({"launch": "fsdp", "distributed_type": "FSDP"}) + "\n"
    )
    (out / "results.md").write_text("| variant | runs |\n| --- | --- |\n| grpo | 4 |\n")


def test_compare_runs_reports_the_largest_step_differences(tmp_path):
    dry_run_files(tmp_path / "out")
    result = json.loads((tmp_path / "out" / "fsdp_vs_ddp.json").read_text())
    assert result["reference"] == "fsdp"
    assert result["max_abs_diff"]["ddp"]["loss"] == pytest.approx(0.001)
    assert result["max_abs_diff"]["single"]["loss"] == 0.0
    assert result["runs"]["ddp"]["steps"] == 2


def test_results_step_fills_both_documents(tmp_path):
    dry_run_files(tmp_path / "out")
    sections = gpu_results.render([tmp_path / "out"])
    bench = sections["benchmarks"]
    assert "QUICK=1 dry run" in bench
    assert "| hybrid compiled ≥ 2× `model.generate` | batch 64 × 512 tokens | 2.50 | yes |" in bench
    assert "| hybrid ≥ 0.95× plain, eager | batch 64 × 512 tokens | 0.90 | **no** |" in bench
    assert "40.0 of 140 GB" in bench  # the training step's peak memory against the device's
    assert "| 1 | rollout_batches | SKIPPED | – |" in bench
    assert "python benchmarks/rollout_throughput.py --batch-sizes 4" in bench
    assert "| fsdp | FSDP |" in bench
    assert "| grpo | 4 |" in sections["experiments"]

    repo = tmp_path / "repo"
    repo.mkdir()
    for doc, key in (("BENCHMARKS.md", "benchmarks"), ("EXPERIMENTS.md", "experiments")):
        begin, end = (m.format(key) for m in gpu_results.MARK)
        (repo / doc).write_text(f"# head\n{begin}\nold\n{end}\ntail\n")
    gpu_results.main([str(tmp_path / "out"), "--write", str(repo)])
    text = (repo / "BENCHMARKS.md").read_text()
    assert "old" not in text and text.startswith("# head\n") and text.endswith("tail\n")
    assert "Targets (issue 16)" in text
    assert (repo / "benchmarks" / "results" / "gpu" / "rollout_b64.json").is_file()
