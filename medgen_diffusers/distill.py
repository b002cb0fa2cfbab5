"""Latent-consistency distillation of a BloodMNIST pipeline into a few-step sampler (pixel space, LCMScheduler).

    python distill_lcm.py --output_dir runs/lcm --max_train_steps 300      # teacher: the shipped model
    medgen distill --output_dir runs/lcm --max_train_steps 300             # installed (a wheel)

Reads top to bottom: teacher -> data -> student (a copy of the teacher) and target (an EMA of the student) -> loop.
Each step follows diffusers' `train_lcm_distill_sd_wds.py`, in pixel space and without guidance conditioning:

1. pick a point of the teacher's 50-step DDIM grid, t_n, and noise real images to x_{t_n};
2. the student maps x_{t_n} to an x0 estimate, with the consistency boundary condition
   f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t), which makes f the identity at t = 0;
3. the teacher takes one DDIM step x_{t_n} -> x_{t_{n-1}} (its x0 clamped to [-1, 1], as its sampler does), and the
   target network (an EMA of the student, decay 0.95) gives f(x_{t_{n-1}}, t_{n-1}) without gradient;
4. pseudo-Huber loss between the two (c = 0.00054 sqrt(d), Song & Dhariwal 2023).

With ``--phases K`` the objective is multi-phase (phased) consistency distillation instead (Wang et al. 2024,
arXiv 2405.18407): the trajectory is cut into K phases at the timesteps a K-step trailing DDIM sampler visits (for
K = 2: 999 -> 499 -> clean), and the student learns to jump from any x_t to the start of its own phase, x_s = DDIM(x_t
-> s) of its own x0 and noise estimates, consistently with the target one teacher step later. DDIM's own step is that
jump, so the saved pipeline is the student with the teacher's DDIMScheduler (trailing) and K default steps: each
network evaluation lands exactly on a phase boundary.

The saved pipeline is a `BloodMNISTPipeline` with `LCMScheduler` (same noise schedule, `original_inference_steps`
= the DDIM grid, the same `timestep_scaling` as training) and `default_num_inference_steps` = 4: it loads through
`BloodMNISTPipeline.from_pretrained` and plain `DiffusionPipeline` like any other. The student is distilled from the
teacher's class-conditional predictions without guidance: use it with guidance_scale 1 (the default).
Checkpoints (Accelerate state + the target as safetensors) make it resumable: rerun the same command.
"""

import inspect
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.arguments import distill_args as parse_args
from medgen_diffusers.checkpointing import (MetricsLog, check_resumed_config, checkpoint_step, prepare_run_folder,
                                            register_ema_hooks, save_checkpoint)
from medgen_diffusers.data import clean_batch, resolve_augmentation
from medgen_diffusers.model_card import write_card
from medgen_diffusers.models import is_edm, keep_freed_memory
from medgen_diffusers.provenance import data_source, read_run_config, weights_sha256
from medgen_diffusers.runtime import on_cpu

logger = get_logger(__name__)
TARGET_FOLDER = "unet_target"  # the target network inside a checkpoint: safetensors + config


TEACHER_DP_NOTE = ("the student is distilled on the teacher's real training images without DP-SGD, so the "
                   "teacher's epsilon does not carry over to it: the student is not differentially private")


def boundary_scalings(timesteps, timestep_scaling, sigma_data=0.5):
    """c_skip, c_out of the consistency parameterisation -- the formula LCMScheduler uses at sampling time."""
    scaled = timesteps.float() * timestep_scaling
    c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
    c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
    return c_skip[:, None, None, None], c_out[:, None, None, None]


def x0_and_eps(model_output, sample, alpha, sigma, prediction_type):
    """The model's x0 and noise estimates for x_t = alpha x0 + sigma eps."""
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output, alpha * model_output + sigma * sample
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha * model_output) / sigma
    raise ValueError(f"prediction_type {prediction_type!r} is not supported")


def phase_start(timesteps, phases, num_train_timesteps=1000):
    """Where a K-phase student jumps to from timestep t: the largest timestep of a K-step trailing DDIM sampler
    below t (-1 = clean), i.e. where DDIMScheduler's K-step sampler goes next from the start of t's phase."""
    length = num_train_timesteps // phases
    return torch.div(timesteps, length, rounding_mode="floor") * length - 1


def student_pipeline(teacher_pipe, student_state, config):
    """The distilled student as a pipeline, from a run's distill_config.json (or the arguments): LCMScheduler for
    consistency distillation to t = 0, the teacher's DDIMScheduler (trailing) for K-phase distillation."""
    phases = config.get("phases", 0)
    if not phases:
        return lcm_pipeline(teacher_pipe, student_state, config["num_ddim_timesteps"], config["timestep_scaling"],
                            config.get("num_inference_steps", 4))
    # Trailing spacing: the K steps are the phase boundaries (999, 499 for K = 2), the last one to alpha = 1.
    scheduler = DDIMScheduler(**{**teacher_scheduler_config(teacher_pipe, DDIMScheduler),
                                 "timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True})
    return with_student_weights(teacher_pipe, student_state, scheduler, phases)


def lcm_pipeline(teacher_pipe, student_state, num_ddim_timesteps=50, timestep_scaling=10.0, default_steps=4):
    """A BloodMNISTPipeline of the student's weights with LCMScheduler on the teacher's noise schedule, thresholding
    and prediction type."""
    scheduler = LCMScheduler(**teacher_scheduler_config(teacher_pipe, LCMScheduler),
                             original_inference_steps=num_ddim_timesteps, timestep_scaling=timestep_scaling)
    return with_student_weights(teacher_pipe, student_state, scheduler, default_steps)


def teacher_scheduler_config(teacher_pipe, scheduler_cls):
    """The teacher's scheduler settings that ``scheduler_cls`` takes (keys it does not, like DDPM's variance_type
    for LCMScheduler, are left out: every load would warn about them)."""
    accepted = inspect.signature(scheduler_cls.__init__).parameters
    return {k: v for k, v in teacher_pipe.scheduler.config.items() if k in accepted}


def with_student_weights(teacher_pipe, student_state, scheduler, default_steps):
    unet = UNet2DModel.from_config(teacher_pipe.unet.config)
    unet.load_state_dict(student_state)
    pipeline = BloodMNISTPipeline(unet=unet.eval(), scheduler=scheduler, class_names=teacher_pipe.config.class_names,
                                  vae=getattr(teacher_pipe, "vae", None))
    pipeline.register_to_config(default_num_inference_steps=default_steps)
    return pipeline


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    args.keep_freed_memory = args.keep_freed_memory and keep_freed_memory()  # recorded: applied or not (glibc)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(output_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        cpu=on_cpu(args),
    )
    checkpoint = prepare_run_folder(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir,
                                    accelerator.is_main_process)  # verified before anything is written
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    # Teacher: frozen; its noise schedule defines the grid the student learns to jump along. A resumed student must
    # be a student of this teacher.
    teacher_pipe = BloodMNISTPipeline.from_pretrained(args.teacher)
    if is_edm(teacher_pipe.scheduler):
        raise ValueError(f"--teacher {args.teacher} was trained with the EDM formulation; distillation follows a "
                         "DDPM teacher's DDIM grid. Distil a --formulation ddpm model.")
    teacher_sha256 = weights_sha256(teacher_pipe.unet)
    if checkpoint is not None:
        # A cosine rate is a function of the run's length, so a cosine run resumes only to the same length.
        keys = ["teacher_sha256", "phases", "lr_scheduler"] + (["max_train_steps"] * (args.lr_scheduler == "cosine"))
        check_resumed_config(output_dir, "distill_config.json", {**vars(args), "teacher_sha256": teacher_sha256},
                             keys)
    vae = getattr(teacher_pipe, "vae", None)  # a latent teacher: the student learns the same latents
    teacher = teacher_pipe.unet.requires_grad_(False).eval().to(accelerator.device)
    schedule = DDPMScheduler.from_config(teacher_pipe.scheduler.config)
    prediction_type = schedule.config.prediction_type
    alphas_cumprod = schedule.alphas_cumprod.to(accelerator.device)
    step_ratio = schedule.config.num_train_timesteps // args.num_ddim_timesteps
    grid = torch.arange(1, args.num_ddim_timesteps + 1, device=accelerator.device) * step_ratio - 1  # 19, 39, ... 999
    final_alpha_cumprod = torch.tensor(1.0, device=accelerator.device)  # DDIM's last step, set_alpha_to_one
    class_conditional = teacher.config.num_class_embeds is not None

    # Data: the teacher's training split and augmentation (its run_config.json), as in train_unconditional.py.
    teacher_run = read_run_config(args.teacher) or {}
    source = data_source(args.teacher, args.dataset, args.data_root, run_config=teacher_run)
    augmentation, _ = resolve_augmentation(teacher_run.get("augmentation", teacher_run.get("augment")),
                                           source.dataset)
    if teacher_run.get("privacy"):
        logger.warning(f"--teacher {args.teacher} was trained with differential privacy; {TEACHER_DP_NOTE}")
    resolution = teacher_pipe.image_size
    with accelerator.main_process_first():
        data = source.load("train", resolution)
    data_block = source.record(data.md5)
    if data.images.shape[1] != teacher_pipe.image_channels:
        raise ValueError(f"{source.dataset} has {data.images.shape[1]}-channel images but the teacher takes "
                         f"{teacher_pipe.image_channels}: distil on the data the teacher was trained on.")
    if class_conditional and (data.labels is None or int(data.labels.max()) >= teacher.config.num_class_embeds - 1):
        raise ValueError(f"The teacher knows {teacher.config.num_class_embeds - 1} classes, which {source.dataset}'s "
                         "labels do not match: distil on the data the teacher was trained on.")
    labels = data.labels if data.labels is not None else torch.zeros(len(data.images), dtype=torch.long)
    train_set, latent_scale = data.images, None
    if vae is not None:  # the teacher's latents (the training run's cache; encoded here when it is gone), its scale
        from .vae import train_latents

        vae.to(accelerator.device)
        with accelerator.main_process_first():
            train_set, _, _ = train_latents(vae, data.images, data.md5, weights_sha256(vae))
        latent_scale, augmentation = vae.config.scaling_factor, "none"
    loader = DataLoader(TensorDataset(train_set, labels), batch_size=args.train_batch_size, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(args.seed))

    # Student starts as the teacher; the target is an EMA of the student (fixed decay, as in LCM).
    student = UNet2DModel.from_config(teacher.config)
    student.load_state_dict(teacher.state_dict())
    student.train()
    target = EMAModel(student.parameters(), decay=args.ema_decay, min_decay=args.ema_decay, use_ema_warmup=False,
                      model_cls=UNet2DModel, model_config=student.config)
    target_unet = UNet2DModel.from_config(teacher.config).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.learning_rate, weight_decay=0.0)
    # Accelerate steps a prepared scheduler once per process, as train_unconditional.py accounts for.
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    student, optimizer, loader, lr_scheduler = accelerator.prepare(student, optimizer, loader, lr_scheduler)
    target.to(accelerator.device)
    target_unet.to(accelerator.device)

    register_ema_hooks(accelerator, target, TARGET_FOLDER, UNet2DModel)
    global_step, first_epoch, skip = 0, 0, 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
        first_epoch, skip = divmod(global_step, len(loader))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "distill_config.json").write_text(json.dumps(
            {**vars(args), "teacher": Path(args.teacher).name if Path(args.teacher).exists() else args.teacher,
             "teacher_sha256": teacher_sha256, "output_dir": output_dir.name, "data": data_block,
             "data_md5": data.md5, "augmentation": augmentation}, indent=2) + "\n")
    huber_c = 0.00054 * math.sqrt(train_set[0].numel())
    metrics = MetricsLog(output_dir / "metrics.jsonl", global_step, accelerator.is_main_process)

    progress = tqdm(total=args.max_train_steps, initial=global_step, desc="distill",
                    disable=not accelerator.is_local_main_process)
    start_time, start_step = time.time(), global_step
    for epoch in range(first_epoch, math.ceil(args.max_train_steps / len(loader))):
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if epoch == first_epoch and skip else loader
        for images, batch_labels in batches:
            if global_step >= args.max_train_steps:
                break
            clean = clean_batch(images, augmentation, latent_scale)  # as the teacher was trained
            class_labels = batch_labels if class_conditional else None
            # 1. A grid point t_n (n >= 1) and the previous one t_{n-1} (t = 0 stands for "clean" at n = 0).
            index = torch.randint(0, args.num_ddim_timesteps, (clean.shape[0],), device=clean.device)
            t_start = grid[index]
            t_prev = (t_start - step_ratio).clamp(min=0)
            noise = torch.randn_like(clean)
            x_start = schedule.add_noise(clean, noise, t_start)
            alpha, sigma = (alphas_cumprod[t_start].sqrt()[:, None, None, None],
                            (1 - alphas_cumprod[t_start]).sqrt()[:, None, None, None])
            # 2. Student: f(x_{t_n}, t_n) -- x0 with the boundary condition, or (K phases) the DDIM jump to the
            # start of t_n's phase, s, where DDIM's own formula makes f the identity at t = s.
            with accelerator.autocast():
                out = student(x_start, t_start, class_labels=class_labels).sample.float()
            x0_student, eps_student = x0_and_eps(out, x_start, alpha, sigma, prediction_type)
            if args.phases:
                edge = phase_start(t_start, args.phases, schedule.config.num_train_timesteps)
                alpha_edge = torch.where(edge >= 0, alphas_cumprod[edge.clamp(min=0)],
                                         final_alpha_cumprod)[:, None, None, None]
                prediction = alpha_edge.sqrt() * x0_student + (1 - alpha_edge).sqrt() * eps_student
            else:
                c_skip, c_out = boundary_scalings(t_start, args.timestep_scaling)
                prediction = c_skip * x_start + c_out * x0_student
            with torch.no_grad():
                # 3. Teacher: one DDIM step to t_{n-1}; target: f(x_{t_{n-1}}, t_{n-1}).
                with accelerator.autocast():
                    out = teacher(x_start, t_start, class_labels=class_labels).sample.float()
                x0_teacher, eps_teacher = x0_and_eps(out, x_start, alpha, sigma, prediction_type)
                if vae is None:  # the teacher's sampler thresholds its x0 the same way (latents are unbounded)
                    x0_teacher = x0_teacher.clamp(-1, 1)
                # (Phases: a step from t_0 goes to clean as the DDIM sampler's last step does, alpha = 1.)
                alpha_prev = torch.where(t_start - step_ratio >= 0, alphas_cumprod[t_prev],
                                         final_alpha_cumprod if args.phases else alphas_cumprod[0])[:, None, None, None]
                x_prev = alpha_prev.sqrt() * x0_teacher + (1 - alpha_prev).sqrt() * eps_teacher
                target.copy_to(target_unet.parameters())
                with accelerator.autocast():
                    out = target_unet(x_prev, t_prev, class_labels=class_labels).sample.float()
                x0_target, eps_target = x0_and_eps(out, x_prev, alpha_prev.sqrt(), (1 - alpha_prev).sqrt(),
                                                   prediction_type)
                if args.phases:  # the teacher's step reached the phase start: x_prev is the target itself
                    reached = (t_start - step_ratio <= edge)[:, None, None, None]
                    jump = alpha_edge.sqrt() * x0_target + (1 - alpha_edge).sqrt() * eps_target
                    target_value = torch.where(reached, x_prev, jump)
                else:
                    c_skip_prev, c_out_prev = boundary_scalings(t_prev, args.timestep_scaling)
                    target_value = c_skip_prev * x_prev + c_out_prev * x0_target
            # 4. Pseudo-Huber loss, one step, EMA target update.
            loss = (torch.sqrt((prediction - target_value) ** 2 + huber_c ** 2) - huber_c).mean()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            target.step(accelerator.unwrap_model(student).parameters())
            global_step += 1
            progress.update(1)
            logs = {"step": global_step, "loss": accelerator.gather(loss.detach()).mean().item(),
                    "steps_per_s": (global_step - start_step) / (time.time() - start_time)}
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            metrics.write(logs)
            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, logger)
        skip = 0
        if global_step >= args.max_train_steps:
            break
    progress.close()

    # The few-step pipeline: the student with LCMScheduler on the teacher's noise schedule.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipeline = student_pipeline(teacher_pipe, accelerator.unwrap_model(student).state_dict(), vars(args))
        pipeline.save_pretrained(output_dir)
        # The student's run_config: its teacher's data, so evaluate/audit/utility/card find the same data source.
        student_run = {**teacher_run, "dataset": source.dataset, "data_root": source.root, **source.options,
                       "data_md5": data.md5, "augmentation": augmentation, "distilled_from": teacher_sha256,
                       "distillation": {k: v for k, v in vars(args).items() if k not in ("teacher", "output_dir")},
                       "output_dir": output_dir.name}
        if student_run.pop("privacy", None):  # the student is not private: it was trained on the real images
            student_run["teacher_privacy"] = TEACHER_DP_NOTE
        (output_dir / "run_config.json").write_text(json.dumps(student_run, indent=2) + "\n")
        write_card(output_dir)
        logger.info(f"Saved the {args.num_inference_steps}-step pipeline to {output_dir}")


def run_as_script():
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as error:  # bad teacher/data/checkpoint: one line, no trace
        raise SystemExit(f"distill_lcm.py: error: {error}")


if __name__ == "__main__":
    run_as_script()
