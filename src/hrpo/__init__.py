"""hrpo: Hybrid Reasoning Policy Optimization for Hugging Face causal LMs."""

from hrpo.gate import HybridGate
from hrpo.latent import project_latent
from hrpo.marker import MarkerTracker
from hrpo.model import HybridModel
from hrpo.rollout import Rollout, RolloutConfig, RolloutEngine

__version__ = "0.1.0"

__all__ = [
    "HybridGate",
    "HybridModel",
    "MarkerTracker",
    "Rollout",
    "RolloutConfig",
    "RolloutEngine",
    "project_latent",
    "__version__",
]
