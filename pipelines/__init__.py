"""Self-contained diffusers pipelines; installed as ``medgen_diffusers.pipelines``."""

from .pipeline_bloodmnist import BloodMNISTPipeline

__all__ = ["BloodMNISTPipeline"]
