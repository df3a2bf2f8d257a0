"""Turning prompts (plain text or chat messages) into left-padded token batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

Prompt = str | list[dict[str, Any]]


class PromptTooLongError(ValueError):
    """A prompt has more tokens than ``max_prompt_length``."""


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Prompt,
    *,
    system_prompt: str | None = None,
    chat_template: bool = True,
) -> str:
    """The text fed to the model for one prompt.

    Chat messages (``[{"role": ..., "content": ...}, ...]``, TRL's conversational format) always
    go through the tokenizer's chat template with the generation prompt appended. A plain string
    is wrapped as one user turn (after ``system_prompt``, if given) when ``chat_template`` is
    true and the tokenizer has a template, and used verbatim otherwise.
    """
    if isinstance(prompt, str):
        if not chat_template or tokenizer.chat_template is None:
            return prompt if system_prompt is None else f"{system_prompt}\n\n{prompt}"
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
        messages = list(prompt)
    else:
        raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if tokenizer.chat_template is None:
        raise ValueError("chat-message prompts need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    max_prompt_length: int | None = None,
    system_prompt: str | None = None,
    chat_template: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Render and tokenize prompts into left-padded ``(ids, attention_mask)`` plus the rendered texts.

    Raises :class:`PromptTooLongError` naming the prompt's index and length when one is longer
    than ``max_prompt_length`` (silently cutting a prompt changes the task).
    """
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    texts = [
        render_prompt(tokenizer, p, system_prompt=system_prompt, chat_template=chat_template) for p in prompts
    ]
    # The rendered template already holds BOS/special tokens where the model expects them.
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty after tokenization")
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            raise PromptTooLongError(
                f"prompt {i} has {len(ids)} tokens, more than max_prompt_length={max_prompt_length} "
                f"(starts {texts[i][:60]!r}); shorten it or raise max_prompt_length"
            )
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    return input_ids, mask, texts
