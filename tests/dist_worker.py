"""Worker for the 2-process test: one HRPO step under torch.distributed (gloo, CPU).

Run as ``python -m torch.distributed.run --nproc_per_node N tests/dist_worker.py OUT SCALE [grpo]`` (or
plainly, for one process). A step is 16 completions (4 prompts × G=4) whatever N is, generated
in calls of 2 prompts, so N=1 and N=2 must give the same rollouts, advantages and update.
Each process writes its rollout rewards, the advantages it used, the rows it trained on and
its parameters after the step to ``OUT/rank{r}.pt``.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from hrpo.config import HRPOConfig  # noqa: E402
from hrpo.distributed import end_process_group  # noqa: E402
from hrpo.trainer import HRPOTrainer  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402


def length_reward(prompts, completions, **kw):
    return [float(len(c) % 7) for c in completions]


def main() -> None:
    out, scale = Path(sys.argv[1]), sys.argv[2]
    hybrid = len(sys.argv) < 4 or sys.argv[3] != "grpo"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tok = tiny_tokenizer()
    rows = [{"prompt": f"what is {i} + {i + 1} ?", "answer": str(2 * i + 1), "row": i} for i in range(16)]
    cfg = HRPOConfig(
        output_dir=str(out / "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8 // world,
        gradient_accumulation_steps=2,
        max_completion_length=8,
        temperature=1.0,
        learning_rate=1e-3,
        eval_limit=0,
        lora_r=4,
        lora_alpha=8,
        scale_rewards=scale,
        save_steps=0,
        seed=3,
        rollout_batch_size=2,
        hybrid=hybrid,
    )
    trainer = HRPOTrainer(
        args=cfg,
        train_dataset=rows,
        reward_funcs=[length_reward],
        model=tiny_model("qwen2", len(tok)),
        processing_class=tok,
        progress=False,
    )
    rows_used = [r["row"] for r in trainer.step_rows(0)]
    batch, _ = trainer.train_step(0)
    acc = trainer.accelerator
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    torch.save(
        {
            "world": acc.num_processes,
            "rank": acc.process_index,
            "rows": rows_used,
            "distributed_type": str(acc.distributed_type),
            "rewards": batch.all_rewards.cpu(),
            "advantages": batch.all_advantages.cpu(),
            "group_ids": batch.rollout.group_ids.cpu(),
            "params": params,
        },
        out / f"rank{acc.process_index}.pt",
    )
    end_process_group()


if __name__ == "__main__":
    main()
