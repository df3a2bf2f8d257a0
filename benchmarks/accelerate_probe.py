"""What ``accelerate launch`` set up, for the record of ``gpu_suite.sh`` stage 3: the distributed
type, process count and process group backend, appended as one JSON line to the file given.

    accelerate launch --config_file src/hrpo/configs/accelerate/fsdp.yaml --num_processes 1 \\
        benchmarks/accelerate_probe.py fsdp probe.jsonl
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist
from accelerate import Accelerator

if __name__ == "__main__":
    name, path = sys.argv[1], sys.argv[2]
    acc = Accelerator()
    record = {
        "launch": name,
        "distributed_type": str(acc.distributed_type),
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "fsdp_version": getattr(getattr(acc.state, "fsdp_plugin", None), "fsdp_version", None),
    }
    if acc.is_main_process:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(json.dumps(record))
