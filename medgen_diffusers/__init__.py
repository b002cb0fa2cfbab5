"""medgen-diffusers: diffusion models for synthetic MedMNIST images, the diffusers way.

The public names below are imported on first use (PEP 562), so that ``import medgen_diffusers`` -- and every
``medgen ... --help`` -- does not pay for torch and diffusers before it needs them.
"""

import importlib
from pathlib import Path

__version__ = "0.1.0"
# The class-conditional BloodMNIST model trained with this repo (see its README.md for metrics and config).
DEFAULT_MODEL = str(Path(__file__).parent / "pretrained" / "bloodmnist")
# Its 4-step latent-consistency student (distill_lcm.py): 4 network evaluations per image instead of 20.
FAST_MODEL = str(Path(__file__).parent / "pretrained" / "bloodmnist-4step")
_LAZY = {  # public name -> the module that defines it
    "BloodMNISTPipeline": ".pipelines",
    "MedMNISTTensors": ".data",
    "class_names": ".data",
    "load_images": ".data",
    "load_medmnist": ".data",
    "load_medmnist_tensors": ".data",
    "medmnist_path": ".data",
    "UNET_PRESETS": ".models",
    "build_unet": ".models",
}
__all__ = ["DEFAULT_MODEL", "FAST_MODEL", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
