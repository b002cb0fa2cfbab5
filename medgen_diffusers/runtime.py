"""What every ``medgen`` command resolves before its work: the pipeline (and a swapped-in scheduler), the device
and process group, the data source -- the model's own, from its run, unless named -- and where results may go."""

import argparse
import difflib
import sys
from pathlib import Path

# Offered samplers: each supports the saved `thresholding` (x0 clamped to the image range), which keeps fast solvers
# stable. EulerDiscreteScheduler has no thresholding, so it is not offered (swap it in from Python at your own risk).
SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped option, the usage line above it (Python 3.14's
    suggest_on_error, for the 3.10+ this package supports)."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            known = [option for action in self._actions for option in action.option_strings]
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{word} (did you mean {close[0]}?)")
            if hints:
                message = "unrecognized arguments: " + ", ".join(hints)
        super().error(message)


def load_pipeline(path_or_repo=None, scheduler=None):
    """A BloodMNISTPipeline from a folder or Hub repo id (None: the shipped model), with the named diffusers
    scheduler swapped in (None: keep the pipeline's own)."""
    import diffusers

    from . import BloodMNISTPipeline
    from .models import is_edm

    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {scheduler!r}. Valid: {', '.join(SCHEDULERS)}.")
    pipe = BloodMNISTPipeline.from_pretrained(path_or_repo)
    if scheduler is not None and is_edm(pipe.scheduler):
        raise ValueError(f"{path_or_repo} was trained with the EDM formulation: its timesteps are noise levels "
                         f"(c_noise), which {SCHEDULERS[scheduler]} does not know. Leave the scheduler option out: "
                         f"it samples with its own {type(pipe.scheduler).__name__}.")
    if scheduler is not None:
        scheduler_cls = getattr(diffusers, SCHEDULERS[scheduler])
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    return pipe


def shipped_models() -> dict:
    """The models shipped inside the package: resolved folder -> how results name it."""
    from . import DEFAULT_MODEL, FAST_MODEL

    return {Path(DEFAULT_MODEL).resolve(): "medgen_diffusers/pretrained/bloodmnist (shipped)",
            Path(FAST_MODEL).resolve(): "medgen_diffusers/pretrained/bloodmnist-4step (shipped)"}


def writable(path, what="--out"):
    """``path`` as a Path, unless it lies in a shipped model's folder: no command changes those (in a normal install
    they are inside site-packages); regenerating them is benchmarks/package_*_model.sh's job."""
    resolved = Path(path).resolve()
    for shipped in shipped_models():
        if resolved == shipped or shipped in resolved.parents:
            raise ValueError(f"{what} {path} is inside a shipped model's folder ({shipped}), which medgen never "
                             f"changes: choose another {what} (e.g. the current directory).")
    return Path(path)


def default_result_path(pipeline, name: str) -> Path:
    """Where a command's result goes without --out: into the pipeline folder the user named (the card and the app
    read it there), else -- the shipped model, a Hub id, generated images -- ./name in the current directory."""
    if pipeline is not None and not is_shipped(pipeline) and (Path(pipeline) / "model_index.json").is_file():
        return Path(pipeline) / name
    return Path(name)


def is_shipped(path) -> bool:
    return path is None or Path(path).resolve() in shipped_models()


def source_name(path) -> str:
    """How a result names the pipeline it came from: as the user gave it, never a shipped folder's local path."""
    if path is None:
        return shipped_models()[next(iter(shipped_models()))]
    return shipped_models().get(Path(path).resolve(), str(path))


def resolve_steps(pipe, steps):
    """--steps, else the pipeline's saved default, else 1000 (DDPM)."""
    from .pipelines import default_steps

    return default_steps(pipe.config, steps)


def medical_options(args):
    """--window / --slice-axis / --slice-range / --split-by / --split-seed as given (None: the run's)."""
    from .provenance import MEDICAL_OPTIONS

    return {name: getattr(args, name, None) for name in MEDICAL_OPTIONS}


def source_options(args):
    """How to read the data source (columns, DICOM/NIfTI options), as resolved by :func:`resolve_data`."""
    if getattr(args, "source_options", None):
        return dict(args.source_options)
    label = args.label_column or "label"
    return dict(image_column=args.image_column or "image", label_column=None if label.lower() == "none" else label,
                **{k: v for k, v in medical_options(args).items() if v is not None})


def resolve_data(args, pipeline, run_config=None):
    """Point ``args`` at the data the model was trained on (its run_config.json), unless --dataset names another;
    returns the :class:`~medgen_diffusers.data.DataSource`."""
    from .provenance import data_source

    source = data_source(pipeline, args.dataset, args.data_root, args.image_column, args.label_column, run_config,
                         medical_options(args))
    args.dataset, args.data_root, args.source_options = source.dataset, source.root, source.options
    if source.explicit and source.run_config:
        print(f"note: using --dataset {source.dataset}, not the recorded training data "
              f"{source.run_config.get('dataset')}", file=sys.stderr)
    return source


def data_record(source, args, size=None):
    """The result's data block: the source and its train split's checksum against the recorded one."""
    return source.record(source.load("train", size).md5)


def split_counts(split, args, size=None):
    """Per-class counts of the real ``split`` (None when not asked for), of the source resolve_data pointed at."""
    return None if split is None else data_source_of(args).class_counts(split, size)


def data_source_of(args):
    """The DataSource ``args`` name (after :func:`resolve_data`): the object every command reads its data with."""
    from .data import DataSource

    return DataSource(dataset=args.dataset, root=args.data_root, options=source_options(args))


def device_name(device) -> str:
    """Which hardware a result came from (classifier training differs slightly between GPUs and CPUs)."""
    import platform

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{device.type} ({cpu}, {torch.get_num_threads()} threads), torch {torch.__version__}"


def on_cpu(args) -> bool:
    """Whether a training or distillation run (its --cpu flag) runs on the CPU: asked, or no CUDA/MPS device."""
    import torch

    return args.cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())


def resolve_device(name="auto"):
    """--device: auto = CUDA, else Apple MPS, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else
                            "mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA GPU: use --device auto or cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps, but torch sees no Apple GPU: use --device auto or cpu.")
    return torch.device(name)


def process_state(device):
    """Accelerate's PartialState when launched with several processes (torchrun / accelerate launch), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=device.type == "cpu")  # gloo on CPUs, NCCL on GPUs
