"""UNet2DModel presets for 28x28 MedMNIST images.

Three resolution levels (28 -> 14 -> 7); a fourth would need 32x32 inputs. Parameter counts are for a
class-conditional RGB model (8 classes + the null class); CPU step times (batch 128, fp32, forward + backward
+ AdamW, 2 cores) are measured by ``benchmarks/bench_presets.py`` and recorded in ``benchmarks/results/``.
"""

import json
from pathlib import Path
from typing import Optional

from diffusers import UNet2DModel

UNET_PRESETS = {
    # 1.06M parameters, ~0.84 s/step on 2 CPU cores: tests, CPU training, quick experiments.
    "tiny": dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
    # 6.5M parameters, ~3.3 s/step on 2 CPU cores: self-attention at 7x7; long CPU runs or a small GPU.
    "small": dict(
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
    ),
    # 27.2M parameters, ~18.4 s/step on 2 CPU cores: attention at 14x14 and 7x7; meant for a GPU.
    "base": dict(
        block_out_channels=(128, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
}


def build_unet(
    preset: Optional[str] = "tiny",
    config_path: Optional[str] = None,
    sample_size: int = 28,
    channels: int = 3,
    num_classes: Optional[int] = None,
) -> UNet2DModel:
    """A fresh UNet2DModel from a preset name or a UNet config JSON (``config_path`` wins).

    ``num_classes`` makes it class-conditional with ``num_classes + 1`` embeddings; the last one is the null
    class used for label dropout and classifier-free guidance.
    """
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"UNet config {path} does not exist; pass a UNet2DModel config.json.")
        config = json.loads(path.read_text())
    elif preset in UNET_PRESETS:
        config = dict(UNET_PRESETS[preset])
    else:
        raise ValueError(f"Unknown model preset {preset!r}. Valid presets: {', '.join(UNET_PRESETS)}.")
    config.update(sample_size=sample_size, in_channels=channels, out_channels=channels)
    config["num_class_embeds"] = None if num_classes is None else num_classes + 1
    return UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
