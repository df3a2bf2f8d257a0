"""TRL's data and reward conventions end to end: ``datasets.Dataset`` rows, conversational prompts
with message-list completions, None rewards, and ``hrpo train`` on a data file with a reward
function given by import path."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from hrpo.build import build_data
from hrpo.cli import main
from hrpo.config import ConfigError, HRPOConfig
from hrpo.recipes import load_config
from hrpo.tasks.data import MissingDependencyError, load_dataset_splits
from hrpo.trainer import HRPOTrainer

SYSTEM = {"role": "system", "content": "Answer after ####."}


def chat_rows(n: int) -> list[dict]:
    """Conversational rows with an extra column the rewards read, as in TRL's quickstart."""
    return [
        {
            "prompt": [SYSTEM, {"role": "user", "content": f"what is {i} + 1 ?"}],
            "answer": str(i + 1),
            "kind": "skip" if i % 2 else "score",
        }
        for i in range(n)
    ]


def small_config(tmp_path, **kw) -> HRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_completion_length=6,
        eval_limit=0,
        lora_r=2,
        lora_alpha=4,
        save_steps=0,
        log_completions_steps=0,
        seed=0,
    )
    return HRPOConfig(**{**base, **kw})


def test_a_datasets_dataset_with_conversational_prompts_trains_with_trl_rewards(tmp_path, make_model, tok):
    datasets = pytest.importorskip("datasets")
    seen: list[dict] = []

    def content_length(completions, completion_ids, trainer_state, **kwargs):
        seen.append(dict(kwargs, completions=completions, completion_ids=completion_ids, state=trainer_state))
        return [len(completion[0]["content"]) / 10 for completion in completions]

    def only_scored(prompts, completions, kind, **kwargs):
        return [None if k == "skip" else 1.0 for k in kind]

    trainer = HRPOTrainer(
        args=small_config(tmp_path, reward_weights=[1.0, 0.5]),
        train_dataset=datasets.Dataset.from_list(chat_rows(8)),
        reward_funcs=[content_length, only_scored],
        model=make_model("qwen2"),
        processing_class=tok,
        progress=False,
        plots=False,
    )
    trainer.train()

    assert [call["state"].global_step for call in seen] == [0, 1]
    for call in seen:
        assert call["state"].max_steps == 2
        assert all(p[0] == SYSTEM and p[1]["role"] == "user" for p in call["prompts"])
        assert {"answer", "kind"} <= set(call)
        for completion, ids in zip(call["completions"], call["completion_ids"], strict=True):
            assert completion[0]["role"] == "assistant" and len(completion) == 1
            assert all(isinstance(t, int) for t in ids) and 0 < len(ids) <= 6
            assert tok.decode(ids, skip_special_tokens=True) == completion[0]["content"]
    lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        assert {"reward", "reward_std", "frac_reward_zero_std"} <= set(m)
        assert m["rewards/only_scored/mean"] == 1.0  # over the rows it scored: the None rows left out
        assert m["rewards/only_scored/std"] == 0.0
        assert {"rewards/content_length/mean", "rewards/content_length/std"} <= set(m)


# -- build_data: datasets and sources --------------------------------------------------------------


def test_dataset_objects_are_checked_for_a_prompt_column_and_one_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    cfg = small_config(tmp_path)
    rows = datasets.Dataset.from_list([{"question": "q", "answer": "1"}])
    with pytest.raises(ValueError, match=r"no 'prompt' column \(columns: \['answer', 'question'\]\)"):
        build_data(cfg, train_dataset=rows, reward_funcs=[len])
    split = datasets.DatasetDict({"train": datasets.Dataset.from_list(chat_rows(2))})
    with pytest.raises(TypeError, match=r"pass one split's rows, e.g. dataset\['train'\]"):
        build_data(cfg, train_dataset=split, reward_funcs=[len])
    data = build_data(cfg, train_dataset=split["train"], reward_funcs=[len])
    assert data.task is None and data.train_dataset[1]["answer"] == "2"


def test_dataset_name_reads_a_directory_of_split_files(tmp_path):
    for split, n in (("train", 6), ("test", 5)):
        lines = [json.dumps(r) for r in chat_rows(n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = small_config(tmp_path, dataset_name=str(tmp_path), eval_limit=3)
    data = build_data(cfg)  # no reward_funcs: the task grades the answer column
    assert len(data.train_dataset) == 6 and len(data.eval_dataset) == 3
    assert data.task is not None and data.reward_funcs[0].__name__ == "arithmetic_accuracy"
    assert load_dataset_splits(str(tmp_path / "train.jsonl"), None, "train", "test")[1] is None
    with pytest.raises(FileNotFoundError, match=r"no dev.json/.jsonl/.parquet.*test.jsonl, train.jsonl"):
        load_dataset_splits(str(tmp_path), None, "dev", None)


def test_dataset_name_reads_a_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(chat_rows(3)), tmp_path / "d.parquet")
    train, test = load_dataset_splits(str(tmp_path / "d.parquet"), None, "train", "test")
    assert train[2]["prompt"][1]["content"] == "what is 2 + 1 ?" and test is None


def test_a_hub_dataset_comes_as_map_style_splits(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(chat_rows(4)), "test": datasets.Dataset.from_list(chat_rows(9))}
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a: calls.append(a) or splits)
    cfg = small_config(tmp_path, dataset_name="someone/some-data", dataset_config="main", eval_limit=5)
    data = build_data(cfg)
    assert calls == [("someone/some-data", "main")]
    assert isinstance(data.train_dataset, datasets.Dataset) and len(data.eval_dataset) == 5
    cfg = small_config(tmp_path, dataset_name="someone/some-data", dataset_train_split="validation")
    with pytest.raises(ValueError, match="has no split 'validation'; splits: train, test"):
        build_data(cfg)


def test_a_hub_dataset_without_datasets_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    with pytest.raises(MissingDependencyError, match=r"someone/some-data.*pip install 'hrpo\[datasets\]'"):
        build_data(small_config(tmp_path, dataset_name="someone/some-data"), reward_funcs=[len])
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        build_data(small_config(tmp_path, dataset_name=str(tmp_path / "missing.jsonl")), reward_funcs=[len])


# -- reward_funcs in the config --------------------------------------------------------------------


def test_reward_funcs_as_yaml_lists_and_single_overrides():
    assert load_config(None, ["reward_funcs=my_rewards:accuracy"]).reward_funcs == ["my_rewards:accuracy"]
    cfg = load_config(None, ["reward_funcs=[my_rewards:accuracy, pkg.mod.fmt]", "reward_weights=[1, 0.2]"])
    assert cfg.reward_funcs == ["my_rewards:accuracy", "pkg.mod.fmt"]
    with pytest.raises(ConfigError, match=r"'reward_funcs', item 0: 'accuracy' is no import path"):
        HRPOConfig(reward_funcs=["accuracy"])
    with pytest.raises(ConfigError, match=r"'format_reward_weight'.*list a format reward in reward_funcs"):
        HRPOConfig(reward_funcs=["m:f"], format_reward_weight=0.5)


# -- hrpo train on a data file with rewards by import path ------------------------------------------

REWARDS_MODULE = textwrap.dedent(
    """
    import json

    THRESHOLD = 0.5

    def accuracy(prompts, completions, completion_ids, trainer_state, answer, **kwargs):
        with open("calls.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer_state.global_step, "completion": completions[0],
                                "ids": completion_ids[0], "columns": sorted(kwargs)}) + "\\n")
        return [float(c[0]["content"].strip().endswith(a)) for c, a in zip(completions, answer)]

    def brevity(completions, **kwargs):
        return [None if len(c[0]["content"]) > 30 else 1.0 for c in completions]
    """
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding a reward module ``hrpo_cli_rewards`` and ``data.jsonl``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (tmp_path / "hrpo_cli_rewards.py").write_text(REWARDS_MODULE)
    rows = [dict(r, source="synthetic") for r in chat_rows(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield tmp_path
    sys.modules.pop("hrpo_cli_rewards", None)


def test_hrpo_train_on_a_jsonl_with_rewards_by_import_path(workdir, tiny_dir, capsys):
    (workdir / "run.yaml").write_text(
        textwrap.dedent(
            f"""
            model_name_or_path: {tiny_dir}
            dataset_name: data.jsonl
            reward_funcs: [hrpo_cli_rewards:accuracy, hrpo_cli_rewards.brevity]
            output_dir: run
            max_steps: 2
            num_generations: 2
            per_device_train_batch_size: 2
            gradient_accumulation_steps: 1
            max_completion_length: 6
            lora_r: 2
            lora_alpha: 4
            save_steps: 0
            """
        )
    )
    assert main(["train", "--config", "run.yaml", "reward_weights=[1.0, 0.1]", "--no-plots"]) == 0
    assert "before: accuracy" not in capsys.readouterr().out  # no task: no held-out evaluation
    lines = [json.loads(line) for line in (workdir / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for name in ("accuracy", "brevity"):
        assert {f"rewards/{name}/mean", f"rewards/{name}/std"} <= set(lines[-1])
    calls = [json.loads(line) for line in (workdir / "calls.jsonl").read_text().splitlines()]
    assert [c["step"] for c in calls] == [0, 1]
    assert all(c["columns"] == ["kind", "source"] for c in calls)
    assert all(c["completion"][0]["role"] == "assistant" and c["ids"] for c in calls)


@pytest.mark.parametrize(
    "path, message",
    [
        ("hrpo_cli_nowhere:accuracy", "cannot import module 'hrpo_cli_nowhere'"),
        ("hrpo_cli_rewards:acuracy", "has no attribute 'acuracy' (did you mean 'accuracy'?)"),
        ("hrpo_cli_rewards.THRESHOLD", "hrpo_cli_rewards.THRESHOLD is a float, not callable"),
    ],
)
def test_a_bad_reward_path_fails_in_one_line_before_the_model_loads(workdir, path, message, capsys):
    argv = ["train", f"model_name_or_path={workdir / 'no-model'}", "dataset_name=data.jsonl"]
    assert main([*argv, f"reward_funcs={path}", "output_dir=run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "no-model" not in err
    assert not (workdir / "run").exists()  # nothing written, nothing locked


def test_a_missing_data_file_fails_in_one_line_before_the_model_loads(workdir, capsys):
    argv = ["train", f"model_name_or_path={workdir / 'no-model'}", "dataset_name=nothere.jsonl"]
    assert main([*argv, "reward_funcs=hrpo_cli_rewards:accuracy", "output_dir=run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset_name nothere.jsonl: no such file" in err
    assert not (workdir / "run").exists()
