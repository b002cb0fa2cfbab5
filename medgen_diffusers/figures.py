"""Image grids and progressive-generation frames, built on diffusers' ``make_image_grid``."""

import math
from typing import Dict, List, Optional, Sequence

import PIL.Image
import torch
from diffusers.utils import make_image_grid


def square_grid(images: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """A near-square grid (row-major); the last row is padded with black tiles."""
    if not images:
        raise ValueError("square_grid needs at least one image.")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = PIL.Image.new(images[0].mode, images[0].size)
    return make_image_grid(list(images) + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)


def progressive_frames(
    pipe,
    batch_size: int = 4,
    keep_timesteps: Optional[Sequence[int]] = (800, 400, 200, 0),
    generator: Optional[torch.Generator] = None,
    **call_kwargs,
) -> Dict[str, List[PIL.Image.Image]]:
    """Frames from pure noise to the final image: ``{"x_T": [...], "t=800": [...], ..., "x_0": [...]}``.

    ``keep_timesteps`` are matched to the nearest timestep the scheduler visits; the frame is x_t right after that
    step. Uses only the pipeline's public ``latents`` and ``callback_on_step_end`` arguments.
    """
    unet = pipe.unet
    shape = (batch_size, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    x_T = torch.randn(shape, generator=generator, dtype=unet.dtype).to(pipe.device)
    pipe.scheduler.set_timesteps(call_kwargs.get("num_inference_steps", 1000))
    visited = pipe.scheduler.timesteps.tolist()
    wanted = {min(visited, key=lambda v: abs(v - t)) for t in keep_timesteps or ()}
    captured = {}

    def keep(_pipe, _step_index, timestep, callback_kwargs):
        if int(timestep) in wanted:
            captured[int(timestep)] = callback_kwargs["latents"].clone()
        return callback_kwargs

    final = pipe(batch_size=batch_size, latents=x_T, generator=generator, callback_on_step_end=keep,
                 output_type="pt", **call_kwargs).images
    to_pil = lambda x: pipe.numpy_to_pil((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())  # noqa: E731
    frames = {"x_T": to_pil(x_T)}
    for t in sorted(captured, reverse=True):
        frames[f"t={t}"] = to_pil(captured[t])
    frames["x_0"] = pipe.numpy_to_pil(final.permute(0, 2, 3, 1).float().cpu().numpy())
    return frames


def progressive_figure(frames: Dict[str, List[PIL.Image.Image]]) -> PIL.Image.Image:
    """One row per sample, one column per frame (noise on the left, the image on the right)."""
    columns = list(frames.values())
    rows = len(columns[0])
    tiles = [columns[c][r] for r in range(rows) for c in range(len(columns))]
    return make_image_grid(tiles, rows=rows, cols=len(columns))
