"""Two CPU processes (gloo) against one: same data, rollouts, advantages and update."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "dist_worker.py"


def run(out: Path, nproc: int, scale: str, port: int, mode: str = "hrpo") -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), scale, mode]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={port}",
            str(WORKER),
            str(out),
            scale,
            mode,
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]


@pytest.mark.parametrize(
    "scale,port,mode", [("group", 29611, "hrpo"), ("batch", 29612, "hrpo"), ("group", 29613, "grpo")]
)
def test_two_processes_match_one(tmp_path, scale, port, mode):
    one = run(tmp_path / "one", 1, scale, port, mode)[0]
    two = run(tmp_path / "two", 2, scale, port, mode)
    assert one["world"] == 1 and two[0]["world"] == 2
    assert "MULTI_CPU" in two[0]["distributed_type"]
    # The step's prompts are split into whole groups: rank 0 takes the first half, rank 1 the rest.
    assert two[0]["rows"] + two[1]["rows"] == one["rows"]
    assert not set(two[0]["rows"]) & set(two[1]["rows"])
    # Same rollouts → same rewards, and advantages from the gathered rewards are identical.
    assert torch.equal(two[0]["rewards"], one["rewards"]) and torch.equal(two[1]["rewards"], one["rewards"])
    assert torch.equal(two[0]["advantages"], one["advantages"])
    assert torch.equal(two[1]["advantages"], one["advantages"])
    assert one["advantages"].abs().sum() > 0
    # The all-reduced update equals the single-process one, and both ranks agree exactly.
    for name, p in one["params"].items():
        assert torch.equal(two[0]["params"][name], two[1]["params"][name]), name
        assert torch.allclose(two[0]["params"][name], p, atol=1e-6), name
