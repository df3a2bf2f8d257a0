import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from hrpo.cli import main
from hrpo.config import ConfigError
from hrpo.recipes import recipe_path
from hrpo.sweep import load_sweep, train_command

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path, tiny_dir, **changes):
    spec = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "common": {
            "model_name_or_path": str(tiny_dir),
            "max_steps": 2,
            "num_generations": 2,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_completion_length": 6,
            "eval_limit": 4,
            "eval_batch_size": 4,
            "lora_r": 2,
            "lora_alpha": 4,
            "task_args": {"difficulty": 0, "num_train": 20, "num_test": 4},
            "save_steps": 1,
        },
        "seeds": [0, 1],
        "variants": {"grpo": {"hybrid": False}, "hrpo": {"r_min": 0.95}},
        "tail_steps": 2,
    }
    spec.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"variants": {"bad": {"learning_rat": 1.0}}}, "variant 'bad'.*learning_rat"),
        ({"variants": {"x": {"seed": 3}}}, "set by the sweep itself"),
        ({"seeds": []}, "seeds"),
        ({"colour": "red"}, "unknown sweep keys"),
        ({"variants": {}}, "variants"),
        ({"base_config": "nope"}, "base_config: config file .*nope does not exist, and 'nope' is no recipe"),
    ],
)
def test_bad_sweep_files_are_refused_before_anything_runs(tmp_path, tiny_dir, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_sweep(tmp_path, tiny_dir, **changes))
    assert not (tmp_path / "out").exists()


def test_base_config_is_a_recipe_name_or_a_path_relative_to_the_sweep_file(tmp_path, tiny_dir):
    for shipped in sorted(ROOT.glob("experiments/*.yaml")):
        assert load_sweep(shipped).base_config == recipe_path("quickstart"), shipped
    assert load_sweep(write_sweep(tmp_path, tiny_dir, base_config="quickstart")).base_config == recipe_path(
        "quickstart"
    )
    (tmp_path / "quickstart").write_text("learning_rate: 0.5\n")  # a file by the sweep file wins
    sweep = load_sweep(write_sweep(tmp_path, tiny_dir, base_config="quickstart"))
    assert sweep.base_config == tmp_path / "quickstart" and sweep.config_for("grpo", 0).learning_rate == 0.5


def test_sweep_runs_summarises_skips_and_resumes(tmp_path, tiny_dir, capsys):
    path = write_sweep(tmp_path, tiny_dir)
    assert main(["sweep", str(path), "--jobs", "2", "--threads", "1"]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    rows = {row["variant"]: row for row in results["variants"]}
    assert list(rows) == ["grpo", "hrpo"]
    for name, row in rows.items():
        runs = row["runs"]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["steps"] == 2 for r in runs)
        after = [
            json.loads((out / name / f"seed-{s}" / "eval_after.json").read_text())["accuracy"] for s in (0, 1)
        ]
        assert row["accuracy_after"]["mean"] == pytest.approx(sum(after) / 2)
        assert row["accuracy_after"]["n"] == 2
    assert rows["grpo"]["final_hidden_ratio"]["mean"] == 0 and rows["hrpo"]["final_hidden_ratio"]["mean"] > 0
    table = (out / "results.md").read_text()
    assert "| grpo | hybrid=False | 2 |" in table and "| hrpo | r_min=0.95 | 2 |" in table
    assert (out / "curves.png").stat().st_size > 10_000 and (out / "heldout_accuracy.png").is_file()
    assert (out / "mechanism.png").stat().st_size > 10_000
    assert "(with 2 seeds against 2, p cannot go below 0.333)" in table
    for key in ("entropy", "thinking_fraction", "input_gate", "latent_input_ratio"):
        assert rows["hrpo"][f"final_{key}"]["mean"] > 0, key
    assert rows["grpo"]["final_thinking_fraction"]["mean"] == 0 and rows["grpo"]["final_entropy"]["mean"] > 0
    config = yaml.safe_load((out / "hrpo" / "seed-1" / "config.yaml").read_text())
    assert config["seed"] == 1 and config["r_min"] == 0.95 and config["max_steps"] == 2

    # A run cut short (here: its final evaluation lost) resumes from its checkpoint, one stopped
    # before its first checkpoint (metrics logged, none saved) from step 0; finished ones are skipped.
    run = out / "hrpo" / "seed-0"
    before = (run / "eval_before.json").read_text()
    (run / "eval_after.json").unlink()
    early = out / "grpo" / "seed-1"
    metrics = strip_timing((early / "metrics.jsonl").read_text())
    shutil.rmtree(early / "checkpoints")
    (early / "eval_after.json").unlink()
    sweep = load_sweep(path)
    assert (
        train_command(sweep, "hrpo", 0)[-1] == "--resume"
        and train_command(sweep, "grpo", 1)[-1] == "--resume"
    )
    capsys.readouterr()
    assert main(["sweep", str(path), "--threads", "1"]) == 0
    assert "2 runs to do, 2 already finished" in capsys.readouterr().out
    assert (run / "eval_after.json").is_file() and (run / "eval_before.json").read_text() == before
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # The same command in the same process setup (one thread): bitwise the same numbers.
    assert strip_timing((early / "metrics.jsonl").read_text()) == metrics
    assert (early / "eval_after.json").is_file()


def strip_timing(text):
    timing = ("step_time", "rollout_tokens_per_s", "peak_memory_gb")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in text.splitlines()]


def test_a_second_sweep_into_the_same_directory_stops_at_once(tmp_path, tiny_dir, capsys):
    from hrpo.rundir import LOCK_FILE

    path = write_sweep(tmp_path, tiny_dir)
    out = tmp_path / "out"
    out.mkdir()
    # What another process's lock looks like: an exclusive flock on another open file description.
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": 4242, "command": "hrpo sweep other.yaml"}).encode())
    try:
        assert main(["sweep", str(path)]) == 1
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert err == (
        f"hrpo sweep: {out} is in use by another hrpo process (pid 4242: hrpo sweep other.yaml); "
        "wait for it to end or stop it, then run again\n"
    )
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no run started, no results written


def test_smallest_p_value_is_what_the_most_extreme_split_gives():
    from hrpo.sweep import permutation_p_value, smallest_p_value

    assert smallest_p_value(3, 3) == pytest.approx(0.1) and smallest_p_value(4, 4) == pytest.approx(2 / 70)
    assert smallest_p_value(1, 1) == 1.0 and smallest_p_value(2, 3) == pytest.approx(0.1)
    assert smallest_p_value(0, 3) != smallest_p_value(0, 3)  # NaN
    for n_a in range(1, 5):
        for n_b in range(1, 5):
            a = [10.0 + i for i in range(n_a)]  # every value above every one of b
            b = [0.1 * i for i in range(n_b)]
            assert permutation_p_value(a, b) == pytest.approx(smallest_p_value(n_a, n_b)), (n_a, n_b)


def test_a_sweep_can_be_run_in_parts(tmp_path, tiny_dir, capsys):
    path = write_sweep(tmp_path, tiny_dir)
    assert main(["sweep", str(path), "--dry-run", "--variants", "hrpo", "--seeds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hrpo seed 1: ")
    with pytest.raises(ConfigError, match=r"unknown variants \['grop'\] \(the file has \['grpo', 'hrpo'\]\)"):
        load_sweep(path).select(["grop"])
    with pytest.raises(SystemExit):
        main(["sweep", str(path), "--seeds", "one"])
    assert main(["sweep", str(path), "--threads", "1", "--variants", "grpo", "--seeds", "1"]) == 0
    out = tmp_path / "out"
    assert "1 runs to do, 0 already finished" in capsys.readouterr().out
    assert (out / "grpo" / "seed-1" / "eval_after.json").is_file()
    assert not (out / "grpo" / "seed-0").exists() and not (out / "hrpo").exists()
    rows = {row["variant"]: row for row in json.loads((out / "results.json").read_text())["variants"]}
    assert [r["seed"] for r in rows["grpo"]["runs"]] == [1] and rows["hrpo"]["runs"] == []


def test_permutation_p_value_by_hand():
    from hrpo.sweep import permutation_p_value

    # 3 vs 3 fully separated: only the observed split and its mirror reach the difference: 2/20.
    assert permutation_p_value([0.5, 0.6, 0.7], [0.1, 0.2, 0.3]) == pytest.approx(0.1)
    assert permutation_p_value([0.2, 0.2], [0.2, 0.2]) == 1.0
    # Splits of {1,2,3,4} into pairs: |diff| of means is 2 for {1,2}|{3,4}, 1 for {1,3}|{2,4}, 0 for {1,4}|{2,3}.
    assert permutation_p_value([1, 3], [2, 4]) == pytest.approx(4 / 6)


def test_table_footnote_names_each_seed_count_with_its_smallest_p():
    from hrpo.sweep import markdown_table, smallest_p_value

    def row(name: str, n: int) -> dict:
        stat = {"mean": 0.5, "std": 0.1}
        return {
            "variant": name,
            "overrides": {},
            "runs": [{"accuracy_after": 0.5}] * n,
            **dict.fromkeys(
                (
                    "accuracy_before",
                    "accuracy_after",
                    "gain",
                    "final_reward",
                    "final_accuracy",
                    "final_hidden_ratio",
                    "final_completion_length",
                ),
                stat,
            ),
            "p_vs_baseline": 1.0,
            "smallest_p": smallest_p_value(n, 3),
        }

    summary = {"tail_steps": 10, "baseline": "grpo", "variants": [row("grpo", 3), row("a", 1), row("b", 3)]}
    table = markdown_table(summary)
    assert (
        "(with 1 seed against 3, p cannot go below 0.250; with 3 seeds against 3, p cannot go below 0.100)"
        in table
    )
