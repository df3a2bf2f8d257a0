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


SP_SPECIALS = ["<unk>", "<s>", "</s>"]


def tiny_sentencepiece_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: BPE with byte fallback over ``▁``-marked words (Metaspace), and
    the decoder chain Replace('▁', ' '), ByteFallback, Fuse, Strip(one leading space).

    Trained on ASCII text, so any other character (``→``, ``答``, ``é``) is written as its UTF-8
    bytes, one ``<0xHH>`` token each.
    """
    import json

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SP_SPECIALS, show_progress=False)
    trainer_tok.train_from_iterator(_corpus(), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    # Byte-fallback pieces must be in the model's own vocabulary (as in Llama's), not added tokens.
    vocab = {tok: i for i, tok in enumerate(SP_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(SP_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def force_tokens(model, sequences: list[list[int]], fill: int) -> None:
    """Make a ``HybridModel`` write ``sequences[row % len(sequences)]`` in rollouts, one token per step.

    ``decode_step`` keeps computing the real hidden state but returns logits with all the mass on
    the row's next forced token (``fill`` once its sequence is written); a call with more than one
    input position is a prompt, which starts the sequences again. Rows are the decoding batch's:
    use sequences of equal length or ``compact_finished=False`` so that no row is dropped early.
    """
    original = model.decode_step
    step = [0]

    def decode_step(inputs_embeds, attention_mask, position_ids, past_key_values):
        hidden, logits = original(inputs_embeds, attention_mask, position_ids, past_key_values)
        if inputs_embeds.shape[1] > 1:
            step[0] = 0
        t = step[0]
        step[0] += 1
        forced = torch.full_like(logits, -1e4)
        for row in range(logits.shape[0]):
            seq = sequences[row % len(sequences)]
            forced[row, seq[t] if t < len(seq) else fill] = 1e4
        return hidden, forced

    model.decode_step = decode_step
