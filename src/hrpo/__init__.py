"""hrpo: Hybrid Reasoning Policy Optimization for Hugging Face causal LMs."""

import importlib
from typing import TYPE_CHECKING, Any

from hrpo.gate import HybridGate
from hrpo.latent import project_latent
from hrpo.marker import MarkerTracker
from hrpo.model import HybridModel
from hrpo.rollout import Rollout, RolloutConfig, RolloutEngine

if TYPE_CHECKING:
    from hrpo.config import HRPOConfig
    from hrpo.trainer import HRPOTrainer

__version__ = "0.1.0"

__all__ = [
    "HRPOConfig",
    "HRPOTrainer",
    "HybridGate",
    "HybridModel",
    "MarkerTracker",
    "Rollout",
    "RolloutConfig",
    "RolloutEngine",
    "project_latent",
    "__version__",
]

# Imported on first use: the trainer pulls in accelerate, so `import hrpo` stays light.
_LAZY = {"HRPOConfig": "hrpo.config", "HRPOTrainer": "hrpo.trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hrpo' has no attribute {name!r}")
