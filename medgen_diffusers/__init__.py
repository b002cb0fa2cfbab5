"""medgen-diffusers: diffusion models for synthetic MedMNIST images, the diffusers way."""

from pathlib import Path

from .data import MedMNISTTensors, class_names, load_images, load_medmnist, load_medmnist_tensors, medmnist_path
from .models import UNET_PRESETS, build_unet
from .pipelines import BloodMNISTPipeline

__version__ = "0.1.0"
# The class-conditional BloodMNIST model trained with this repo (see its README.md for metrics and config).
DEFAULT_MODEL = str(Path(__file__).parent / "pretrained" / "bloodmnist")
# Its 4-step latent-consistency student (distill_lcm.py): 4 network evaluations per image instead of 20.
FAST_MODEL = str(Path(__file__).parent / "pretrained" / "bloodmnist-4step")
__all__ = [
    "BloodMNISTPipeline",
    "DEFAULT_MODEL",
    "FAST_MODEL",
    "MedMNISTTensors",
    "UNET_PRESETS",
    "build_unet",
    "class_names",
    "load_images",
    "load_medmnist",
    "load_medmnist_tensors",
    "medmnist_path",
]
