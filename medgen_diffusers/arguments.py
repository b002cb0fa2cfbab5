"""The command lines of the two training scripts, ``train.py`` (``medgen train``) and ``distill.py``
(``medgen distill``), and the choices they offer.

Kept apart from the scripts, as nanoGPT's train.py keeps its configuration in configurator.py, and free of torch,
diffusers and accelerate: ``medgen train --help`` answers in a fraction of a second, and a mistyped option is refused
before anything heavy loads. The scripts read their arguments from here at the top of ``main``.
"""

import argparse
import sys
from pathlib import Path

from . import DEFAULT_MODEL
from .models import UNET_PRESETS
from .runtime import ArgumentParser, on_cpu

AUGMENTATIONS = ("dihedral", "none")  # --augment: random flips and 90-degree rotations, or none (data.augment)
ACCOUNTANTS = ("rdp", "prv")  # --dp_accountant: Opacus' accountants
DP_UNITS = ("auto", "image", "patient")  # --dp_unit: what one DP "unit" is (privacy.privacy_units)
FINETUNE_LAYERS = ("all", "decoder", "attention")  # --finetune_layers (privacy.trainable_parameters)

TRAIN_USAGE = """Train a (class-conditional) DDPM on a MedMNIST dataset or your own data and save it as a BloodMNISTPipeline.

    accelerate launch train_unconditional.py --output_dir runs/blood --max_train_steps 2000   # from a checkout
    medgen train --output_dir runs/blood --max_train_steps 2000                               # installed
    accelerate launch -m medgen_diffusers.train --output_dir runs/blood                       # installed, launched"""
DISTILL_USAGE = ("Latent-consistency distillation of a BloodMNIST pipeline into a few-step sampler (LCMScheduler), in "
                 "pixel space or, for a latent teacher (--vae), on its latents.")


def data_arguments(p):
    """The data options every training script shares (train, train-vae): where the images come from and how they
    are read. Returns the argument group, for a script's own data options."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="bloodmnist",
                   help="A MedMNIST 2D flag, a folder of images (one sub-folder per class, or none: unlabeled), a "
                        "MedMNIST-layout .npz of your own, or a datasets dataset (save_to_disk folder or Hub name).")
    g.add_argument("--resolution", type=int, default=None,
                   help="Image size to train at (default: the data's own; MedMNIST: 28, or its 64/128/224 file). "
                        "Other sizes are resized to it.")
    g.add_argument("--data_root", default=None, help="Folder holding MedMNIST .npz files (default: $MEDMNIST_ROOT, "
                                                     "~/.medmnist).")
    g.add_argument("--image_column", default="image", help="Image column of a datasets dataset.")
    g.add_argument("--label_column", default="label", help="Label column of a datasets dataset ('none': unlabeled).")
    g.add_argument("--max_train_samples", type=int, default=None,
                   help="Train on N images of the train split: a seeded random subset (the same every time), chosen "
                        "before anything is decoded -- only those N are decoded and stored. Recorded: every later "
                        "command reads the same N (the audit's members).")
    g.add_argument("--window", default=None,
                   help="DICOM/NIfTI: intensity window CENTER,WIDTH or a preset (lung, mediastinum, soft-tissue, "
                        "bone, brain, liver). Default: each DICOM file's own window, else the train split's "
                        "0.5-99.5 percentiles. Recorded, so every later command maps intensities the same way.")
    g.add_argument("--slice_axis", default="axial", choices=("axial", "coronal", "sagittal"),
                   help="NIfTI: the axis 2D slices are cut along (after reorienting to canonical RAS).")
    g.add_argument("--slice_range", default=None, help="NIfTI: slices START:STOP along --slice_axis.")
    g.add_argument("--split_by", default=None, choices=("patient",),
                   help="A DICOM/NIfTI folder without train/val/test sub-folders: seeded patient-level splits "
                        "(7:1:2 of the patients; no patient in two splits).")
    g.add_argument("--split_seed", type=int, default=0, help="Seed of --split_by.")
    g.add_argument("--patient_column", default=None,
                   help="datasets sources: the column naming each image's patient (hashed; never stored). Makes the "
                        "patient the unit of --split_by, of the audit's baseline and of its per-patient numbers.")
    g.add_argument("--patient_regex", default=None,
                   help="DICOM/NIfTI: a pattern whose first group (or whole match) in each file's path below the "
                        "folder is its patient, e.g. '(case[0-9]+)'. Default: DICOM PatientID; NIfTI the BIDS sub-XX "
                        "folder, else the case folder, else the file name (docs/own-data.md).")
    g.add_argument("--bit_depth", type=int, default=None, choices=(8, 16),
                   help="16: keep 16-bit sources (PNG/TIFF, DICOM, NIfTI windows) at 16 bits -- stored as uint16, "
                        "the model sees the full range, `medgen sample` writes 16-bit PNG/DICOM. Default 8. "
                        "Grayscale only.")
    g.add_argument("--crop", default=None, choices=("center", "pad", "resize"),
                   help="Non-square images (folders, DICOM, NIfTI): center (default) keeps the central square, pad "
                        "adds black borders around the whole image -- both keep the aspect ratio -- and resize "
                        "stretches them to N x N. Recorded, so every later command reads them the same way.")
    return g


def data_source(args):
    """The :class:`~medgen_diffusers.data.DataSource` the parsed arguments name (--dataset, --data_root and how to
    read it): what the training scripts read and record for every later command."""
    from .data import DataSource

    return DataSource(dataset=args.dataset, root=args.data_root, options=source_options(args))


def source_options(args) -> dict:
    """The source options of parsed arguments, as ``load_images`` (and every later command) takes them."""
    return dict(image_column=args.image_column,
                label_column=None if args.label_column.lower() == "none" else args.label_column,
                window=args.window, slice_axis=args.slice_axis, slice_range=args.slice_range,
                split_by=args.split_by, split_seed=args.split_seed, patient_column=args.patient_column,
                patient_regex=args.patient_regex, crop=args.crop, max_train_samples=args.max_train_samples,
                bit_depth=args.bit_depth)


def train_args(argv=None, prog=None, resolve=True):
    """train.py's arguments (``medgen train --help``); ``resolve``: settle ``--mixed_precision auto`` (asks torch)."""
    p = ArgumentParser(prog=prog, description=TRAIN_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = data_arguments(p)
    g.add_argument("--augment", default="auto", choices=("auto", *AUGMENTATIONS),
                   help="dihedral: random flips and 90° rotations; none; auto (default): the data's documented "
                        "policy -- dihedral for cells and tissue (BloodMNIST, PathMNIST, ...), none where orientation "
                        "carries meaning (chest X-ray, OCT, left/right organ classes) and for your own data.")
    g.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="Same as --augment none.")
    g.add_argument("--data_description", default=None, help="One line about your data, for the model card.")
    g.add_argument("--data_citation", default=None, help="BibTeX for your data, for the model card.")
    g = p.add_argument_group("model")
    g.add_argument("--model_preset", default="tiny", choices=sorted(UNET_PRESETS))
    g.add_argument("--model_config", default=None, help="UNet2DModel config JSON; overrides --model_preset.")
    g.add_argument("--vae", default=None,
                   help="Latent diffusion: an AutoencoderKL (a `medgen train-vae` folder, a pipeline or VAE folder, "
                        "or a Hub id) whose latents the UNet learns. The train split is encoded once (cached beside "
                        "the prepared data) and scaled to unit variance (the factor is measured and recorded). "
                        "Default: pixel space.")
    g.add_argument("--allow_vae_on_private_data", action="store_true",
                   help="With --dp_epsilon: use a --vae trained on this same private data without DP (refused "
                        "otherwise); the card then says that epsilon does not cover what the VAE learned.")
    g.add_argument("--class_conditional", action=argparse.BooleanOptionalAction, default=None,
                   help="Default: on when the data has one class label per image, off otherwise (with a notice).")
    g.add_argument("--label_dropout", type=float, default=0.1,
                   help="Probability of replacing a label by the null class (enables classifier-free guidance).")
    # Defaults = the ablation's winner (benchmarks/results/ablation/): v-prediction on the cosine schedule reached
    # half the FID of epsilon on the linear schedule at the same CPU budget, and stays stable with few-step solvers.
    g.add_argument("--prediction_type", default="v_prediction", choices=("epsilon", "v_prediction", "sample"))
    g.add_argument("--formulation", default="ddpm", choices=("ddpm", "edm"),
                   help="ddpm: --prediction_type on the --ddpm_beta_schedule (saved with DDIM); edm: Karras et al. "
                        "2022 -- log-normal noise levels and the c_skip/c_out/c_in/c_noise preconditioning of "
                        "diffusers' EDMDPMSolverMultistepScheduler, saved with it (--prediction_type and the DDPM "
                        "schedule do not apply).")
    g.add_argument("--noise_shift", default="auto",
                   help="Shift of the cosine schedule's log-SNR ('simple diffusion', Hoogeboom et al. 2023): auto "
                        "(default) is 2 log(64 / resolution) for pixel images above 64 px -- a 128-px image gets "
                        "the noise a 64-px one has -- and 0 at 64 px and below and for latents; or a number; or 0.")
    g.add_argument("--ddpm_num_steps", type=int, default=1000)
    g.add_argument("--ddpm_beta_schedule", default="squaredcos_cap_v2",
                   choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=None,
                   help="Per process. Default: 128 up to 64 px, then as many pixels per batch (32 at 128 px, 8 at 256, "
                        "2 at 512; for --vae, by the latents' size).")
    g.add_argument("--memory_budget_gb", type=float, default=None,
                   help="Refuse, before training, a setting whose estimated peak memory exceeds this (GiB; default: "
                        "the device's free memory; 0: no check). The refusal gives the estimate and what fits.")
    g.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps; overrides --num_epochs.")
    g.add_argument("--num_epochs", type=int, default=10)
    # 3e-3: the CPU ablation's winner at 1,000 steps (val FID 77 vs 138 at 1e-3, 261 at 3e-4; benchmarks/results/ablation).
    g.add_argument("--learning_rate", type=float, default=3e-3)
    # Cosine decay to zero: val FID 43.4 vs 45.5 for ~constant lr at 62 CPU-minutes (benchmarks/results/ablation2).
    g.add_argument("--lr_scheduler", default="cosine",
                   choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"))
    g.add_argument("--lr_warmup_steps", type=int, default=200)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=0.0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--snr_gamma", type=float, default=None,
                   help="Min-SNR-gamma loss weighting (Hang et al. 2023; 5.0 is the paper's choice). Default: none.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                   help="auto: bf16 autocast on CPUs with bf16 instructions (AVX512-BF16/AMX; ~1.9x faster steps) "
                        "and on bf16 GPUs, fp32 otherwise and under --dp_epsilon; 'no' for fp32 everywhere. Overrides `accelerate launch "
                        "--mixed_precision`; the run records what was used.")
    g.add_argument("--cpu_bf16_math_attention", action=argparse.BooleanOptionalAction, default=True,
                   help="In bf16 on the CPU, run attention with PyTorch's math kernel (its CPU flash kernel is slow "
                        "in bf16 at these sizes); --no-cpu_bf16_math_attention keeps PyTorch's choice.")
    g.add_argument("--keep_freed_memory", action=argparse.BooleanOptionalAction, default=True,
                   help="Keep memory a step frees in the process (glibc malloc thresholds) instead of returning it to "
                        "the OS and page-faulting it back in next step: ~19k fewer page faults a step, a faster step, "
                        "the same peak memory. Linux/glibc only (the run records whether it applied); "
                        "--no-keep_freed_memory keeps glibc's defaults.")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="Recompute the UNet's activations in the backward pass instead of keeping them: less memory "
                        "for large images (256-512 px), about a third more time per step.")
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--ema_max_decay", type=float, default=0.9999)
    g.add_argument("--ema_inv_gamma", type=float, default=1.0)
    g.add_argument("--ema_power", type=float, default=3 / 4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is present.")
    g.add_argument("--init_from", default=None,
                   help="Start from this pipeline's UNet and noise schedule (a folder or Hub id), e.g. a model of "
                        "public data to fine-tune on private data (with --dp_epsilon).")
    g.add_argument("--allow_prior_on_private_data", action="store_true",
                   help="With --dp_epsilon: fine-tune an --init_from model although it was trained on this same "
                        "data (refused otherwise); the card says that epsilon does not cover what it learned.")
    g.add_argument("--finetune_layers", default="all", choices=FINETUNE_LAYERS,
                   help="Train only these layers: all; decoder (up blocks, output, time/class embeddings); "
                        "attention (attention and time/class embeddings, as DP-LDM). Others stay frozen.")
    g = p.add_argument_group("differential privacy (DP-SGD with Opacus; medgen_diffusers/privacy.py)")
    g.add_argument("--dp_epsilon", type=float, default=None,
                   help="Train with (epsilon, delta)-differential privacy: the noise multiplier is found for this "
                        "epsilon over --max_train_steps steps. Default: no DP.")
    g.add_argument("--dp_delta", type=float, default=None,
                   help="Default: the largest power of ten <= 1/(10 N), N the number of privacy units (BloodMNIST's "
                        "11,959 images: 1e-6).")
    g.add_argument("--dp_max_grad_norm", type=float, default=1.0, help="Clipping bound C of each unit's gradient.")
    g.add_argument("--dp_batch_size", type=int, default=256,
                   help="Expected units per step (Poisson sampling, q = this / N); split into physical batches of "
                        "at most --train_batch_size rows.")
    g.add_argument("--dp_noise_multiplicity", type=int, default=1,
                   help="K noise/timestep draws per image, averaged before clipping (DPDM): less variance, no "
                        "extra epsilon. Each unit's rows count K times toward --train_batch_size.")
    g.add_argument("--dp_unit", default="auto", choices=DP_UNITS,
                   help="The unit the guarantee protects: auto (the patient where the data names patients, else "
                        "the image), image, patient.")
    g.add_argument("--dp_accountant", default="rdp", choices=ACCOUNTANTS, help="Opacus' accountant.")
    g = p.add_argument_group("outputs")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="Replace the run already in --output_dir (its checkpoints, metrics and results are deleted).")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N checkpoints.")
    g.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest'.")
    g.add_argument("--save_images_steps", type=int, default=None, help="Write a sample grid every N steps.")
    g.add_argument("--num_sample_images", type=int, default=16, help="Images in each sample grid (0: none).")
    g.add_argument("--sample_inference_steps", type=int, default=50, help="DDIM steps for sample grids.")
    g.add_argument("--eval_steps", type=int, default=None,
                   help="Every N steps: standard FID/KID of EMA samples against a fixed train subset and the val split.")
    g.add_argument("--eval_num_samples", type=int, default=256, help="Generated (and train) images per evaluation.")
    g.add_argument("--eval_num_val", type=int, default=None, help="Val images per evaluation (default: all).")
    g.add_argument("--eval_inference_steps", type=int, default=20, help="DPM-Solver++ steps for evaluation samples.")
    g.add_argument("--logger", default="tensorboard", choices=("tensorboard", "none"))
    g.add_argument("--record_data_order", action="store_true",
                   help="Write data_order/rankR.jsonl: the training-image indices of every batch each rank drew.")
    g.add_argument("--push_to_hub", action="store_true", help="Push the final pipeline to the Hub (see `medgen push`).")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    args = p.parse_args(argv)

    if args.max_train_steps is not None and args.max_train_steps < 1:
        p.error("--max_train_steps must be >= 1.")
    if not 0.0 <= args.label_dropout < 1.0:
        p.error("--label_dropout must be in [0, 1).")
    if args.noise_shift != "auto":
        try:
            args.noise_shift = float(args.noise_shift)
        except ValueError:
            p.error(f"--noise_shift must be 'auto' or a number (a log-SNR shift, e.g. -1.39 for 128 px); got "
                    f"{args.noise_shift!r}.")
    if args.vae is not None and args.formulation == "edm":
        p.error("--formulation edm assumes pixel data of standard deviation 0.5 (EDM's sigma_data); latents are "
                "scaled to unit variance. Use --formulation ddpm with --vae.")
    if args.allow_vae_on_private_data and (args.vae is None or args.dp_epsilon is None):
        p.error("--allow_vae_on_private_data goes with --vae and --dp_epsilon.")
    if args.formulation == "edm" and args.snr_gamma is not None:
        p.error("--snr_gamma weights the DDPM losses; EDM's loss has its own weighting (lambda(sigma) = 1 / c_out^2). "
                "Leave --snr_gamma out with --formulation edm.")
    if args.snr_gamma is not None and not args.snr_gamma > 0:
        p.error("--snr_gamma must be > 0 (5.0 is the Min-SNR paper's value); leave it out for the plain MSE loss.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "num_epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1.")
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id (e.g. your-name/bloodmnist-ddpm).")
    if args.dp_epsilon is None:
        given = [f"--{k}" for k in ("dp_delta",) if getattr(args, k) is not None]
        if given:
            p.error(f"{given[0]} sets up differentially private training: add --dp_epsilon E.")
    else:
        if args.gradient_accumulation_steps != 1:
            p.error("--gradient_accumulation_steps is not used with --dp_epsilon: the logical batch is "
                    "--dp_batch_size units, split into physical batches of --train_batch_size rows.")
        if args.mixed_precision not in ("no", "auto"):
            p.error("--mixed_precision must be 'no' with --dp_epsilon (per-sample gradients in fp32).")
        if args.record_data_order:
            p.error("--record_data_order is for data-parallel runs; DP runs draw step s's units from a secret.")
        if args.dp_batch_size < 1 or args.dp_noise_multiplicity < 1:
            p.error("--dp_batch_size and --dp_noise_multiplicity must be >= 1.")
    args.launched_as = prog or Path(sys.argv[0]).name  # what the card says trained it: `medgen train` or the script
    if resolve and args.mixed_precision == "auto":  # resolved here, so the run records (and a resume sees) what is used
        from .models import auto_mixed_precision

        args.mixed_precision = auto_mixed_precision(on_cpu(args), private=args.dp_epsilon is not None)
    return args


def distill_args(argv=None, prog=None, resolve=True):
    """distill.py's arguments (``medgen distill --help``); ``resolve`` as for ``train_args``."""
    p = ArgumentParser(prog=prog, description=DISTILL_USAGE)
    p.add_argument("--teacher", default=DEFAULT_MODEL, help="Pipeline folder to distil (default: the shipped model).")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dataset", default=None, help="Training images (default: the data the teacher was trained on, "
                                                  "from its run_config.json; any source train_unconditional.py reads).")
    p.add_argument("--data_root", default=None)
    p.add_argument("--max_train_steps", type=int, default=300)
    p.add_argument("--train_batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=2e-5)
    p.add_argument("--lr_warmup_steps", type=int, default=100)
    p.add_argument("--lr_scheduler", default="constant_with_warmup", choices=("constant_with_warmup", "cosine"),
                   help="LCM's constant rate after warm-up, or a cosine decay to zero at --max_train_steps.")
    p.add_argument("--num_ddim_timesteps", type=int, default=50, help="The teacher's solver grid (LCM's N).")
    p.add_argument("--timestep_scaling", type=float, default=10.0, help="Boundary-condition time scale (LCM's).")
    p.add_argument("--ema_decay", type=float, default=0.95, help="Target network = EMA of the student.")
    p.add_argument("--phases", type=int, default=0,
                   help="0: latent-consistency distillation to t = 0 (LCMScheduler, --num_inference_steps steps). "
                        "K >= 1: K-phase consistency distillation, sampled in K DDIM steps (K must divide "
                        "--num_ddim_timesteps; e.g. 2 for a 2-evaluation sampler).")
    p.add_argument("--num_inference_steps", type=int, default=4,
                   help="The saved pipeline's default step count (with --phases K it is K).")
    p.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                   help="As train_unconditional.py's: auto is bf16 autocast on CPUs with bf16 instructions "
                        "(AVX512-BF16/AMX) and on bf16 GPUs, fp32 elsewhere (emulated bf16 is slower than fp32); "
                        "the run records what was used.")
    p.add_argument("--keep_freed_memory", action=argparse.BooleanOptionalAction, default=True,
                   help="As train_unconditional.py's: keep freed memory in the process (glibc), fewer page faults.")
    p.add_argument("--checkpointing_steps", type=int, default=250)
    p.add_argument("--checkpoints_total_limit", type=int, default=3)
    p.add_argument("--resume_from_checkpoint", default="latest", help="A checkpoint folder, 'latest', or ''.")
    p.add_argument("--overwrite_output_dir", action="store_true", help="Replace the run already in --output_dir.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)
    if args.phases < 0 or (args.phases and args.num_ddim_timesteps % args.phases):
        p.error(f"--phases {args.phases}: the phase boundaries must lie on the teacher's {args.num_ddim_timesteps}-"
                f"point DDIM grid, so --phases must be 0 or a divisor of --num_ddim_timesteps (e.g. 2 or 5).")
    if args.phases:
        args.num_inference_steps = args.phases
    if resolve and args.mixed_precision == "auto":  # resolved here, so distill_config.json records what is used
        from .models import auto_mixed_precision

        args.mixed_precision = auto_mixed_precision(on_cpu=on_cpu(args))
    return args


TRAIN_VAE_USAGE = """Train a diffusers AutoencoderKL on your images: the first stage of latent diffusion.

    medgen train-vae --dataset FOLDER --resolution 128 --output_dir runs/vae       # then:
    medgen train --dataset FOLDER --resolution 128 --vae runs/vae --output_dir runs/ldm"""


def train_vae_args(argv=None, prog=None, resolve=True):
    """vae.py's arguments (``medgen train-vae --help``); ``resolve`` as for ``train_args``."""
    p = ArgumentParser(prog=prog, description=TRAIN_VAE_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_arguments(p)
    g = p.add_argument_group("autoencoder")
    g.add_argument("--downsample", type=int, default=4, choices=(4, 8),
                   help="Pixels per latent across: 4 (128 px -> 32x32 latents) or 8 (Stable Diffusion's).")
    g.add_argument("--latent_channels", type=int, default=4, help="Channels of the latent (Stable Diffusion: 4).")
    g.add_argument("--base_channels", type=int, default=64,
                   help="Channels of the first encoder level (doubled once after it, as in Stable Diffusion's VAE).")
    g.add_argument("--layers_per_block", type=int, default=1)
    g.add_argument("--init_from", default=None,
                   help="Fine-tune this AutoencoderKL (a folder, or a Hub id: downloaded when online) instead of "
                        "training a new one; its channels must match the data's.")
    g.add_argument("--kl_weight", type=float, default=1e-6,
                   help="Weight of the KL term (small: the latent stays close to a Gaussian without blurring).")
    g.add_argument("--disc_weight", type=float, default=0.0,
                   help="Weight of a patch discriminator's (hinge) adversarial loss on the decoder, from "
                        "--disc_start on. 0 (default): L1 + KL only.")
    g.add_argument("--disc_start", type=int, default=500, help="Step from which the discriminator trains and counts.")
    g = p.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=32, help="Per process.")
    g.add_argument("--max_train_steps", type=int, default=2000)
    g.add_argument("--learning_rate", type=float, default=3e-4)
    g.add_argument("--lr_warmup_steps", type=int, default=100)
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="Recompute activations in the backward pass: less memory for 256-512 px, slower steps.")
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--ema_max_decay", type=float, default=0.999)
    g.add_argument("--mixed_precision", default="auto", choices=("auto", "no", "fp16", "bf16"),
                   help="As train_unconditional.py's.")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is present.")
    g = p.add_argument_group("outputs")
    g.add_argument("--output_dir", required=True,
                   help="The AutoencoderKL is saved here (config.json + safetensors: a valid --vae), with "
                        "run_config.json, vae_summary.json (val PSNR/SSIM) and checkpoints.")
    g.add_argument("--overwrite_output_dir", action="store_true", help="Replace the run already in --output_dir.")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest'.")
    g.add_argument("--num_val", type=int, default=512, help="Val images for the reconstruction PSNR/SSIM.")
    args = p.parse_args(argv)
    for name in ("train_batch_size", "max_train_steps", "checkpointing_steps", "latent_channels", "base_channels",
                 "layers_per_block"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1.")
    if args.base_channels % 8:
        p.error("--base_channels must be a multiple of 8 (the VAE's group normalisation uses 8 groups).")
    args.launched_as = prog or Path(sys.argv[0]).name
    if resolve and args.mixed_precision == "auto":
        from .models import auto_mixed_precision

        args.mixed_precision = auto_mixed_precision(on_cpu(args))
    return args
