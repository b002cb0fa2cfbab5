"""The ``medgen`` command line: ``medgen sample``, ``medgen data`` (``medgen <command> --help`` for each).

Exit codes: 0 success, 2 bad arguments or inputs (one line on stderr saying what and how to fix it).
Training is ``accelerate launch train_unconditional.py`` (see the README).
"""

import argparse
import sys
from pathlib import Path

SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def load_pipeline(path_or_repo, scheduler="ddpm"):
    """A BloodMNISTPipeline from a folder or Hub repo id, with the named diffusers scheduler swapped in."""
    import diffusers

    from . import BloodMNISTPipeline

    if scheduler not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {scheduler!r}. Valid: {', '.join(SCHEDULERS)}.")
    pipe = BloodMNISTPipeline.from_pretrained(path_or_repo)
    scheduler_cls = getattr(diffusers, SCHEDULERS[scheduler])
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    return pipe


def cmd_sample(args):
    import torch

    from .figures import square_grid

    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1; got {args.num_images}.")
    pipe = load_pipeline(args.pipeline, args.scheduler)
    generator = torch.Generator().manual_seed(args.seed)
    kwargs = {}
    if args.class_name is not None:
        kwargs["class_labels"] = args.class_name
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    images = pipe(batch_size=args.num_images, num_inference_steps=args.steps, generator=generator, **kwargs).images
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = square_grid(images)
    grid.save(out)
    print(f"wrote {len(images)} images as a {grid.height // images[0].height}x{grid.width // images[0].width} grid to {out}")


def cmd_data(args):
    from .data import load_medmnist_tensors

    for split in ("train", "val", "test"):
        data = load_medmnist_tensors(args.dataset, split, args.size, args.root, download=not args.no_download)
        counts = data.labels.bincount(minlength=len(data.class_names)).tolist()
        print(f"{split}: {len(data)} images {tuple(data.images.shape[1:])}, per class {counts}")
    print("classes: " + "; ".join(f"{i}={name}" for i, name in enumerate(data.class_names)))
    print(f"md5 {data.md5} (verified)")


def build_parser():
    parser = argparse.ArgumentParser(prog="medgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="Generate images from a pipeline and save them as a PNG grid.")
    sample.add_argument("pipeline", help="Pipeline folder (save_pretrained) or Hub repo id.")
    sample.add_argument("--num-images", type=int, default=16)
    sample.add_argument("--class", dest="class_name", default=None, help="Class name or index (conditional models).")
    sample.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS))
    sample.add_argument("--steps", type=int, default=50)
    sample.add_argument("--guidance-scale", type=float, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png")
    sample.set_defaults(func=cmd_sample)

    data = commands.add_parser("data", help="Locate, verify (MD5) and summarise a MedMNIST dataset.")
    data.add_argument("--dataset", default="bloodmnist")
    data.add_argument("--size", type=int, default=28)
    data.add_argument("--root", default=None, help="Folder holding the .npz (default: $MEDMNIST_ROOT, ~/.medmnist).")
    data.add_argument("--no-download", action="store_true")
    data.set_defaults(func=cmd_data)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "class_name", None) is not None and args.class_name.isdigit():
        args.class_name = int(args.class_name)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        print(f"medgen {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
