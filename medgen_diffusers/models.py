"""UNet2DModel presets per image size: ``tiny``, ``small`` and ``base`` for 28, 64, 128 and 224 pixels (and other
sizes that halve down to 7-8 pixels).

At 28 px: three resolution levels (28 -> 14 -> 7); 64: four (-> 8); 128: five (-> 8); 224: six (-> 7). Parameter counts are for a
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
# Larger images get more resolution levels, down to 7-8 pixels, with self-attention only at the low resolutions
# (where it is cheap and where global shape is decided). Widths per level and the attention threshold per preset.
LEVEL_WIDTHS = {"tiny": (32, 64, 64, 128, 128, 128), "small": (64, 128, 128, 256, 256, 256),
                "base": (128, 256, 256, 512, 512, 512)}
ATTENTION_AT_MOST = {"tiny": 8, "small": 8, "base": 16}  # attention at levels of at most this many pixels
NORM_GROUPS = {"tiny": 8, "small": 16, "base": 32}
PRESET_SIZES = (28, 64, 128, 224)  # documented and measured (benchmarks/results/presets.json)


def num_levels(size: int) -> int:
    """Resolution levels for ``size``: halve while the size stays even and the lowest level keeps >= 7 pixels."""
    levels = 1
    while levels < 6 and size % (2 ** levels) == 0 and size // (2 ** levels) >= 7:
        levels += 1
    return levels


def preset_config(preset: str, size: int) -> dict:
    """The preset's UNet2DModel config for ``size`` x ``size`` images (28 px: the original three presets)."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"Unknown model preset {preset!r}. Valid presets: {', '.join(UNET_PRESETS)}.")
    if size == 28:
        return dict(UNET_PRESETS[preset])
    levels = num_levels(size)
    if levels < 3:
        raise ValueError(f"Size {size} halves fewer than twice down to >= 7 pixels: use a --resolution such as "
                         f"{', '.join(map(str, PRESET_SIZES))} (or 32, 48, 96, ...).")
    attention = [size // 2 ** i <= ATTENTION_AT_MOST[preset] for i in range(levels)]
    if preset == "tiny":
        attention = [False] * (levels - 1) + [True]  # only the lowest level
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    return dict(block_out_channels=LEVEL_WIDTHS[preset][:levels], layers_per_block=1 if preset == "tiny" else 2,
                down_block_types=down, up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
                norm_num_groups=NORM_GROUPS[preset])


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
    else:
        config = preset_config(preset, sample_size)
    config.update(sample_size=sample_size, in_channels=channels, out_channels=channels)
    config["num_class_embeds"] = None if num_classes is None else num_classes + 1
    return UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
