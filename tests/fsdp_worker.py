"""Worker for the FSDP2 test: HybridModel, rollouts and checkpoints under ``fully_shard`` (gloo, CPU).

Run as ``python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py OUT``. A tiny
Qwen2 + LoRA + gate is sharded the way accelerate's ``fsdp_version: 2`` shards it (each decoder
layer, the input embeddings, the tail of final norm + output head, and the root). An unsharded
copy does the same work, with gradients averaged over ranks by hand. Two optimiser steps are
taken, with a checkpoint written and loaded back between them on the sharded side. Each rank
writes both sides to ``OUT/rank{r}.pt`` for the test to compare. The ranks decode different
numbers of steps, so a collective during generation would hang.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).parent))

from hrpo import checkpoint  # noqa: E402
from hrpo.distributed import (  # noqa: E402
    end_process_group,
    full_optimizer_state,
    full_tensor,
    is_sharded,
    load_full_,
    load_optimizer_state,
)
from hrpo.model import HybridModel  # noqa: E402
from hrpo.rollout import RolloutConfig, RolloutEngine  # noqa: E402
from invariance import decision_gaps  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402


def shard_like_accelerate(hm: HybridModel) -> None:
    base = hm.model.get_base_model()
    for layer in base.model.layers:
        fully_shard(layer)
    fully_shard(base.get_input_embeddings())
    fully_shard([base.model.norm, base.get_output_embeddings()], reshard_after_forward=False)
    fully_shard(hm)


def trainable(hm: HybridModel) -> dict[str, torch.Tensor]:
    return {n: full_tensor(p.detach()).clone() for n, p in hm.named_parameters() if p.requires_grad}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    model = tiny_model("qwen2", len(tok))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    # LoRA B starts at zero; make the adapter matter so the comparison is not trivial.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    hm = HybridModel(model, seed=0)
    plain_hm = copy.deepcopy(hm)
    prompts = [f"what is {rank} + {i} ?" for i in range(3)]
    # Different lengths per rank: the ranks finish decoding at different steps.
    config = RolloutConfig(num_generations=2, max_completion_length=6 + 5 * rank)

    def run(m: HybridModel, seed: int, average: bool = False) -> dict:
        ro = RolloutEngine(m, tok, config).generate(prompts, seed=seed)
        m.zero_grad(set_to_none=True)
        lp, _ = m(
            ro.prompt_ids,
            ro.prompt_mask,
            ro.completion_ids,
            ro.completion_mask,
            latents=ro.latents,
            thinking_mask=ro.thinking_mask,
            temperature=ro.temperature,
        )
        (lp.sum() / 100).backward()
        if average:  # what FSDP's reduce-scatter computes: the mean over ranks
            for p in m.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        grads = {n: full_tensor(p.grad).clone() for n, p in m.named_parameters() if p.grad is not None}
        record = {
            "tokens": ro.completion_ids,
            "mask": ro.completion_mask,
            "thinking": ro.thinking_mask,
            "rollout_lp": ro.logprobs,
            "tf_lp": lp.detach(),
            "grads": grads,
        }
        if average:  # the unsharded reference: its decision gaps, to tell near ties from bugs
            record["gaps"], record["boundary"] = decision_gaps(m, ro, config, seed)
        return record

    def adam(m: HybridModel) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)

    # Unsharded reference: two steps.
    plain_opt = adam(plain_hm)
    plain = [run(plain_hm, 11, average=True)]
    plain_opt.step()
    plain_state = copy.deepcopy(full_optimizer_state(plain_opt))  # state_dict() aliases live tensors
    plain.append(run(plain_hm, 12, average=True))
    plain_opt.step()

    shard_like_accelerate(hm)
    assert is_sharded(hm)
    opt = adam(hm)
    sharded = [run(hm, 11)]
    opt.step()
    sharded_state = full_optimizer_state(opt)

    # Checkpoint, scramble, restore into a fresh optimiser, continue.
    ckpt = out / "ckpt"
    weights = hm.trainable_state()
    if rank == 0:
        ckpt.mkdir()
        checkpoint.write_model(ckpt, hm, weights)
        torch.save(sharded_state, ckpt / "optimizer.pt")
    dist.barrier()
    for _n, p in hm.named_parameters():
        if p.requires_grad:
            load_full_(p, full_tensor(p.detach()) + 1.0)
    scrambled = trainable(hm)
    checkpoint.load_model_state(hm, ckpt)
    restored = trainable(hm)
    opt = adam(hm)
    load_optimizer_state(opt, torch.load(ckpt / "optimizer.pt", weights_only=False))
    sharded.append(run(hm, 12))
    opt.step()
    torch.save(
        {
            "plain": plain,
            "sharded": sharded,
            "plain_state": plain_state,
            "sharded_state": sharded_state,
            "weights": weights,
            "scrambled": scrambled,
            "restored": restored,
            "plain_final": trainable(plain_hm),
            "sharded_final": trainable(hm),
            "local_numel": sum(p.to_local().numel() for p in hm.parameters()),
            "full_numel": sum(p.numel() for p in plain_hm.parameters()),
        },
        out / f"rank{rank}.pt",
    )
    end_process_group()


if __name__ == "__main__":
    main()
