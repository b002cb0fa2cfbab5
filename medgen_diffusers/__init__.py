"""medgen-diffusers: diffusion models for synthetic MedMNIST images, the diffusers way."""

from .data import MedMNISTTensors, class_names, load_medmnist, load_medmnist_tensors, medmnist_path
from .models import UNET_PRESETS, build_unet
from .pipelines import BloodMNISTPipeline

__version__ = "0.1.0"
__all__ = [
    "BloodMNISTPipeline",
    "MedMNISTTensors",
    "UNET_PRESETS",
    "build_unet",
    "class_names",
    "load_medmnist",
    "load_medmnist_tensors",
    "medmnist_path",
]
