"""Shared fixtures. Unit tests use tiny random models; `slow` tests use the real SmolLM2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The hub is unreachable here: fail fast instead of retrying connections.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def make_model(tok):
    def make(arch: str = "llama", seed: int = 0, **overrides):
        return tiny_model(arch, len(tok), seed=seed, **overrides)

    return make


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request):
    """Run the test under 1 and 2 intra-op threads: kernels block and reduce differently with each,
    so invariance tests meet the rounding differences users' machines produce."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2():
    """The real default model and tokenizer (converted once, then loaded from the cache)."""
    from hrpo.loading import load_model

    return load_model(None, dtype="float32")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tok):
    """A tiny random Qwen2 model and its tokenizer saved as a local model directory (for the CLI)."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model("qwen2", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
