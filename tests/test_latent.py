import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from hrpo.latent import project_latent
from hrpo.sampling import Support, restrict, sample, stable_seed, token_logprobs


def hf_probs(logits, temperature, top_k, top_p):
    """The sampling law of transformers' generate (temperature, then top-k, then top-p)."""
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, dim=-1)


def dense(support: Support, vocab: int) -> torch.Tensor:
    if support.index is None:
        return support.probs
    return torch.zeros(support.probs.shape[0], vocab).scatter(-1, support.index, support.probs)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, None, 1.0), (0.5, 50, 1.0), (0.7, None, 0.9), (0.5, 20, 0.8), (1.3, 5, 0.3)],
)
def test_restrict_matches_transformers_warpers(temperature, top_k, top_p):
    logits = torch.randn(6, 300) * 3
    got = dense(restrict(logits, temperature, top_k, top_p), 300)
    assert torch.allclose(got, hf_probs(logits, temperature, top_k, top_p), atol=1e-6)


def test_topk_support_is_gathered_not_dense():
    s = restrict(torch.randn(4, 1000), 0.5, top_k=50)
    assert s.probs.shape == (4, 50) and s.index.shape == (4, 50)
    assert torch.allclose(s.probs.sum(-1), torch.ones(4))


@pytest.mark.parametrize("top_k,top_p", [(None, 1.0), (10, 1.0), (None, 0.7), (10, 0.5)])
def test_latent_is_embedding_average_over_l2_norm(top_k, top_p):
    torch.manual_seed(0)
    vocab, d = 200, 24
    emb = torch.randn(vocab, d, dtype=torch.float64)
    support = restrict(torch.randn(3, vocab) * 2, 0.5, top_k, top_p)
    p = dense(support, vocab).double()
    expect = (p @ emb) / p.norm(dim=-1, keepdim=True)
    got = project_latent(support, emb.float())
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), expect, atol=1e-5)


def test_latent_of_one_hot_is_that_tokens_embedding_and_scale_applies():
    emb = torch.randn(50, 8)
    logits = torch.full((1, 50), -1e4)
    logits[0, 7] = 0
    h = project_latent(restrict(logits, 1.0, top_k=5), emb, embed_scale=2.0)
    assert torch.allclose(h[0], 2.0 * emb[7])


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    support = restrict(logits, 1.0)
    a = sample(support, torch.Generator().manual_seed(0))
    b = sample(support, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=4).float() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    topk = sample(restrict(logits, 1.0, top_k=2), torch.Generator().manual_seed(1))
    assert set(topk.tolist()) <= {0, 1}


def test_token_logprobs_full_vocab_at_temperature():
    logits = torch.randn(2, 3, 40)
    tokens = torch.randint(0, 40, (2, 3))
    expect = torch.log_softmax(logits / 0.5, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens, 0.5), expect, atol=1e-6)


def test_bad_sampling_settings_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        restrict(torch.randn(1, 5), 0.0)
    with pytest.raises(ValueError, match="top_p"):
        restrict(torch.randn(1, 5), 1.0, top_p=0.0)


def test_negative_top_k_is_an_error_not_the_whole_vocabulary():
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        restrict(torch.randn(2, 10), 1.0, top_k=-5)


def test_stable_seed_keeps_the_trainers_numbers_in_every_process():
    # The trainer's seeds before the helper moved here; constants, so no process salt can change them.
    assert stable_seed(0, 1, 2) == 2907050525928808288 and stable_seed(7) == 5135535630271676732
    assert stable_seed("a", 1) != stable_seed("a", 2) and stable_seed(1, 2) != stable_seed(2, 1)
    assert all(0 <= stable_seed(i) < 2**63 for i in range(100))
