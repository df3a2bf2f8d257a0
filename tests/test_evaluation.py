"""Evaluation: pass@k, intervals, per-group accuracy, resumable predictions, inspection."""

import itertools
import json
import math

import pytest
import torch

from hrpo.evaluation import accuracy_interval, default_ks, evaluate, pass_at_k, summarize, summarize_subset
from hrpo.inspection import format_table, inspect_prompt, nearest_tokens, plot_heatmap
from hrpo.model import HybridModel
from hrpo.rollout import RolloutConfig, RolloutEngine
from hrpo.tasks.base import Task


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 4), (4, 4, 2), (7, 1, 7)])
def test_pass_at_k_is_the_fraction_of_k_subsets_with_a_correct_sample(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    assert default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]


def test_wilson_interval_for_binary_scores():
    # 27 correct of 50: Wilson 95% interval by hand.
    p, n, z = 27 / 50, 50, 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    mean, low, high = accuracy_interval([1.0] * 27 + [0.0] * 23)
    assert (
        mean == pytest.approx(0.54)
        and low == pytest.approx(centre - half)
        and high == pytest.approx(centre + half)
    )
    assert low == pytest.approx(0.4040, abs=1e-4) and high == pytest.approx(0.6703, abs=1e-4)
    _, low0, high0 = accuracy_interval([0.0] * 10)  # not empty at 0%
    assert low0 == 0.0 and 0.25 < high0 < 0.35


def test_normal_interval_over_problem_means():
    scores = [0.25, 0.5, 0.75, 1.0]
    mean, low, high = accuracy_interval(scores)
    sd = math.sqrt(sum((x - 0.625) ** 2 for x in scores) / 3)
    assert mean == 0.625 and high - mean == pytest.approx(1.959964 * sd / 2)
    assert accuracy_interval([]) == (0.0, 0.0, 0.0)


def _pred(index, sample, correct, group=None, tokens=10, thinking=5, hidden=0.1):
    rec = {
        "index": index,
        "sample": sample,
        "correct": correct,
        "completion_tokens": tokens,
        "thinking_tokens": thinking,
        "hidden_ratio": hidden,
    }
    if group:
        rec["group"] = group
    return rec


def test_summarize_groups_samples_and_pass_at_k():
    preds = [
        _pred(0, 0, True, "physics"),
        _pred(0, 1, False, "physics"),
        _pred(1, 0, False, "algebra", thinking=0),
        _pred(1, 1, False, "algebra", thinking=0),
        _pred(2, 0, True, "algebra", hidden=0.3, thinking=15),
        _pred(2, 1, True, "algebra", hidden=0.3, thinking=15),
    ]
    m = summarize(preds, num_samples=2)
    assert m["num_examples"] == 3 and m["accuracy"] == pytest.approx(0.5)
    assert m["pass@1"] == pytest.approx(0.5) and m["pass@2"] == pytest.approx(2 / 3)
    assert m["per_group"] == {
        "algebra": {"accuracy": 0.5, "num_examples": 2},
        "physics": {"accuracy": 0.5, "num_examples": 1},
    }
    assert m["hidden_ratio"] == pytest.approx((0.1 * 10 + 0.3 * 30) / 40)


def test_summarize_subset_is_summarize_of_those_problems_from_the_same_records():
    preds = [_pred(i, s, correct=(i + s) % 3 == 0, hidden=0.1 * i) for i in range(6) for s in range(2)]
    sub = summarize_subset(preds, [0, 2, 5], num_samples=2, pass_ks=[1, 2])
    alone = summarize([p for p in preds if p["index"] in (0, 2, 5)], num_samples=2, pass_ks=[1, 2])
    assert "predictions" not in sub and sub == {k: v for k, v in alone.items() if k != "predictions"}
    # One of the two samples of each of problems 0, 2 and 5 is right.
    assert sub["num_examples"] == 3 and sub["accuracy"] == pytest.approx(0.5) and sub["pass@2"] == 1.0
    assert summarize_subset(preds, [], num_samples=2)["num_examples"] == 0


class EchoTask(Task):
    """Correct when the completion contains the reference string (any completion text works)."""

    name = "echo"

    def score(self, completion, reference, *, strict_format=False):
        return 1.0 if str(reference) in completion else 0.0


@pytest.fixture
def hybrid(make_model):
    return HybridModel(make_model("qwen2"), seed=0).eval()


def _rows(tok, hybrid, n=5):
    """Rows whose reference is a piece of the model's own greedy completion for some of them."""
    prompts = [f"what is {i} + {i} ?" for i in range(n)]
    engine = RolloutEngine(hybrid, tok, RolloutConfig(max_completion_length=6, do_sample=False))
    texts = engine.generate(prompts).completion_texts
    return [
        {"prompt": p, "answer": (t[:3] if i % 2 == 0 else "§never§"), "subject": f"s{i % 2}"}
        for i, (p, t) in enumerate(zip(prompts, texts, strict=True))
    ]


def test_greedy_eval_scores_with_the_task_and_reports_groups(tok, hybrid, tmp_path):
    rows = _rows(tok, hybrid)
    cfg = RolloutConfig(max_completion_length=6)
    m = evaluate(hybrid, tok, EchoTask(), rows, cfg, batch_size=2, progress=False)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["num_examples"] == 5 and m["decoding"] == "greedy"
    assert m["per_group"]["s0"]["accuracy"] == 1.0 and m["per_group"]["s1"]["accuracy"] == 0.0
    assert [p["correct"] for p in m["predictions"]] == [True, False, True, False, True]
    assert 0 < m["completion_length"] <= 6 and 0 < m["hidden_ratio"] < 1 and m["tokens_per_second"] > 0


def _count_generated(monkeypatch):
    calls = []
    original = RolloutEngine.generate

    def counting(self, prompts, **kw):
        calls.append(len(prompts))
        return original(self, prompts, **kw)

    monkeypatch.setattr(RolloutEngine, "generate", counting)
    return calls


@pytest.mark.parametrize("num_samples", [1, 3])
def test_interrupted_eval_resumes_from_its_predictions(tok, hybrid, tmp_path, monkeypatch, num_samples):
    rows = _rows(tok, hybrid)
    cfg = RolloutConfig(max_completion_length=6, temperature=1.0)
    kw = dict(num_samples=num_samples, batch_size=2, seed=7, progress=False)
    full = evaluate(hybrid, tok, EchoTask(), rows, cfg, predictions_path=tmp_path / "full.jsonl", **kw)
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    assert len(lines) == 5 * num_samples

    # Interrupted after the first batch (2 problems), in the middle of writing a line.
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(lines[: 2 * num_samples]) + "\n" + lines[2 * num_samples][:17])
    calls = _count_generated(monkeypatch)
    resumed = evaluate(hybrid, tok, EchoTask(), rows, cfg, predictions_path=part, **kw)
    assert calls == [2, 1]  # problems 2, 3 then 4: nothing finished is generated again
    for a, b in zip(full["predictions"], resumed["predictions"], strict=True):
        assert (a["index"], a["sample"], a["completion"], a["correct"]) == (
            b["index"],
            b["sample"],
            b["completion"],
            b["correct"],
        )
    assert resumed["accuracy"] == full["accuracy"]
    calls.clear()
    evaluate(hybrid, tok, EchoTask(), rows, cfg, predictions_path=part, **kw)
    assert calls == []  # complete: nothing to do


def test_damaged_predictions_file_is_an_error_naming_the_line(tok, hybrid, tmp_path):
    rows = _rows(tok, hybrid, n=2)
    path = tmp_path / "p.jsonl"
    path.write_text('{"index": 0, "sample": 0}\nnot json\n{"index": 1, "sample": 0}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: not a prediction record"):
        evaluate(hybrid, tok, EchoTask(), rows, RolloutConfig(max_completion_length=4), predictions_path=path)


def test_nearest_tokens_finds_the_embedding_row_itself():
    emb = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    latents = torch.stack([emb[7] * 3.0, emb[21] + 0.01 * emb[3]])
    ids, sims = nearest_tokens(latents, emb, k=4, chunk=1)
    assert ids[:, 0].tolist() == [7, 21]
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert bool((sims[:, :-1] >= sims[:, 1:]).all())


def test_inspect_reports_every_token(tok, hybrid, tmp_path):
    cfg = RolloutConfig(max_completion_length=8, do_sample=False, answer_marker="####")
    report = inspect_prompt(hybrid, tok, "what is 2 + 2 ?", cfg, top=3)
    engine = RolloutEngine(hybrid, tok, cfg)
    ro = engine.generate(["what is 2 + 2 ?"])
    assert report["completion"] == ro.completion_texts[0]
    assert [r["id"] for r in report["tokens"]] == ro.completion_ids[
        0, : int(ro.completion_mask[0].sum())
    ].tolist()
    for r in report["tokens"]:
        assert ("nearest" in r) == r["thinking"]
        if r["thinking"]:
            assert (
                len(r["nearest"]) == 3
                and 0 < r["a"] < 1
                and r["hidden_ratio"] == pytest.approx(math.sqrt(1 - r["a"] ** 2), abs=0.05)
            )
        else:
            assert r["a"] == 1.0 and r["hidden_ratio"] == 0.0
    table = format_table(report)
    assert len(table.splitlines()) == len(report["tokens"]) + 2
    png = plot_heatmap(report, tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(report)  # JSON-serialisable for --json


def test_paper_numbers_by_model_and_benchmark():
    from hrpo.paper import benchmark_name, paper_model, paper_result

    assert paper_model("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen2.5-1.5B"
    assert paper_model("/models/qwen2.5_3b_instruct") == "Qwen2.5-3B"
    assert paper_model("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert paper_result("Qwen/Qwen2.5-1.5B-Instruct", benchmark_name("gsm8k")) == (0.711, 0.720)
    assert paper_result("Qwen2.5-3B-Instruct", benchmark_name("math")) == (0.604, 0.630)  # MATH500
    assert paper_result("Qwen2.5-3B-Instruct", "MATH") == (0.602, 0.613)
    assert paper_result("Qwen2.5-1.5B", benchmark_name("qa", "2wikimultihopqa")) == (0.213, 0.276)
    assert paper_result("Qwen2.5-1.5B", benchmark_name("arithmetic")) is None


def test_eval_table_shows_paper_numbers_and_groups(capsys):
    from hrpo.cli.eval import _print_eval_table

    entry = {
        "task": "mmlu_stem",
        "mode": "hybrid",
        "num_examples": 40,
        "accuracy": 0.55,
        "accuracy_ci95": [0.4, 0.69],
        "completion_length": 120.0,
        "hidden_ratio": 0.2,
        "tokens_per_second": 900.0,
        "seconds": 12.0,
        "paper": {"grpo": 0.562, "hrpo": 0.569},
        "per_group": {"college_physics": {"accuracy": 0.5, "num_examples": 20}},
    }
    _print_eval_table([entry])
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("mmlu_stem     hybrid     40  0.550 [0.40, 0.69]") and out[1].endswith(
        "0.562 / 0.569"
    )
    assert out[2].split() == ["college_physics", "20", "0.500"]
