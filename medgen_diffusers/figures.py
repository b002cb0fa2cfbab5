"""Image grids and progressive-generation frames, built on diffusers' ``make_image_grid``."""

import math
from typing import Dict, List, Optional, Sequence

import PIL.Image
import torch
from diffusers.utils import make_image_grid

from .pipelines import default_steps


DISPLAY_TILE = 112  # a grid's tiles are shown at least this large: 16 images at 28 px made a 112-px figure


def square_grid(images: Sequence[PIL.Image.Image], min_tile: int = DISPLAY_TILE) -> PIL.Image.Image:
    """A near-square grid (row-major) for a person to look at: the last row padded with black tiles, small images
    enlarged by a whole factor with nearest-neighbour (every pixel stays a sharp block; data files stay exact)."""
    if not images:
        raise ValueError("square_grid needs at least one image.")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    factor = max(1, math.ceil(min_tile / max(images[0].size)))
    if factor > 1:
        images = [image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST) for image in images]
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
    steps = default_steps(pipe.config, call_kwargs.get("num_inference_steps"))
    pipe.scheduler.set_timesteps(steps)
    visited = pipe.scheduler.timesteps.tolist()
    wanted = {min(visited, key=lambda v: abs(v - t)) for t in keep_timesteps or ()}
    captured = {}

    def keep(_pipe, _step_index, timestep, callback_kwargs):
        if int(timestep) in wanted:
            captured[int(timestep)] = callback_kwargs["latents"].clone()
        return callback_kwargs

    final = pipe(batch_size=batch_size, latents=x_T, generator=generator, callback_on_step_end=keep,
                 output_type="pt", **call_kwargs).images
    def to_pil(x):  # a latent pipeline's x_t is shown as its VAE decodes it
        x = pipe.decode_latents(x) if getattr(pipe, "vae", None) is not None else x
        return pipe.numpy_to_pil((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())

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


# ----------------------------------------------------------------------------------------------------------------
# Run figures (``medgen figures RUN_DIR``): curves from metrics.jsonl, progressive generation, one row per class.

def read_metrics(run_dir) -> List[dict]:
    import json
    from pathlib import Path

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a training output_dir (it writes metrics.jsonl).")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.5):
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return plt, fig, axes[0]


def loss_curve(metrics: List[dict], path) -> None:
    """Training loss per step (light) and its 100-step moving average."""
    import numpy as np

    points = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    if not points:
        raise ValueError("metrics.jsonl holds no loss values yet.")
    steps, losses = map(np.asarray, zip(*points))
    window = min(100, len(losses))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    plt, fig, (ax,) = _figure()
    ax.plot(steps, losses, alpha=0.25, lw=0.8, label="loss")
    ax.plot(steps[window - 1:], smooth, lw=1.5, label=f"{window}-step mean")
    ax.set(xlabel="step", ylabel="MSE loss", yscale="log", title="Training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eval_curves(metrics: List[dict], path) -> bool:
    """FID and KID (standard protocol) against the train subset and the val split; False when none were logged."""
    evals = [m for m in metrics if "eval/fid_val" in m]
    if not evals:
        return False
    plt, fig, axes = _figure(ncols=2)
    steps = [m["step"] for m in evals]
    for ax, metric in zip(axes, ("fid", "kid")):
        for split in ("train", "val"):
            ax.plot(steps, [m[f"eval/{metric}_{split}"] for m in evals], marker="o", label=split)
        ax.set(xlabel="step", ylabel=metric.upper(), title=f"{metric.upper()} of EMA samples (standard protocol)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def class_rows_figure(pipe, images_per_class: int, path, seed: int = 0, num_inference_steps=None) -> None:
    """One labelled row per class of a class-conditional pipeline (the images `medgen sample --balanced` makes)."""
    import numpy as np

    from .generation import generate_images, plan_labels

    names = list(pipe.config.class_names)
    labels = plan_labels(names, images_per_class * len(names), balanced=True)
    images = generate_images(pipe, len(labels), labels, num_inference_steps, seed=seed, progress=False)
    plt, fig, (ax,) = _figure(width=images_per_class * 0.9 + 2.2, height=len(names) * 0.9)
    rows = [np.concatenate(list(images[r * images_per_class:(r + 1) * images_per_class]), axis=1)
            for r in range(len(names))]
    grid = np.concatenate(rows, axis=0)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
    size = images.shape[1]
    # Long MedMNIST names ("immature granulocytes(myelocytes, ...)") would squeeze the grid: drop the parenthesis.
    ax.set_yticks([size * (r + 0.5) for r in range(len(names))], [name.split("(")[0].strip() for name in names])
    ax.set_xticks([])
    ax.set_title("Generated, one row per class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def progressive_with_real(frames: Dict[str, List[PIL.Image.Image]], real: Optional[Sequence[PIL.Image.Image]],
                          path) -> None:
    """The progressive-generation figure (columns x_T ... x_0), beside a montage of real images when given."""
    import numpy as np

    plt, fig, axes = _figure(ncols=2 if real else 1, width=4.5, height=4.0)
    axes[0].imshow(np.asarray(progressive_figure(frames)), cmap="gray", interpolation="nearest")
    size = next(iter(frames.values()))[0].width
    axes[0].set_xticks([size * (c + 0.5) for c in range(len(frames))], list(frames), fontsize=8)
    axes[0].set_yticks([])
    axes[0].set_title("Progressive generation")
    if not real:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    axes[1].imshow(np.asarray(square_grid(list(real))), cmap="gray", interpolation="nearest")
    axes[1].set_axis_off()
    axes[1].set_title("Real images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_run_figures(run_dir, dataset: Optional[str] = None, data_root=None, seed: int = 0,
                      num_inference_steps: int = 50, out_dir=None, device="cpu", show_real: bool = False) -> List[str]:
    """All figures of a training output_dir or a saved pipeline, as PNGs in ``out_dir`` (default: ``run_dir``);
    returns the file names written. Curves need the run's metrics.jsonl, generated figures a saved pipeline.

    Real training images appear only for a public dataset (``progressive.png`` beside 16 of them) or when
    ``show_real`` asks for them on the user's own data -- then in ``progressive_with_real.png``, a name
    ``medgen push`` never sends for non-public data.

    Sampling uses DDIM with ``num_inference_steps`` (its timesteps include 800, 400, 200 and 0 for 50 steps).
    """
    import json
    from pathlib import Path

    from diffusers import DDIMScheduler

    from .models import is_edm
    from .pipelines import BloodMNISTPipeline

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    has_metrics, has_pipeline = (run_dir / "metrics.jsonl").is_file(), (run_dir / "model_index.json").is_file()
    if not (has_metrics or has_pipeline):
        raise FileNotFoundError(f"{run_dir} holds neither metrics.jsonl nor a saved pipeline (model_index.json): "
                                "pass a training output_dir or a pipeline folder.")
    written = []
    if has_metrics:
        metrics = read_metrics(run_dir)
        loss_curve(metrics, out_dir / "loss_curve.png")
        written.append("loss_curve.png")
        if eval_curves(metrics, out_dir / "fid_kid_curves.png"):
            written.append("fid_kid_curves.png")
    if not has_pipeline:
        return written  # training still running: no saved pipeline yet

    pipe = BloodMNISTPipeline.from_pretrained(run_dir).to(device)
    if not is_edm(pipe.scheduler):  # an EDM pipeline keeps its own solver (its timesteps are noise levels)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    config_path = run_dir / "run_config.json"
    run_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    real_images, name = None, "progressive.png"
    if dataset is not None or run_config.get("dataset") is not None:
        from .provenance import data_source, is_public_source

        source = data_source(run_dir, dataset, data_root, run_config=run_config)
        if is_public_source(source.dataset) or show_real:
            real = source.load("train", pipe.image_size)
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:16]
            real_images = [PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
                           for image in real.images[pick].permute(0, 2, 3, 1).numpy()]
            name = "progressive.png" if is_public_source(source.dataset) else "progressive_with_real.png"
    frames = progressive_frames(pipe, batch_size=4, generator=torch.Generator().manual_seed(seed),
                                num_inference_steps=num_inference_steps)
    progressive_with_real(frames, real_images, out_dir / name)
    written.append(name)
    if pipe.config.class_names:
        class_rows_figure(pipe, 8, out_dir / "classes.png", seed=seed, num_inference_steps=num_inference_steps)
        written.append("classes.png")
    return written
