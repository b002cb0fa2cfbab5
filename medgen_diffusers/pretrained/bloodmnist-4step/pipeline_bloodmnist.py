# Copyright 2026 The medgen-diffusers authors. Licensed under the Apache License, Version 2.0.
"""BloodMNISTPipeline: a single-file diffusers pipeline for medical images, in pixel space or -- with its optional
``vae`` (an ``AutoencoderKL``) -- in that autoencoder's latent space, as latent diffusion does for 128-512 px.

This file imports only ``torch`` and ``diffusers`` on purpose: ``save_pretrained`` copies it next to the
weights, so a saved pipeline loads with plain diffusers, without medgen-diffusers installed::

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("path/or/repo-id", trust_remote_code=True)
"""

import inspect
import json
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

PIPELINE_FILE = "pipeline_bloodmnist.py"
PIPELINE_CLASS = "BloodMNISTPipeline"
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
ClassLabel = Union[int, str]
logger = logging.get_logger(__name__)
# A DDPM scheduler's own step count: what `pipe()` runs when neither the call nor the saved config says.
DDPM_STEPS = 1000


def default_steps(config, steps: Optional[int] = None) -> int:
    """The one rule for "how many steps": ``steps`` when given, else the saved ``default_num_inference_steps`` of a
    pipeline config (``pipe.config`` or model_index.json as a dict), else 1000 (DDPM)."""
    return steps or config.get("default_num_inference_steps") or DDPM_STEPS


def class_index(class_names: Sequence[str], label: ClassLabel) -> int:
    """The one class-name matcher: an index, a name, or an unambiguous case-insensitive prefix of one."""
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"Class labels must be ints or class names; got {label!r} ({type(label).__name__}).")
    if isinstance(label, int):
        if not 0 <= label < len(class_names):
            raise ValueError(f"Class label {label} is out of range: valid labels are 0..{len(class_names) - 1}.")
        return label
    if label in class_names:
        return list(class_names).index(label)
    matches = [i for i, name in enumerate(class_names) if name.lower().startswith(label.lower())]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"Unknown class name {label!r}{' (ambiguous prefix)' if matches else ''}. Valid names: "
                     f"{', '.join(class_names)}.")


class BloodMNISTPipeline(DiffusionPipeline):
    r"""
    Pipeline for (class-conditional) image generation with a [`UNet2DModel`] trained on a MedMNIST dataset.

    Args:
        unet ([`UNet2DModel`]):
            The denoiser. It is class-conditional when `unet.config.num_class_embeds` is set; then the last
            embedding (index `len(class_names)`) is the "null" class used for classifier-free guidance.
        scheduler ([`SchedulerMixin`]):
            Any diffusers scheduler, e.g. [`DDPMScheduler`] (default), [`DDIMScheduler`] or
            [`DPMSolverMultistepScheduler`]; swap with `X.from_config(pipe.scheduler.config)`.
        class_names (`List[str]`, *optional*):
            Names of the classes, in label order (saved in `model_index.json`, from which `from_pretrained`
            restores them). Default for a class-conditional `unet`: `class_0` ... `class_{K-1}` (a UNet's class
            count says nothing about what its classes are).
        default_num_inference_steps (`int`, *optional*):
            Steps used when a call does not pass `num_inference_steps` (saved in `model_index.json`). Unset: 1000,
            which suits [`DDPMScheduler`]; a pipeline saved with a fast solver stores its own (e.g. 20).
        vae ([`AutoencoderKL`], *optional*):
            Latent diffusion: the UNet denoises this autoencoder's latents (scaled by `vae.config.scaling_factor`,
            measured on the training latents) and the VAE decodes the result to images of
            `unet.config.sample_size * pipe.vae_scale_factor` pixels. `None` (pixel pipelines): the UNet's output
            is the image. Large batches decode in slices with `pipe.vae.enable_slicing()`.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, class_names: Optional[List[str]] = None,
                 default_num_inference_steps: Optional[int] = None, vae: Optional[AutoencoderKL] = None):
        super().__init__()
        num_class_embeds = unet.config.num_class_embeds
        if num_class_embeds is not None:
            if class_names is None:  # built from the registered modules alone: no names were saved to go by
                class_names = [f"class_{i}" for i in range(num_class_embeds - 1)]
            if len(class_names) + 1 != num_class_embeds:
                raise ValueError(
                    f"The UNet has {num_class_embeds} class embeddings, so it needs {num_class_embeds - 1} "
                    f"class_names (the last embedding is the null class for guidance); got {class_names!r}."
                )
        elif class_names is not None and len(class_names) == 0:
            raise ValueError("class_names must not be empty; pass None for an unconditional model.")
        if vae is not None and vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(f"The VAE makes {vae.config.latent_channels}-channel latents but the UNet denoises "
                             f"{unet.config.in_channels} channels: pair a UNet trained on this VAE's latents.")
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(class_names=list(class_names) if class_names is not None else None,
                                default_num_inference_steps=default_num_inference_steps)

    # diffusers' call-state properties: a `callback_on_step_end` may read them, and may change guidance mid-run by
    # setting `pipe._guidance_scale` (e.g. to 0.0: plain conditional steps from then on).
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.is_conditional and self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def is_conditional(self) -> bool:
        return self.unet.config.num_class_embeds is not None

    @property
    def vae_scale_factor(self) -> int:
        """How many pixels one latent is across (2 ** the VAE's downsampling steps); 1 without a VAE."""
        vae = getattr(self, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1

    @property
    def image_size(self) -> int:
        """The side of the images this pipeline makes, in pixels."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def image_channels(self) -> int:
        """Channels of the images this pipeline makes (1: grayscale, 3: RGB)."""
        vae = getattr(self, "vae", None)
        return vae.config.out_channels if vae is not None else self.unet.config.in_channels

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names) if self.config.class_names else 0

    def label_to_id(self, label: ClassLabel) -> int:
        """Map a class index or class name (exact, or an unambiguous case-insensitive prefix) to its index."""
        return class_index(self.config.class_names, label)

    def _class_ids(self, class_labels, batch_size: int) -> Optional[torch.LongTensor]:
        if not self.is_conditional:
            if class_labels is not None:
                raise ValueError(
                    "This UNet is unconditional (unet.config.num_class_embeds is None): remove class_labels."
                )
            return None
        if class_labels is None:  # cycle through the classes: a balanced batch
            return torch.arange(batch_size) % self.num_classes
        if not isinstance(class_labels, (list, tuple)):
            class_labels = [class_labels] * batch_size
        # A batch of one-label lists ([[3], [7]]), as diffusers' batched inputs and DiTPipeline allow.
        class_labels = [label[0] if isinstance(label, (list, tuple)) and len(label) == 1 else label
                        for label in class_labels]
        ids = [self.label_to_id(label) for label in class_labels]
        if len(ids) != batch_size:
            raise ValueError(f"Got {len(ids)} class_labels for batch_size={batch_size}; pass one label per image.")
        return torch.tensor(ids, dtype=torch.long)

    def _predict(self, latents, t, class_ids):
        if class_ids is None:
            return self.unet(latents, t).sample
        if not self.do_classifier_free_guidance:
            return self.unet(latents, t, class_labels=class_ids).sample
        # Classifier-free guidance: one batched pass over (conditional, null-class) inputs.
        null_ids = torch.full_like(class_ids, self.num_classes)
        both = self.unet(torch.cat([latents, latents]), t, class_labels=torch.cat([class_ids, null_ids])).sample
        cond, uncond = both.chunk(2)
        return uncond + self._guidance_scale * (cond - uncond)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: Optional[Union[ClassLabel, Sequence[ClassLabel], torch.Tensor]] = None,
        guidance_scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["BloodMNISTPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Union[ImagePipelineOutput, tuple]:
        r"""
        Generate images.

        Args:
            batch_size (`int`, defaults to 1): number of images. A list of `class_labels` sets it instead when
                `batch_size` is left at 1.
            class_labels (`int`, `str`, list of them, or `torch.Tensor`, *optional*): class index or class name per
                image (one label is repeated for the batch). Conditional models only; `None` cycles through the
                classes, giving a balanced batch.
            guidance_scale (`float`, *optional*): classifier-free guidance weight `w` in
                `eps = eps_null + w * (eps_class - eps_null)`, used when `w > 1` (diffusers' convention); 1.0 (the
                default) and below are plain conditional sampling. Values other than 1.0 need a conditional model.
            num_inference_steps (`int`, *optional*): denoising steps; defaults to the pipeline's
                `default_num_inference_steps`, else 1000 (right for [`DDPMScheduler`]; use ~20 with
                [`DPMSolverMultistepScheduler`] or ~50 with [`DDIMScheduler`]).
            generator (`torch.Generator`, *optional*): makes generation deterministic.
            latents (`torch.Tensor`, *optional*): the starting noise x_T, shape (batch, C, H, W) of the UNet's
                input; drawn from `generator` when omitted.
            output_type (`str`, defaults to `"pil"`): `"pil"` (list of `PIL.Image`), `"np"` (float array
                (B, H, W, C) in [0, 1]), `"pt"` (float tensor (B, C, H, W) in [0, 1]) or `"latent"` (the final
                x_0 as the UNet produced it, not clamped: the image in the model's [-1, 1] range, or with a `vae`
                its scaled latents, (B, latent_channels, H / f, W / f), which `pipe.vae.decode(x / scaling_factor)`
                turns into images).
            return_dict (`bool`, defaults to `True`): return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback(pipe, step_index, timestep,
                callback_kwargs)` after every step, with `callback_kwargs["latents"]` holding x_t. This is how to
                collect intermediate frames (x_T ... x_0) for a progressive-generation figure; see
                `medgen_diffusers.figures.progressive_frames`.
            callback_on_step_end_tensor_inputs (`List[str]`): tensors passed to the callback; only `"latents"`.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the generated images.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        if num_inference_steps is None:
            num_inference_steps = default_steps(self.config)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1; got {num_inference_steps!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown output_type {output_type!r}: use one of {', '.join(OUTPUT_TYPES)}.")
        unknown_inputs = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown_inputs:
            raise ValueError(f"callback_on_step_end_tensor_inputs may only hold {self._callback_tensor_inputs}.")
        guidance_scale = 1.0 if guidance_scale is None else float(guidance_scale)
        if guidance_scale != 1.0 and not self.is_conditional:
            raise ValueError(
                "guidance_scale needs a class-conditional UNet; this one is unconditional: remove guidance_scale."
            )
        self._guidance_scale = guidance_scale
        if "thresholding" not in inspect.signature(type(self.scheduler).__init__).parameters:
            logger.warning(f"{type(self.scheduler).__name__} does not clamp its x0 estimate (no `thresholding`): "
                           "fast samplers can drift out of the image range. DDPM, DDIM, DPM-Solver++ and UniPC can.")
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.flatten().tolist()
        if isinstance(class_labels, (list, tuple)) and batch_size == 1 and len(class_labels) > 0:
            batch_size = len(class_labels)
        elif latents is not None and batch_size == 1 and class_labels is None:
            batch_size = latents.shape[0]  # the batch is given by the starting noise

        class_ids = self._class_ids(class_labels, batch_size)
        # _execution_device, not device: with enable_model_cpu_offload() the UNet waits on the CPU between calls.
        device = self._execution_device
        shape = (batch_size, self.unet.config.in_channels, *(2 * [self.unet.config.sample_size]))
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}; got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        if class_ids is not None:
            class_ids = class_ids.to(device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        # Stochastic schedulers (DDPM, DDIM with eta > 0) take the generator; deterministic ones refuse it.
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for step_index, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self._predict(model_input, t, class_ids)
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                callback_outputs = callback_on_step_end(self, step_index, t, {"latents": latents}) or {}
                latents = callback_outputs.pop("latents", latents)

        if output_type == "latent":
            images = latents
        else:
            images = self.decode_latents(latents) if getattr(self, "vae", None) is not None else latents
            images = (images.float() / 2 + 0.5).clamp(0, 1)
        if output_type in ("np", "pil"):
            images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped), through the VAE's decoder."""
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs):
        """Save as diffusers does (safetensors), plus this source file so that the folder loads anywhere with
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`."""
        if kwargs.get("push_to_hub"):
            # diffusers uploads inside its save_pretrained, before this file is copied and `_class_name` rewritten:
            # the pushed repo would not load. Save, then push the folder in one commit.
            raise ValueError("save_pretrained(push_to_hub=True) would publish a pipeline that cannot be loaded: call "
                             "save_pretrained(folder), then `medgen push folder REPO_ID` (or upload the folder).")
        kwargs["safe_serialization"] = True
        super().save_pretrained(save_directory, **kwargs)
        shutil.copyfile(os.path.abspath(__file__), os.path.join(save_directory, PIPELINE_FILE))
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path, encoding="utf-8") as f:
            model_index = json.load(f)
        model_index["_class_name"] = [PIPELINE_FILE[: -len(".py")], PIPELINE_CLASS]
        with open(index_path, "w", encoding="utf-8") as f:
            json.dump(model_index, f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Optional[Union[str, os.PathLike]] = None, **kwargs):
        """As `DiffusionPipeline.from_pretrained`; with no path, the BloodMNIST model shipped with medgen-diffusers."""
        if pretrained_model_name_or_path is None:
            import importlib

            try:  # by name: diffusers' remote-code check would otherwise demand medgen_diffusers where this file runs
                pretrained_model_name_or_path = importlib.import_module("medgen_diffusers").DEFAULT_MODEL
            except ImportError:
                raise ValueError("No default model outside medgen-diffusers: pass a folder or Hub repo id.") from None
        check_pipeline_path(pretrained_model_name_or_path)
        if not os.path.isdir(pretrained_model_name_or_path):
            # A Hub repo id: fetch (or find in the cache) the whole snapshot with huggingface_hub's public API, then
            # load the local folder -- diffusers' own download step would see the remote-code entry below.
            from huggingface_hub import snapshot_download

            hub_options = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "local_files_only",
                                                       "force_download", "proxies") if k in kwargs}
            pretrained_model_name_or_path = snapshot_download(str(pretrained_model_name_or_path), **hub_options)
        _check_saved_files(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """`ConfigMixin.load_config` (public API), reading model_index.json's remote-code entry as this class.

        model_index.json names this file as remote code, so that plain `DiffusionPipeline` can load it with
        `trust_remote_code=True`. This class *is* that code: loading through it runs no downloaded code."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if config.get("_class_name") == [PIPELINE_FILE[: -len(".py")], PIPELINE_CLASS]:
            config["_class_name"] = cls.__name__
        return loaded


def check_pipeline_path(path: Union[str, os.PathLike]) -> None:
    """One clear error for a path that cannot be a saved pipeline, before it is taken for a Hub repo id ("namespace/
    name": at most one slash, no leading "/", "." or "~", and no local folder by the namespace's name)."""
    path = str(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            unfinished = any(name.startswith("checkpoint-") for name in os.listdir(path))
            raise FileNotFoundError(
                f"{path} holds no saved pipeline (no model_index.json). "
                + ("It holds checkpoints of a run that has not finished: resume it with --resume_from_checkpoint "
                   "latest, or pass a finished run's folder." if unfinished else
                   "Pass the folder that `medgen train` or save_pretrained wrote (it holds model_index.json)."))
        return
    parts = path.replace("\\", "/").split("/")
    if (os.path.isabs(path) or path.startswith((".", "~")) or len(parts) > 2 or "" in parts
            or os.path.isdir(parts[0])):
        raise FileNotFoundError(f"No folder {path} (from {os.getcwd()}): pass a saved pipeline's folder (it holds "
                                "model_index.json) or a Hugging Face Hub repo id such as 'namespace/name'.")


def _check_saved_files(folder: Union[str, os.PathLike]) -> None:
    """One clear error naming the broken file of a saved pipeline (truncated or corrupt JSON or safetensors), before
    diffusers reports it in its own terms. Checks only what loading reads -- model_index.json and each component's
    config and weights -- not checkpoints or results beside them. Reads only; never changes the folder."""
    from safetensors import safe_open

    index = os.path.join(folder, "model_index.json")
    paths = [index]
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                components = [k for k, v in json.load(f).items() if isinstance(v, list) and not k.startswith("_")]
        except Exception:  # noqa: BLE001 - reported below, with the file's name
            components = []
        for name in components:
            sub = os.path.join(folder, name)
            if os.path.isdir(sub):
                paths += [os.path.join(sub, f) for f in sorted(os.listdir(sub)) if f.endswith((".json", ".safetensors"))]
    for path in paths:
        if not os.path.isfile(path):
            continue  # diffusers names a missing file itself
        try:
            if path.endswith(".json"):
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            else:
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():  # reading every tensor finds a truncated data section too
                        f.get_slice(key)[:]
        except Exception as error:  # noqa: BLE001 - json, OS and safetensors errors all mean the same here
            raise ValueError(f"{path} is corrupt or truncated ({type(error).__name__}: {error}). Restore it from "
                             "the original (re-download or re-save the pipeline); nothing was changed.") from None
