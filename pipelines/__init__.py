"""Self-contained diffusers pipelines; installed as ``medgen_diffusers.pipelines``."""

from .pipeline_bloodmnist import BloodMNISTPipeline, class_index, default_steps

__all__ = ["BloodMNISTPipeline", "class_index", "default_steps"]
