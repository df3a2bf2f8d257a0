"""Tiny tokenizer and tiny random models of real architectures, for fast unit tests."""

from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "the",
        "answer",
        "is",
        "add",
        "subtract",
        "apples",
        "pears",
        "total",
        "each",
        "has",
        "gives",
        "left",
        "so",
        "we",
        "get",
        "step",
    ]
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        lines.append(f"{text} {a} + {b} = {a + b}. #### {a + b}")
        lines.append(f"## Step {a}\n{text}, so:####{b} and ##{a}## # {b}")
    return lines


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on synthetic arithmetic text, with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        padding_side="left",
    )
    fast.chat_template = CHATML
    return fast


ARCHS = {
    "llama": {},
    "qwen2": {},
    "mistral": {},
    "qwen3": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
}


def tiny_model(arch: str, vocab_size: int, seed: int = 0, **overrides) -> torch.nn.Module:
    """A 2-layer random model of ``arch`` in float32, eval mode.

    ``initializer_range`` is raised so logits are far from uniform: greedy decoding on a
    random model is then decided by clear margins, not by rounding noise.
    """
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    kwargs.update(ARCHS[arch])
    kwargs.update(overrides)
    config = AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    return model.eval()


def greedy_generate_reference(
    model, prompt_ids, prompt_mask, max_new_tokens: int, tokenizer, temperature: float = 0.5
):
    """``model.generate``'s greedy completions as ``invariance.Tokens``: ids and a mask cut after
    each row's first EOS (generate pads after it), and log-probs of the chosen tokens under
    ``softmax(logits / temperature)`` as a rollout records them."""
    from invariance import Tokens

    out = model.generate(
        prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    ids = out.sequences[:, prompt_ids.shape[1] :]
    logits = torch.stack(out.logits, dim=1).float() / temperature
    logprobs = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(ids.tolist()):
        mask[r, : row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)] = 1
    return Tokens(ids, mask, logprobs * mask, torch.zeros_like(ids, dtype=torch.bool))
