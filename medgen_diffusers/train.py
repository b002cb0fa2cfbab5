"""Train a (class-conditional) DDPM on a MedMNIST dataset or your own data and save it as a BloodMNISTPipeline.

    accelerate launch train_unconditional.py --output_dir runs/blood --max_train_steps 2000   # from a checkout
    medgen train --output_dir runs/blood --max_train_steps 2000                               # installed
    accelerate launch -m medgen_diffusers.train --output_dir runs/blood                       # installed, launched

Runs on CPU, one GPU or many: the distribution is Accelerate's own launcher (`accelerate launch`, `torchrun`).
Read it top to bottom: the loss, the two update loops (data-parallel, and DP-SGD from privacy.py), then main: data,
model, optimisation, (resume), the loop, the final save. Its documented argument list is in arguments.py (as nanoGPT
keeps its configuration in configurator.py), free of torch so that `medgen train --help` answers at once. It is
longer than ~400 lines because it is the training script, kept whole like nanoGPT's train.py.
"""

import json
import math
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from medgen_diffusers import BloodMNISTPipeline
from medgen_diffusers.arguments import data_source
from medgen_diffusers.arguments import train_args as parse_args  # the arguments: arguments.py (torch-free)
from medgen_diffusers.checkpointing import (MetricsLog, check_resumed_config, checkpoint_step, prepare_run_folder,
                                            register_ema_hooks, save_checkpoint)
from medgen_diffusers.data import clean_batch, resolve_augmentation
from medgen_diffusers.evaluation import TrainingEvaluator
from medgen_diffusers.figures import square_grid
from medgen_diffusers.model_card import write_card
from medgen_diffusers.models import (EDM_P_MEAN, EDM_P_STD, attention_kernels, auto_noise_shift, build_unet,
                                     edm_scheduler, fast_solver, is_edm, keep_freed_memory, shifted_cosine_betas)
from medgen_diffusers.data.medical_folders import patient_named_classes
from medgen_diffusers.memory import available_memory, check_training_memory, default_batch_size
from medgen_diffusers.privacy import (PrivacyWarning, PrivateStep, check_private_source, check_private_vae,
                                      plan_privacy, privacy_units, trainable_parameters, unit_note)
from medgen_diffusers.data.files import recorded_source
from medgen_diffusers.provenance import weights_sha256
from medgen_diffusers.runtime import on_cpu

logger = get_logger(__name__, log_level="INFO")
EMA_FOLDER = "unet_ema"  # EMA weights inside a checkpoint: safetensors + config, via EMAModel.save_pretrained
# The sampler a saved pipeline's plain `pipe()` uses: DDIM, 20 steps, "trailing" spacing -- the shipped model's, chosen
# on val in benchmarks/bench_samplers.py. DDPM's 1,000 steps would make `pipe()`, `medgen evaluate RUN` and
# `medgen audit RUN` 50x slower (about 40 CPU-minutes for 256 images) for no gain.
DEFAULT_SAMPLER_STEPS = 20


def sample_grid(pipeline, num_images, steps, seed):
    """A fixed-seed grid from the EMA weights, sampled with DDIM (fast enough to run on CPU)."""
    scheduler = (fast_solver(pipeline.scheduler) if is_edm(pipeline.scheduler)  # EDM timesteps are c_noise(sigma)
                 else DDIMScheduler.from_config(pipeline.scheduler.config))
    fast = BloodMNISTPipeline(pipeline.unet, scheduler, pipeline.config.class_names, vae=pipeline.vae)
    fast.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return square_grid(fast(batch_size=num_images, num_inference_steps=steps, generator=generator).images)


def diffusion_loss(unet, noise_scheduler, batch_images, batch_labels, args, augmentation, num_classes,
                   latent_scale=None):
    """One loss per image: augment, noise at a random timestep, predict the target, weight (Min-SNR)."""
    clean = clean_batch(batch_images, augmentation, latent_scale)
    noise = torch.randn_like(clean)
    if is_edm(noise_scheduler):
        return edm_loss(unet, noise_scheduler, clean, noise, drop_labels(batch_labels, num_classes, args), args)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    # Drawn after the timesteps, as before EDM existed: a DDPM run's random stream (and its resumes) is unchanged.
    class_labels = drop_labels(batch_labels, num_classes, args)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    with attention_kernels(clean.device.type, args.mixed_precision, args.cpu_bf16_math_attention):
        prediction = unet(noisy, timesteps, class_labels=class_labels).sample
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if args.snr_gamma is not None:  # min(SNR, gamma), expressed for what the UNet predicts
        snr = compute_snr(noise_scheduler, timesteps)
        weights = snr.clamp(max=args.snr_gamma)
        if prediction_type == "epsilon":
            weights = weights / snr
        elif prediction_type == "v_prediction":
            weights = weights / (snr + 1)
        loss = loss * weights
    return loss


def drop_labels(batch_labels, num_classes, args):
    """Label dropout teaches the null class for classifier-free guidance; None for an unconditional model."""
    if num_classes is None:
        return None
    dropped = torch.rand(batch_labels.shape, device=batch_labels.device) < args.label_dropout
    return torch.where(dropped, torch.full_like(batch_labels, num_classes), batch_labels)


def edm_loss(unet, scheduler, clean, noise, class_labels, args):
    """EDM's training loss (Karras et al. 2022, eq. 2 and table 1): sigma log-normal; the UNet sees c_in * x at
    timestep c_noise(sigma) and its output F gives the denoised D = c_skip * x + c_out * F -- all three from the
    scheduler's `precondition_*`, which its sampler applies too; lambda(sigma) = 1 / c_out^2 makes the loss a plain
    MSE on F (unit weight at every noise level)."""
    sigma = (torch.randn(clean.shape[0], 1, 1, 1, device=clean.device) * EDM_P_STD + EDM_P_MEAN).exp()
    noisy = clean + sigma * noise
    with attention_kernels(clean.device.type, args.mixed_precision, args.cpu_bf16_math_attention):
        output = unet(scheduler.precondition_inputs(noisy, sigma), scheduler.precondition_noise(sigma).flatten(),
                      class_labels=class_labels).sample
    denoised = scheduler.precondition_outputs(noisy, output.float(), sigma)
    sigma_data = scheduler.config.sigma_data
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return (weight * (denoised - clean) ** 2).mean(dim=(1, 2, 3))


def data_parallel_updates(accelerator, unet, optimizer, lr_scheduler, train_dataloader, loss_fn, args, start_step,
                          max_train_steps, updates_per_epoch, output_dir):
    """Yields (epoch, loss) after each optimizer update: shuffled epochs sharded across processes, gradient
    accumulation, clipping. Resumes mid-epoch by skipping the batches the checkpoint had already used."""
    step = start_step
    for epoch in range(start_step // updates_per_epoch, math.ceil(max_train_steps / updates_per_epoch)):
        train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        skip = (step % updates_per_epoch) * args.gradient_accumulation_steps
        if epoch == start_step // updates_per_epoch and skip:
            batches = accelerator.skip_first_batches(train_dataloader, skip)
        for batch_images, batch_labels, batch_indices in batches:
            if step >= max_train_steps:  # resumed at the end: only save the pipeline
                return
            if args.record_data_order:  # every rank its own file: which training images it drew, in order
                with (output_dir / "data_order" / f"rank{accelerator.process_index}.jsonl").open("a") as f:
                    f.write(json.dumps({"epoch": epoch, "step": step, "indices": batch_indices.tolist()}) + "\n")
            with accelerator.accumulate(unet):
                loss = loss_fn(unet, batch_images, batch_labels).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
                yield epoch, accelerator.gather(loss.detach()).mean().item()
            if step >= max_train_steps:
                return


def private_updates(private, lr_scheduler, loss_fn, images, labels, device, start_step, max_train_steps):
    """Yields (epoch, loss) after each DP-SGD step: Poisson-sampled units, per-unit clipping, noise (privacy.py)."""
    steps_per_epoch = max(round(1 / private.plan.sample_rate), 1)  # expected steps to see every unit once

    def row_loss(model, rows):
        return loss_fn(model, images[rows].to(device), labels[rows].to(device))

    for step in range(start_step, max_train_steps):
        loss = private.step(step, row_loss)
        lr_scheduler.step()
        yield step // steps_per_epoch, loss


def load_training_data(args, accelerator, output_dir, checkpoint):
    """The train split (images, labels; zeros when unlabeled) and the options every later command reads it with."""
    source = data_source(args)
    # Once per node, on its local main process: a download, or a local folder decoded into a memory-mapped store
    # that every rank then reads batch by batch (data/store.py).
    with accelerator.local_main_process_first():
        data = source.load("train", args.resolution, prepare=True)
    if data.notice:
        logger.warning(data.notice)
    if checkpoint is not None:  # the same data as the run being resumed, or a clear refusal
        check_resumed_config(output_dir, "run_config.json", {"data_md5": data.md5}, ["data_md5"])
    if data.labels is None and args.class_conditional:
        raise ValueError(f"--class_conditional needs one class label per image, and {args.dataset} has none "
                         f"({data.notice or 'unlabeled images'}); drop --class_conditional.")
    if data.labels is None and accelerator.is_main_process:
        logger.info(f"{args.dataset}: no class labels, training an unconditional model.")
    # With --max_train_samples: the subset, chosen before decoding (data.kept_rows); --bit_depth 16: uint16 images.
    images = data.images16 if data.images16 is not None else data.images
    labels = data.labels if data.labels is not None else torch.zeros(len(images), dtype=torch.long)
    return data, images, labels, source


def batch_and_memory(args, accelerator, unet, train_set):
    """The per-process batch (--train_batch_size, or the default for the UNet's input size) and, before any step,
    the memory estimate -- or a refusal with the estimate and what would fit (memory.py)."""
    if args.train_batch_size is None:
        args.train_batch_size = default_batch_size(train_set.shape[-1])
        logger.info(f"--train_batch_size {args.train_batch_size} (the default for {train_set.shape[-1]}-px inputs)")
    if args.dp_epsilon is None and len(train_set) < args.train_batch_size * accelerator.num_processes:
        raise ValueError(f"{len(train_set)} training images are fewer than one global batch "
                         f"({args.train_batch_size} x {accelerator.num_processes} processes): lower --train_batch_size.")
    budget = available_memory(accelerator.device) if args.memory_budget_gb is None else args.memory_budget_gb or None
    return check_training_memory(unet, args.train_batch_size, budget, args.gradient_checkpointing,
                                 args.mixed_precision, args.use_ema, args.dp_epsilon is not None,
                                 f"{accelerator.device.type} memory")


def latent_training_data(args, accelerator, data, images, output_dir, checkpoint):
    """--vae: the AutoencoderKL (frozen, on the device), the train split's latents (encoded once per node into the
    cache, memory-mapped) and the scaling factor measured on them (set in the VAE's config: the saved pipeline
    decodes with it)."""
    from medgen_diffusers.vae import VAEError, load_vae, train_latents, vae_downsampling

    if args.dp_epsilon is not None:  # refused before anything is encoded (make_private records it)
        check_private_vae(args.vae, args.dataset, data.md5, args.allow_vae_on_private_data)
    vae = load_vae(args.vae)
    if vae.config.in_channels != images.shape[1]:
        raise VAEError(f"--vae {args.vae} encodes {vae.config.in_channels}-channel images; {args.dataset} has "
                       f"{images.shape[1]}: train a VAE on this data (`medgen train-vae`).")
    factor = vae_downsampling(vae)
    if images.shape[-1] % factor:
        raise VAEError(f"--vae {args.vae} downsamples {factor}x: {images.shape[-1]}-px images make no whole latent; "
                       f"pass --resolution a multiple of {factor}.")
    vae = vae.to(accelerator.device).eval().requires_grad_(False)
    vae_sha256 = weights_sha256(vae)
    if checkpoint is not None:
        check_resumed_config(output_dir, "run_config.json", {"vae_sha256": vae_sha256}, ["vae_sha256"])
    with accelerator.local_main_process_first():  # the local main process encodes; the others read its cache
        latents, scale, cache = train_latents(vae, images, data.md5, vae_sha256)
    vae.register_to_config(scaling_factor=scale)
    record = {"vae": recorded_source(args.vae), "vae_sha256": vae_sha256, "downsample": factor,
              "latent_channels": vae.config.latent_channels, "latent_resolution": latents.shape[-1],
              "scaling_factor": scale, "scaling_rule": "1 / std of the train split's latents",
              "latents": "posterior means, encoded once", "cache": cache.name}
    summary = Path(str(args.vae)) / "vae_summary.json"  # a `medgen train-vae` folder: its held-out reconstruction
    if summary.is_file():
        record["reconstruction"] = json.loads(summary.read_text()).get("reconstruction")
    return vae, latents, scale, record


def refuse_patient_classes(dataset, data, labels, class_conditional):
    """Class names go into model_index.json, the card and classes.png, and a model can be sampled per class: a class
    that is a patient would publish an identifier and a per-patient generator. Refused before anything is trained."""
    named = patient_named_classes(data.class_names, labels.numpy(), data.groups) if class_conditional else []
    if named:
        raise ValueError(f"{dataset}: class folder(s) {named[:3]}{' ...' if len(named) > 3 else ''} look like "
                         "patients (one patient each, or a sub-XX / ses-XX / DICOM person name): PACS/TCIA exports "
                         "(root/<patient>/<study>/), BraTS (root/<case>/) and BIDS (root/sub-01/) put the patient "
                         "in the first sub-folder, which is read as the class. Class names are published with the "
                         "model. Train without classes (--no-class_conditional), or arrange the folder as "
                         "root/<class>/<patient>/... with real class names.")


def describe_run(args, data, images, source, accelerator, unet, noise_scheduler, augmentation,
                 augmentation_reason, class_conditional, max_train_steps, privacy):
    """run_config.json: the arguments and what they resolved to -- every later command reads the data from here."""
    run_config = {k: v for k, v in vars(args).items() if k != "hub_token"}
    # The data source as every later command finds it (an absolute path for local data; cards and pushes cut it to
    # a name), how it was augmented and why.
    run_config.update(dataset=recorded_source(args.dataset), augmentation=augmentation,
                      augmentation_reason=augmentation_reason)
    if data.intensity is not None:  # DICOM/NIfTI: how intensities were mapped
        run_config.update(intensity=data.intensity, patient_rule=data.patient_rule)
    if data.groups is not None:  # patients per split (counts, no ids)
        run_config.update(patients=patient_counts(data, source, args.resolution))
    run_config.update(num_train_images=len(images), num_processes=accelerator.num_processes,
                      resolution=images.shape[-1], channels=images.shape[1], class_conditional=class_conditional,
                      prediction_type="edm" if is_edm(noise_scheduler) else noise_scheduler.config.prediction_type,
                      total_batch_size=args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
                      resolved_max_train_steps=max_train_steps, data_md5=data.md5,
                      num_parameters=sum(p.numel() for p in unet.parameters()),
                      num_trainable_parameters=sum(p.numel() for p in unet.parameters() if p.requires_grad),
                      privacy=None if privacy is None else privacy.record())
    return run_config


def save_run(args, output_dir, pipeline, accelerator, global_step, start_step, start_time, checksums, privacy,
             private):
    """The finished run: the pipeline (safetensors), a sample grid, train_summary.json, the card, a push."""
    pipeline.save_pretrained(output_dir)
    if args.num_sample_images > 0:
        sample_grid(pipeline, args.num_sample_images, args.sample_inference_steps, args.seed).save(
            output_dir / "samples.png")
    summary = {"global_step": global_step, "num_processes": accelerator.num_processes,
               "param_checksums": checksums, "ranks_in_sync": len(set(checksums)) == 1,
               "weights_sha256": weights_sha256(pipeline.unet),
               "wall_time_s": time.time() - start_time,
               "steps_per_s": (global_step - start_step) / max(time.time() - start_time, 1e-9)}
    if privacy is not None:  # what the accountant says was spent, for the steps actually taken
        summary["privacy"] = {"epsilon": private.epsilon(), "delta": privacy.delta, "unit": privacy.unit,
                              "steps": global_step, "accountant": privacy.accountant,
                              "accountant_history": [list(h) for h in private.accountant.history]}
    (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_card(output_dir, repo_id=args.hub_model_id)  # reads run_config.json and train_summary.json
    logger.info(f"Saved the pipeline to {output_dir}: {summary}")
    if args.push_to_hub:
        from medgen_diffusers.hub import push_pipeline

        push_pipeline(output_dir, args.hub_model_id, token=args.hub_token)


def main(argv=None, prog=None):
    args = parse_args(argv, prog)
    fresh = not Path(args.output_dir).exists()
    try:
        train(args)
    except Exception:
        remove_unstarted_run(Path(args.output_dir), fresh)  # a refused or failed start leaves no empty folder
        raise


def train(args):
    args.keep_freed_memory = args.keep_freed_memory and keep_freed_memory()  # recorded: applied or not (glibc)
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, output_dir)
    # Before anything is written: an existing run is resumed or explicitly replaced, never silently restarted.
    checkpoint = open_run_folder(args, accelerator, output_dir)
    set_seed(args.seed)  # identical initial weights on every rank

    # Data: the whole split as uint8 tensors in memory, from any source (the data package); augmentation happens on the
    # batch, on the device.
    data, images, labels, source = load_training_data(args, accelerator, output_dir, checkpoint)
    class_conditional = data.labels is not None if args.class_conditional is None else args.class_conditional
    refuse_patient_classes(args.dataset, data, labels, class_conditional)
    num_classes = len(data.class_names) if class_conditional else None
    augmentation, augmentation_reason = resolve_augmentation(args.augment, args.dataset)
    # Latent diffusion (--vae): the UNet learns the train split's latents, encoded once into a cached file.
    vae = latent_scale = latent = None
    train_set = images
    if args.vae is not None:
        vae, train_set, latent_scale, latent = latent_training_data(args, accelerator, data, images, output_dir,
                                                                   checkpoint)
        if args.augment not in ("auto", "none"):
            raise ValueError(f"--augment {args.augment} transforms pixels, but with --vae the UNet learns latents "
                             "encoded once: drop --augment (or train in pixel space).")
        augmentation, augmentation_reason = "none", "latent diffusion (--vae): the latents are encoded once"

    # Model and noise schedule (or both from --init_from's pipeline); the batch, and whether a step fits in memory.
    unet, noise_scheduler = build_model(args, train_set.shape[-1], train_set.shape[1], num_classes)
    trainable_parameters(unet, args.finetune_layers)  # freezes the rest (all by default: nothing frozen)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    memory = batch_and_memory(args, accelerator, unet, train_set)
    indices = torch.arange(len(train_set))  # which images a batch holds (--record_data_order)
    train_dataloader = DataLoader(TensorDataset(train_set, labels, indices), batch_size=args.train_batch_size,
                                  shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(args.seed))
    ema_unet = None
    if args.use_ema:
        ema_unet = EMAModel(unet.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
                            inv_gamma=args.ema_inv_gamma, power=args.ema_power,
                            model_cls=type(unet), model_config=unet.config)
    set_seed(args.seed, device_specific=True)  # from here on: different noise and augmentation on every rank

    # Optimisation.
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay)
    unet, optimizer, train_dataloader = accelerator.prepare(unet, optimizer, train_dataloader)
    privacy = private = None
    if args.dp_epsilon is not None:  # the noise multiplier for the target epsilon, or a refusal with the numbers
        private = make_private(args, data, len(images), unet, optimizer, accelerator)
        privacy, max_train_steps = private.plan, private.plan.steps
    else:
        # Counted on the prepared (sharded) loader: it drops the last partial global batch, which a count made
        # before prepare() would include. A partial accumulation at an epoch's end still makes one update.
        updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        max_train_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_train_steps * accelerator.num_processes)
    lr_scheduler = accelerator.prepare(lr_scheduler)
    if ema_unet is not None:
        ema_unet.to(accelerator.device)
        register_ema_hooks(accelerator, ema_unet, EMA_FOLDER, type(accelerator.unwrap_model(unet)))

    run_config = describe_run(args, data, images, source, accelerator, unet, noise_scheduler, augmentation,
                              augmentation_reason, class_conditional, max_train_steps, privacy)
    run_config["memory_estimate_gib"] = {k: None if v is None else round(v, 2) for k, v in memory.items()}
    if latent is not None:
        run_config.update(latent=latent, vae_sha256=latent["vae_sha256"])
    if accelerator.is_main_process:
        (output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    evaluator = None
    if args.eval_steps and accelerator.is_main_process:
        if privacy is not None:
            logger.warning("--eval_steps with --dp_epsilon: the FID is computed on private images and is not "
                           "covered by epsilon (run_config.json's privacy.not_covered says so).")
        evaluator = TrainingEvaluator(source, images.shape[-1], args.eval_num_samples, args.eval_num_val,
                                      args.eval_inference_steps, args.seed, device=accelerator.device,
                                      conditional=class_conditional)
    if accelerator.is_main_process and args.logger != "none":
        accelerator.init_trackers("train", config={k: v for k, v in run_config.items()
                                                   if isinstance(v, (int, float, str, bool))})

    # Resume: the step, optimizer, LR schedule, EMA, the privacy accountant and every RNG come back exactly.
    global_step = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
        logger.info(f"Resumed from {checkpoint} at step {global_step}")
    metrics = MetricsLog(output_dir / "metrics.jsonl", global_step, accelerator.is_main_process)

    logger.info(f"{len(images)} images, {max_train_steps} steps, {accelerator.num_processes} process(es), "
                f"{run_config['num_parameters'] / 1e6:.2f}M parameters, device {accelerator.device}"
                + ("" if privacy is None else f", DP-SGD: epsilon {privacy.target_epsilon} per {privacy.unit} "
                   f"({privacy.num_units} {privacy.unit}s), "
                   f"sigma {privacy.noise_multiplier:.3f}, q {privacy.sample_rate:.4g}"))
    loss_fn = lambda model, batch_images, batch_labels: diffusion_loss(  # noqa: E731
        model, noise_scheduler, batch_images, batch_labels, args, augmentation, num_classes, latent_scale)
    if privacy is None:
        updates = data_parallel_updates(accelerator, unet, optimizer, lr_scheduler, train_dataloader, loss_fn, args,
                                        global_step, max_train_steps, updates_per_epoch, output_dir)
    else:
        updates = private_updates(private, lr_scheduler, loss_fn, train_set, labels, accelerator.device, global_step,
                                  max_train_steps)
    if accelerator.is_main_process:
        print(start_summary(args, data, images, run_config, accelerator, max_train_steps, global_step, privacy,
                            output_dir), flush=True)
    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    desc="train")
    start_time, start_step = time.time(), global_step
    unet.train()
    for epoch, loss in updates:
        if ema_unet is not None:  # only on real optimizer steps
            ema_unet.step(unet.parameters())
        global_step += 1
        progress.update(1)
        logs = step_logs(loss, lr_scheduler, ema_unet, private, global_step, start_step, start_time, max_train_steps)
        progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", steps_per_s=f"{logs['steps_per_s']:.2f}")
        if accelerator.is_main_process:
            accelerator.log(logs, step=global_step)
        metrics.write({"step": global_step, "epoch": epoch, **logs})

        if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, logger)
        if (args.save_images_steps and global_step % args.save_images_steps == 0 and accelerator.is_main_process) or \
                (evaluator is not None and global_step % args.eval_steps == 0):
            # Forked: building the copy (its init) and sampling must not draw from the training RNG, whose state
            # the checkpoint just saved -- a resume from this step would otherwise see another stream.
            with torch.random.fork_rng(devices=[] if accelerator.device.type != "cuda" else [accelerator.device]):
                pipeline = final_pipeline(accelerator, unet, ema_unet, noise_scheduler, data.class_names, num_classes,
                                          vae)
                snapshot(args, pipeline, evaluator, accelerator, metrics, output_dir, global_step)
    progress.close()

    # The ranks must agree exactly (DDP all-reduces gradients); checked here rather than assumed.
    checksum = sum(p.detach().double().sum() for p in accelerator.unwrap_model(unet).parameters())
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipeline = final_pipeline(accelerator, unet, ema_unet, noise_scheduler, data.class_names, num_classes, vae)
        save_run(args, output_dir, pipeline, accelerator, global_step, start_step, start_time, checksums, privacy,
                 private)
        print(end_summary(output_dir, metrics.path), flush=True)
    accelerator.end_training()


def start_summary(args, data, images, run_config, accelerator, max_train_steps, start_step, privacy, output_dir):
    """What the run is about to do, in a few lines: the data per split, the model's size, device and precision."""
    channels = {1: "grayscale", 3: "RGB"}.get(images.shape[1], f"{images.shape[1]}-channel")
    counts = ""
    if data.labels is not None and run_config["class_conditional"]:
        per_class = torch.bincount(data.labels[: len(images)], minlength=len(data.class_names)).tolist()
        counts = f" in {len(data.class_names)} classes ({min(per_class)}-{max(per_class)} images each)"
    lines = [f"medgen train: {len(images)} training images{counts} from {Path(str(args.dataset)).name}, "
             f"{images.shape[-1]}x{images.shape[-1]} {channels}"]
    if run_config.get("patients"):
        lines.append("  patients per split: " + ", ".join(f"{k} {v}" for k, v in run_config["patients"].items())
                     + f" ({run_config.get('patient_rule')})")
    lines.append(f"  {run_config['num_parameters'] / 1e6:.2f}M parameters, {max_train_steps} steps"
                 + (f" (resuming at {start_step})" if start_step else "") + f" of {run_config['total_batch_size']} "
                 f"images, {accelerator.num_processes} process(es) on {accelerator.device}, precision "
                 f"{'fp32' if args.mixed_precision == 'no' else args.mixed_precision}")
    if privacy is not None:
        lines.append(f"  DP-SGD: epsilon {privacy.target_epsilon} per {privacy.unit} over {privacy.num_units} "
                     f"{privacy.unit}s (delta {privacy.delta:g}, sigma {privacy.noise_multiplier:.3f})")
    if privacy is None and args.lr_warmup_steps > max_train_steps / 3:
        lines.append(f"  warning: --lr_warmup_steps {args.lr_warmup_steps} is more than a third of the "
                     f"{max_train_steps} steps: the learning rate spends most of the run ramping up (lower it, "
                     "e.g. to a tenth of the steps).")
    lines.append(f"  output: {output_dir}")
    return "\n".join(lines)


def end_summary(output_dir, metrics_path) -> str:
    """Where the pipeline is, and the last evaluation of the run (if --eval_steps made one)."""
    lines = [f"medgen train: saved the pipeline to {output_dir} (model_index.json, unet/, scheduler/, README.md)"]
    evaluations = [json.loads(line) for line in Path(metrics_path).read_text().splitlines()
                   if '"eval/fid_' in line] if Path(metrics_path).is_file() else []
    if evaluations:
        last = evaluations[-1]
        lines.append(f"  last evaluation (step {last['step']}): " + ", ".join(
            f"{key.split('/')[-1].replace('_', ' ')} {value:.2f}" for key, value in last.items()
            if key.startswith("eval/fid_")) + " on a few samples; the test FID beside its real-vs-real floor: "
            f"medgen evaluate {output_dir} --split test")
    else:
        lines.append(f"  next: medgen evaluate {output_dir} --split test (FID beside the real-vs-real floor), "
                     f"medgen audit {output_dir}")
    return "\n".join(lines)


def remove_unstarted_run(output_dir: Path, fresh: bool) -> None:
    """After a failure: remove the output folder this run created if nothing of a run is in it yet (no checkpoint,
    pipeline or logged step) -- a refused start must not leave a folder that the next try then refuses."""
    import os

    if not fresh or os.environ.get("RANK", "0") != "0" or not output_dir.is_dir():
        return
    started = any(output_dir.glob("checkpoint-*")) or (output_dir / "model_index.json").exists() or (
        (output_dir / "metrics.jsonl").is_file() and (output_dir / "metrics.jsonl").stat().st_size > 0)
    if not started:
        shutil.rmtree(output_dir, ignore_errors=True)


def make_accelerator(args, output_dir):
    """One process or many (Accelerate's launcher decides); DP-SGD is refused on several."""
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # data_seed: every rank shuffles with the same seed, so each epoch's sharded batches partition the data.
        # Without it, the sampler would take torch.initial_seed() at prepare() -- by then seed + rank on each rank.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # Accelerate forms a multi-process CPU group (gloo, e.g. under torchrun) only when told cpu=True.
        cpu=on_cpu(args),
    )
    if args.dp_epsilon is not None and accelerator.num_processes > 1:
        raise ValueError(f"--dp_epsilon runs in one process (got {accelerator.num_processes}): the per-unit "
                         "clipping and the noise are added once per step on one device. Launch with "
                         "--num_processes 1; a larger --dp_batch_size is split into physical batches.")
    return accelerator


def open_run_folder(args, accelerator, output_dir):
    """The checkpoint to resume from (None: a fresh run); the folder made, stale partial checkpoints removed."""
    checkpoint = prepare_run_folder(output_dir, args.resume_from_checkpoint, args.overwrite_output_dir,
                                    accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.record_data_order:
            (output_dir / "data_order").mkdir(exist_ok=True)
        for stale in output_dir.glob("checkpoint-*.tmp"):  # left by a killed run; never resumed from
            shutil.rmtree(stale)
    return checkpoint


def make_private(args, data, num_images, unet, optimizer, accelerator):
    """DP-SGD (privacy.py): the units, the noise multiplier for --dp_epsilon over the run's steps, Opacus' wrappers,
    and the accountant saved with every checkpoint."""
    overlap = check_private_source(data, args.dataset, args.dp_unit, args.init_from, args.allow_prior_on_private_data)
    vae_overlap = None if args.vae is None else check_private_vae(args.vae, args.dataset, data.md5,
                                                                   args.allow_vae_on_private_data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PrivacyWarning)
        unit, unit_of_image = privacy_units(args.dp_unit, data.groups, num_images, args.dataset)
    for warning in caught:
        logger.warning(str(warning.message))
    num_units = int(unit_of_image.max()) + 1
    steps = args.max_train_steps or math.ceil(args.num_epochs * num_units / args.dp_batch_size)
    plan = plan_privacy(args.dp_epsilon, num_units, args.dp_batch_size, steps, args.dp_max_grad_norm,
                        args.dp_noise_multiplicity, unit, args.dp_delta, args.dp_accountant,
                        finetune_layers=args.finetune_layers, init_from=args.init_from, prior_overlap=overlap,
                        vae=None if args.vae is None else recorded_source(args.vae), vae_overlap=vae_overlap,
                        unit_note=unit_note(args.dataset) if caught else None)
    private = PrivateStep(unet, optimizer, plan, unit_of_image, args.train_batch_size)  # its own secret, not --seed
    private.register_checkpoint_hooks(accelerator)
    return private


def step_logs(loss, lr_scheduler, ema_unet, private, step, start_step, start_time, max_train_steps):
    logs = {"loss": loss, "lr": lr_scheduler.get_last_lr()[0],
            "steps_per_s": (step - start_step) / (time.time() - start_time)}
    if ema_unet is not None:
        logs["ema_decay"] = ema_unet.cur_decay_value
    if private is not None and (step % 50 == 0 or step == max_train_steps):  # the accountant's epsilon so far
        logs["epsilon"] = private.epsilon()
    return {k: v for k, v in logs.items() if v is not None}  # a DP step that drew no unit has no loss


def snapshot(args, pipeline, evaluator, accelerator, metrics, output_dir, step):
    """A sample grid (--save_images_steps) and/or FID/KID against train and val (--eval_steps) of the EMA weights."""
    if args.save_images_steps and step % args.save_images_steps == 0:
        (output_dir / "samples").mkdir(exist_ok=True)
        sample_grid(pipeline, args.num_sample_images, args.sample_inference_steps, args.seed).save(
            output_dir / "samples" / f"step_{step:07d}.png")
    if evaluator is not None and step % args.eval_steps == 0:
        eval_logs = evaluator(pipeline)
        accelerator.log(eval_logs, step=step)
        metrics.write({"step": step, **eval_logs})
        logger.info(f"step {step}: {eval_logs}")


def build_model(args, resolution, channels, num_classes):
    """A fresh UNet of --model_preset/--model_config, or --init_from's UNet; the training noise schedule."""
    if args.init_from is None:
        unet = build_unet(args.model_preset, args.model_config, resolution, channels, num_classes,
                          latent=args.vae is not None)
        if args.formulation == "edm":
            return unet, edm_scheduler()
        schedule = dict(num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule,
                        prediction_type=args.prediction_type)
        shift = (auto_noise_shift(resolution, latent=args.vae is not None) if args.noise_shift == "auto"
                 else args.noise_shift)
        args.resolved_noise_shift = shift  # recorded in run_config.json
        if shift:
            if args.ddpm_beta_schedule != "squaredcos_cap_v2":
                raise ValueError(f"--noise_shift shifts the cosine schedule; --ddpm_beta_schedule is "
                                 f"{args.ddpm_beta_schedule}: use squaredcos_cap_v2 or --noise_shift 0.")
            # Saved with the scheduler (trained_betas): every sampler swapped in with from_config uses it too.
            schedule["trained_betas"] = shifted_cosine_betas(args.ddpm_num_steps, shift)
    else:
        prior = BloodMNISTPipeline.from_pretrained(args.init_from)
        unet, config = prior.unet, prior.unet.config
        want = {"sample_size": resolution, "in_channels": channels, "num_class_embeds": None if num_classes is None
                else num_classes + 1}
        differ = {k: (config.get(k), v) for k, v in want.items() if config.get(k) != v}
        if differ:
            raise ValueError(f"--init_from {args.init_from} does not fit this data: "
                             + ", ".join(f"{k} is {a}, the data needs {b}" for k, (a, b) in differ.items())
                             + ". Start from a pipeline trained at the same size, channels and classes (or "
                               "--no-class_conditional for an unconditional prior).")
        # The prior's own schedule and target: fine-tuning with another would unlearn what it learned.
        if is_edm(prior.scheduler) != (args.formulation == "edm"):
            raise ValueError(f"--init_from {args.init_from} was trained with the "
                             f"{'edm' if is_edm(prior.scheduler) else 'ddpm'} formulation: pass --formulation "
                             f"{'edm' if is_edm(prior.scheduler) else 'ddpm'} to fine-tune it.")
        if is_edm(prior.scheduler):
            return unet, edm_scheduler()
        schedule = {k: prior.scheduler.config[k] for k in ("num_train_timesteps", "beta_schedule", "prediction_type",
                                                           "trained_betas")}
    # Images live in [-1, 1]. Thresholding (with sample_max_value=1) clamps each step's x0 estimate to that range;
    # it is saved in the scheduler config, so DDIM, DPM-Solver++, ... swapped in with `from_config` use it too.
    # Without it, x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a) amplifies eps errors ~150x at t ~ 1000 and fast samplers
    # blow up (DDPM/DDIM hid this only through clip_sample, which DPM-Solver++ does not have).
    # timestep_spacing="trailing": a 20-step sampler starts at t=999 (pure noise, as sampling assumes) instead of
    # DDPM's default "leading" t=950, where the cosine schedule still keeps 8% signal. Measured on the shipped model
    # (benchmarks/results/samplers.json): DDIM 20 val FID 68.9 -> 44.9. Stated explicitly, so that the scheduler in
    # memory and the one saved to disk give every fast solver the same timesteps.
    # Latents are not bounded to [-1, 1] (unit variance): no clamping there, as in Stable Diffusion's schedulers.
    clamp = args.vae is None
    noise_scheduler = DDPMScheduler(**schedule, thresholding=clamp, clip_sample=clamp, sample_max_value=1.0,
                                    timestep_spacing="trailing")
    return unet, noise_scheduler


def patient_counts(train, source, resolution):
    """Patients per split of a source that knows them; the loader refuses a patient in two splits."""
    counts = {"train": len(set(train.groups.tolist()))}
    for split in ("val", "test"):
        try:
            counts[split] = len(set(source.load(split, resolution).groups.tolist()))
        except ValueError:  # no such split
            pass
    return counts


def final_pipeline(accelerator, unet, ema_unet, noise_scheduler, class_names, num_classes, vae=None):
    """A BloodMNISTPipeline holding a copy of the (EMA) weights (and the --vae that decodes its latents); training
    weights stay untouched."""
    model = accelerator.unwrap_model(unet)
    model = type(model).from_config(model.config).to(accelerator.device)
    model.load_state_dict(accelerator.unwrap_model(unet).state_dict())
    if ema_unet is not None:
        ema_unet.copy_to(model.parameters())
    model.eval()
    # DDIM: same betas, prediction type and spacing; an EDM run keeps its EDM solver (its timesteps are c_noise).
    scheduler = (type(noise_scheduler) if is_edm(noise_scheduler) else DDIMScheduler).from_config(noise_scheduler.config)
    return BloodMNISTPipeline(model, scheduler, class_names if num_classes is not None else None,
                              default_num_inference_steps=DEFAULT_SAMPLER_STEPS, vae=vae)


if __name__ == "__main__":
    main()
