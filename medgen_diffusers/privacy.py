"""Differentially private training (DP-SGD, Abadi et al. 2016) for ``train_unconditional.py --dp_epsilon``.

Opacus does the privacy-critical parts: ``GradSampleModule`` computes per-example gradients, ``DPOptimizer`` clips
each unit's gradient to ``max_grad_norm`` and adds Gaussian noise of std ``noise_multiplier * max_grad_norm``, and
its accountant (RDP by default) turns (noise multiplier, sampling rate, steps) into (epsilon, delta). This module
adds what upstream Opacus lacks and DP for diffusion models needs:

* **The privacy unit.** One image, or one patient where the data names patients (DICOM PatientID, NIfTI folders,
  ``--patient_column``): units are Poisson-sampled (each unit joins a step's batch with probability q) and the
  gradients of all rows of one unit are averaged into one per-unit gradient *before* clipping, so a whole patient
  changes the summed gradient by at most ``max_grad_norm`` -- epsilon is then a per-patient guarantee.
* **Noise multiplicity** (DPDM, Dockhorn et al. 2022): each image enters a step K times with independent noise and
  timesteps; the K rows are averaged before clipping, which lowers the variance of the diffusion loss at no
  privacy cost (the unit's sensitivity is still ``max_grad_norm``; q, sigma and steps are unchanged).
* **A logical batch larger than memory**: a step's units are packed, whole, into physical batches of at most
  ``--train_batch_size`` rows; Opacus' skip-step protocol clips and sums each physical batch and adds the noise
  once per logical step (what its ``BatchMemoryManager`` does for its own data loader).
* **A secret source of randomness**: the Poisson draw of step s's units comes from (secret, s) and the Gaussian
  noise from a generator seeded by the secret, 128 bits from ``secrets`` (the OS's CSPRNG) drawn when a run starts.
  Neither depends on ``--seed``, which is published in run_config.json: with noise that follows from a published
  seed, anyone holding the data set minus one unit could retrain both candidates and compare -- epsilon would be
  void. The secret and the noise generator's state live only in each checkpoint folder (``DP_SECRET_FILE``, never
  pushed), so a resume stays exact; the noise is drawn with Opacus' ``secure_mode`` sampling (several Gaussian
  draws per coordinate, against floating-point attacks on the noise).
* **Exact resume**: the accountant's history and the secret state are saved with every checkpoint and checked on
  resume.
"""

import base64
import json
import math
import os
import secrets
import warnings
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .arguments import ACCOUNTANTS, DP_UNITS, FINETUNE_LAYERS

ACCOUNTANT_FILE = "privacy_accountant.json"  # inside each checkpoint: the accountant's history
DP_SECRET_FILE = "dp_secret.json"  # inside each checkpoint only: the secret and the noise generator's state
# Above this noise multiplier the noise std per coordinate (sigma * C / B) swamps what clipped gradients can carry at
# the batch sizes a CPU or one GPU affords; DPDM's MNIST runs used sigma ~ 1-2 at batch 4096. Refused, with numbers.
MAX_NOISE_MULTIPLIER = 10.0
COVERS = ("The training images, through everything derived from the weights (samples, the card's sample grid, "
          "a pushed pipeline): the most any one {unit} could have changed the model.")
NOT_COVERED = ("hyper-parameters or checkpoints chosen by looking at results on the private data",
               "the class names and the number of images per class of the private data: the names are in the "
               "pipeline's configuration and card, and sampling uses the counts when asked to (`--like-split`, "
               "`medgen utility`'s synthetic set; `medgen sample --balanced` uses none)",
               "the number of training images and patients (recorded in run_config.json)",
               "the intensity window, when it was given (--window) or read from each file's own header: a window "
               "computed from the private pixels (percentiles) is refused under DP",
               "the training loss (metrics.jsonl, logs/, loss_curve.png): computed on private images, so it stays "
               "in the run folder and is never pushed",
               "validation FID computed on private images during training (--eval_steps) and `medgen evaluate`/"
               "`medgen audit`/`medgen utility` results, which read the private images directly",
               "the public prior (--init_from) and what it learned from its own training data")
# MedMNIST sets whose images are slices or views of one scan or one person (several images per patient) -- with the
# image as the unit, epsilon per person is k * epsilon for k images of that person (group privacy).
SLICE_SETS = ("organamnist", "organcmnist", "organsmnist", "chestmnist", "pneumoniamnist", "breastmnist",
              "retinamnist", "octmnist")


class PrivacyWarning(UserWarning):
    """The guarantee holds, but for a smaller unit than a reader of the card might assume."""


class PrivacyError(ValueError):
    """Settings that cannot give the asked-for guarantee: says which numbers and what to change."""


@dataclass
class PrivacyPlan:
    """What the guarantee is made of; written to run_config.json, the card and every result's trust block."""
    target_epsilon: float
    delta: float
    delta_rule: str
    noise_multiplier: float
    sample_rate: float
    expected_batch_size: int  # units per step on average (q * number of units)
    steps: int
    max_grad_norm: float
    noise_multiplicity: int
    unit: str  # "image" or "patient"
    num_units: int
    accountant: str
    finetune_layers: str = "all"
    init_from: Optional[str] = None
    prior_overlap: Optional[str] = None  # how --init_from's training data overlaps the private data (override given)
    unit_note: Optional[str] = None  # when the unit is one image although a person may have several
    vae: Optional[str] = None  # latent diffusion: the autoencoder whose latents the UNet learned (--vae)
    vae_overlap: Optional[str] = None  # how the VAE's training data overlaps the private data (override given)
    secure_rng: bool = True  # Opacus' secure_mode noise sampling, from a generator seeded by a secret

    def record(self) -> dict:
        not_covered = list(NOT_COVERED)
        if self.prior_overlap:
            not_covered.append(f"what the prior (--init_from) learned of this private data: {self.prior_overlap}")
        if self.vae:  # the VAE is published with the model (its decoder makes every image) and was not trained here
            not_covered.append("the autoencoder (--vae), trained without DP, and what it learned of its training data"
                               + (f" -- which overlaps this private data: {self.vae_overlap}" if self.vae_overlap
                                  else ""))
        return {**asdict(self), "covers": COVERS.format(unit=self.unit), "not_covered": not_covered,
                "delta_meaning": delta_meaning(self.delta, self.num_units, self.unit)}


def default_delta(num_units: int) -> Tuple[float, str]:
    """The largest power of ten at most min(1e-5, 1 / (10 N)): well below 1/N, the level at which "release one
    unit's data at random" would already satisfy the definition, and never above DP-SGD's customary 1e-5 -- at
    N = 10 units 1/(10 N) alone would let N * delta reach 0.1."""
    delta = 10.0 ** math.floor(math.log10(min(1e-5, 1.0 / (10 * num_units))))
    return delta, f"10^floor(log10(min(1e-5, 1 / (10 N)))) with N = {num_units} units"


def delta_meaning(delta: float, num_units: int, unit: str) -> str:
    """delta in words, for this number of units."""
    return (f"delta = {delta:g} is the probability that the epsilon bound may fail; over the {num_units} {unit}s of "
            f"the training data the chance that it fails for any one of them is at most N x delta = "
            f"{num_units * delta:.2g}")


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """Opacus' accountant's epsilon for ``steps`` Poisson-sampled Gaussian steps."""
    if steps == 0:
        return 0.0
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))


def plan_privacy(target_epsilon: float, num_units: int, batch_units: int, steps: int, max_grad_norm: float,
                 noise_multiplicity: int = 1, unit: str = "image", delta: Optional[float] = None,
                 accountant: str = "rdp", **extra) -> PrivacyPlan:
    """The noise multiplier that reaches ``target_epsilon`` after ``steps`` steps at q = batch_units / num_units,
    found by Opacus' ``get_noise_multiplier``; settings that cannot reach it are refused with the numbers."""
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0:
        raise PrivacyError(f"--dp_epsilon must be > 0; got {target_epsilon}. Typical values: 1 (strong) to 10.")
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"--dp_accountant must be one of {ACCOUNTANTS}; got {accountant!r}.")
    if max_grad_norm is None or not max_grad_norm > 0:
        raise PrivacyError(f"--dp_max_grad_norm must be > 0; got {max_grad_norm}.")
    if noise_multiplicity < 1:
        raise PrivacyError(f"--dp_noise_multiplicity must be >= 1; got {noise_multiplicity}.")
    if num_units < 2 * batch_units:
        raise PrivacyError(f"{num_units} {unit}s are too few for an expected batch of {batch_units} {unit}s (sampling "
                           f"rate {batch_units / num_units:.2f}; DP-SGD's amplification by sampling needs q well "
                           f"below 1): lower --dp_batch_size to at most {max(num_units // 2, 1)}, or train on more "
                           f"{unit}s.")
    delta_rule = "given (--dp_delta)"
    if delta is None:
        delta, delta_rule = default_delta(num_units)
    if not 0 < delta < 1.0 / num_units:
        raise PrivacyError(f"--dp_delta {delta} must be in (0, 1/N) = (0, {1.0 / num_units:.3g}) for N = {num_units} "
                           f"{unit}s (a delta of 1/N permits leaking one {unit} outright); leave it out for the "
                           f"default {default_delta(num_units)[0]:g}.")
    sample_rate = batch_units / num_units
    try:
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                     steps=steps, accountant=accountant, epsilon_tolerance=0.005 * target_epsilon)
    except ValueError as error:  # Opacus: "The privacy budget is too low."
        sigma = float("inf")
        if "budget" not in str(error):
            raise
    if sigma > MAX_NOISE_MULTIPLIER:
        raise PrivacyError(
            f"epsilon = {target_epsilon} (delta = {delta:g}) over {steps} steps at sampling rate {sample_rate:.4g} "
            f"({batch_units} of {num_units} {unit}s per step) needs noise multiplier {sigma:.1f}, above "
            f"{MAX_NOISE_MULTIPLIER:g}: the noise would drown the clipped gradients. Use fewer steps "
            f"(--max_train_steps), a smaller --dp_batch_size with fewer steps, a larger --dp_epsilon, or more "
            f"{unit}s. Nothing was trained.")
    return PrivacyPlan(target_epsilon=target_epsilon, delta=delta, delta_rule=delta_rule, noise_multiplier=sigma,
                       sample_rate=sample_rate, expected_batch_size=batch_units, steps=steps,
                       max_grad_norm=max_grad_norm, noise_multiplicity=noise_multiplicity, unit=unit,
                       num_units=num_units, accountant=accountant, **extra)


def privacy_units(unit: str, groups: Optional[np.ndarray], num_images: int, source: str) -> Tuple[str, np.ndarray]:
    """(unit name, unit index per image). ``auto``: the patient where the data names patients, else the image --
    with a PrivacyWarning, since a person with k images is then protected at k * epsilon only."""
    if unit not in DP_UNITS:
        raise PrivacyError(f"--dp_unit must be one of {DP_UNITS}; got {unit!r}.")
    if unit == "patient" and groups is None:
        raise PrivacyError(f"--dp_unit patient needs to know each image's patient, and {source} does not say: use "
                           "a DICOM folder (PatientID), a NIfTI folder of patient files, or a datasets source with "
                           "--patient_column; or --dp_unit image.")
    if unit == "auto" and groups is None:
        warnings.warn(unit_note(source), PrivacyWarning, stacklevel=2)
    if unit == "image" or groups is None:
        return "image", np.arange(num_images)
    _, unit_of_image = np.unique(np.asarray(groups)[:num_images], return_inverse=True)
    return "patient", unit_of_image


def unit_note(source: str) -> str:
    """Why the unit is one image, for the log and the card."""
    slices = Path(str(source)).name.lower() in SLICE_SETS or str(source).lower() in SLICE_SETS
    return (f"--dp_unit auto: {source} names no patients, so the privacy unit is one image. "
            + (f"{source} holds several images (slices or views) per patient: " if slices else
               "If a person contributes several images (slices of one scan, cells of one smear): ")
            + "epsilon per person is k x epsilon for k images (group privacy). Name the patients (DICOM PatientID, "
              "--patient_column, --patient_regex) for a per-patient guarantee, or pass --dp_unit image to say the "
              "image is the unit you mean.")


def check_private_source(data, dataset: str, dp_unit: str, init_from: Optional[str],
                         allow_prior_on_private_data: bool) -> Optional[str]:
    """Refuse, before training, what would make the guarantee void or narrower than the card could say: a window
    computed from the private pixels, DICOM files without a patient, a prior trained on this same data. Returns how
    the prior overlaps when that was explicitly allowed (recorded on the card), else None."""
    intensity = data.intensity or {}
    if str(intensity.get("from", "")).startswith("train split percentiles"):
        raise PrivacyError(f"{dataset}: its intensity window ({intensity['center']:.4g}, {intensity['width']:.4g}) "
                           "was computed from the percentiles of all private training pixels -- a statistic that "
                           "depends on every patient, published in run_config.json and the card, and not covered "
                           "by epsilon. Under --dp_epsilon give a fixed window: --window CENTER,WIDTH or a preset "
                           "(lung, bone, soft-tissue, ...) chosen without looking at the private data.")
    if str(data.patient_rule or "").startswith("unknown") and dp_unit != "image":
        raise PrivacyError(f"{dataset}: {data.patient_rule}, so a per-patient guarantee is impossible and a "
                           "per-image one would cover a patient with k images only at k x epsilon. Fill in "
                           "PatientID, pass --patient_regex PATTERN (the patient in each file's path), or pass "
                           "--dp_unit image if every image is a different person.")
    if init_from is None:
        return None
    overlap = prior_overlap(init_from, dataset, data.md5)
    if overlap and not allow_prior_on_private_data:
        raise PrivacyError(f"--init_from {init_from} is not a public prior: {overlap}. Epsilon would not cover what "
                           "it learned of these images. Start from a model trained on other (public) data, or pass "
                           "--allow_prior_on_private_data to fine-tune anyway (the card then says that epsilon does "
                           "not cover the prior's view of this data).")
    return overlap


def check_private_vae(vae: str, dataset: str, data_md5: str, allow: bool) -> Optional[str]:
    """Latent DP training: epsilon covers the UNet's steps only. A VAE trained on this private data (without DP)
    has already seen every image, and its decoder is published with the model: refused unless ``allow`` (then
    returned, for the card). A VAE of other, public data is what latent DP needs (None)."""
    overlap = prior_overlap(vae, dataset, data_md5)
    if overlap and not allow:
        raise PrivacyError(f"--vae {vae} is not known to be trained on public data: {overlap}. Its encoder and "
                           "decoder learned from those images without DP, and the decoder is published with the "
                           "model, so epsilon would not cover what it holds. Train the VAE on public data (e.g. "
                           "`medgen train-vae --dataset bloodmnist`), or pass --allow_vae_on_private_data to go on "
                           "(the card then says that epsilon does not cover the VAE).")
    return overlap


def prior_overlap(init_from: str, dataset: str, data_md5: str) -> Optional[str]:
    """How --init_from's recorded training data overlaps the private data: the same checksum or the same source
    (None: its run_config.json names other data). A prior without a readable run_config.json is unknown data."""
    from .data.files import recorded_source

    folder = Path(init_from)
    try:
        if folder.is_dir():
            config = json.loads((folder / "run_config.json").read_text())
        else:
            from huggingface_hub import hf_hub_download

            config = json.loads(Path(hf_hub_download(init_from, "run_config.json")).read_text())
    except Exception:  # noqa: BLE001 - missing file, offline, not a repo: all mean "its data is unknown"
        return "its training data is unknown (no run_config.json to compare)"
    if config.get("data_md5") == data_md5:
        return f"it was trained on data with the same checksum ({data_md5[:12]})"
    if recorded_source(str(config.get("dataset"))) == recorded_source(dataset):
        return f"it was trained on the same source ({Path(str(dataset)).name})"
    return None


def trainable_parameters(unet, layers: str):
    """Freeze all but ``layers`` (DP-LDM tunes attention and conditioning only: fewer parameters, less noise per
    parameter norm); returns the names left trainable."""
    if layers not in FINETUNE_LAYERS:
        raise PrivacyError(f"--finetune_layers must be one of {FINETUNE_LAYERS}; got {layers!r}.")
    conditioning = ("time_embedding.", "class_embedding.")
    chosen = {
        "all": lambda name: True,
        "decoder": lambda name: name.startswith(("up_blocks.", "conv_norm_out.", "conv_out.") + conditioning),
        "attention": lambda name: ".attentions." in name or name.startswith(conditioning),
    }[layers]
    names = []
    for name, param in unet.named_parameters():
        param.requires_grad_(chosen(name))
        if chosen(name):
            names.append(name)
    if layers == "attention" and not any(".attentions." in n for n in names):
        raise PrivacyError("--finetune_layers attention: this UNet has no attention layers (e.g. the tiny preset); "
                           "use --finetune_layers decoder or all.")
    return names


class PrivateStep:
    """One DP-SGD step over Poisson-sampled units: per-unit gradients, clipping, noise (Opacus), accounting."""

    def __init__(self, unet, optimizer, plan: PrivacyPlan, unit_of_image: np.ndarray, max_rows: int,
                 secret: Optional[int] = None):
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.optimizers import DPOptimizer

        self.plan, self.max_rows = plan, max_rows
        # The module is wrapped for its per-sample-gradient hooks; calls go through it.
        self.model = GradSampleModule(unet, batch_first=True, loss_reduction="mean")
        device = next(unet.parameters()).device
        self.noise_generator = torch.Generator(device=device)
        self.set_secret(secrets.randbits(128) if secret is None else secret)
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=plan.noise_multiplier,
                                     max_grad_norm=plan.max_grad_norm, expected_batch_size=plan.expected_batch_size,
                                     loss_reduction="mean", generator=self.noise_generator,
                                     secure_mode=plan.secure_rng)
        self.accountant = create_accountant(mechanism=plan.accountant)
        order = np.argsort(unit_of_image, kind="stable")
        bounds = np.searchsorted(unit_of_image[order], np.arange(plan.num_units + 1))
        self.images_of_unit = [torch.as_tensor(order[bounds[u]:bounds[u + 1]]) for u in range(plan.num_units)]

    def set_secret(self, secret: int) -> None:
        """The run's secret: the Poisson draws follow from (secret, step), the noise generator starts from it."""
        self.secret = secret
        self.noise_generator.manual_seed(int(np.random.SeedSequence(secret).generate_state(1, np.uint64)[0] >> 1))

    def sample_units(self, step: int) -> torch.Tensor:
        """Poisson sampling: each unit independently with probability q; the same units for step s on every resume."""
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.secret, step]).generate_state(1)[0]))
        return torch.nonzero(torch.rand(self.plan.num_units, generator=generator) < self.plan.sample_rate).flatten()

    def physical_batches(self, units: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(image index per row, position of the row's unit within its batch): whole units, K rows per image,
        at most ``max_rows`` rows per batch (a unit larger than that gets a batch of its own)."""
        batches, rows, owners = [], [], []
        for unit in units.tolist():
            images = self.images_of_unit[unit].repeat(self.plan.noise_multiplicity)
            if rows and sum(map(len, rows)) + len(images) > self.max_rows:
                batches.append(self._pack(rows, owners))
                rows, owners = [], []
            rows.append(images)
            owners.append(len(owners))
        if rows:
            batches.append(self._pack(rows, owners))
        return batches

    @staticmethod
    def _pack(rows, owners):
        return torch.cat(rows), torch.cat([torch.full((len(r),), o) for r, o in zip(rows, owners)])

    def per_unit_gradients(self, owner: torch.Tensor) -> None:
        """Replace each parameter's per-row gradients by per-unit means (the unit's images x K draws), so that
        Opacus clips one gradient per unit."""
        num_units = int(owner.max()) + 1
        # (units x rows) averaging matrix: one matmul per parameter (index_add_ is ~10x slower on CPU).
        mean = torch.nn.functional.one_hot(owner, num_units).T.float()
        mean /= mean.sum(dim=1, keepdim=True)
        for p in self.optimizer.params:
            rows = p.grad_sample
            grouped = mean.to(device=rows.device, dtype=rows.dtype) @ rows.reshape(len(rows), -1)
            p.grad_sample = grouped.view(num_units, *rows.shape[1:])

    def step(self, step: int, row_loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
             units: Optional[torch.Tensor] = None) -> Optional[float]:
        """Draw step ``step``'s units, accumulate their clipped gradients batch by batch, add the noise once and
        update. ``row_loss(model, image_indices)`` returns one loss per row. Returns the mean row loss (None for
        an empty draw, which still adds noise and counts as a step, as DP-SGD's analysis assumes).
        ``units``: these units instead of the Poisson draw -- to inspect one step, never for training: the
        guarantee rests on the draw."""
        batches = self.physical_batches(self.sample_units(step) if units is None else units)
        total, count = 0.0, 0
        if not batches:  # no unit drawn: a zero-unit gradient, noised
            for p in self.optimizer.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        for index, (images, owner) in enumerate(batches):
            losses = row_loss(self.model, images)
            losses.mean().backward()
            self.per_unit_gradients(owner)
            total, count = total + losses.detach().sum().item(), count + len(losses)
            if index < len(batches) - 1:  # clip and sum; noise and the update come with the last batch
                self.optimizer.signal_skip_step(do_skip=True)
                self.optimizer.step()
                self.optimizer.zero_grad()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.accountant.step(noise_multiplier=self.plan.noise_multiplier, sample_rate=self.plan.sample_rate)
        return total / count if count else None

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(delta=self.plan.delta)) if self.accountant.history else 0.0

    def register_checkpoint_hooks(self, accelerator):
        """The accountant's history goes into every checkpoint as JSON; on resume it is read back and must match
        the steps the checkpoint holds."""

        def save(models, weights, checkpoint_dir):
            if accelerator.is_main_process:
                with open(os.path.join(checkpoint_dir, ACCOUNTANT_FILE), "w") as f:
                    json.dump({"mechanism": self.accountant.mechanism(),
                               "history": [list(h) for h in self.accountant.history],
                               "plan": asdict(self.plan)}, f, indent=1)
                # The secret, only here: checkpoint folders are never pushed (hub.IGNORE_PATTERNS) or summarised.
                state = base64.b64encode(self.noise_generator.get_state().numpy().tobytes()).decode()
                secret_path = os.path.join(checkpoint_dir, DP_SECRET_FILE)
                with open(os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                    json.dump({"secret": str(self.secret), "noise_generator_state": state}, f)

        def read(checkpoint_dir, name, missing):
            path = os.path.join(checkpoint_dir, name)
            if not os.path.isfile(path):
                raise PrivacyError(f"{checkpoint_dir} has no {name}: {missing}, start a new run "
                                   "(--overwrite_output_dir).")
            return json.loads(Path(path).read_text())

        def load(models, checkpoint_dir):
            saved = read(checkpoint_dir, ACCOUNTANT_FILE, "it is not a checkpoint of a DP run, so its privacy "
                         "spending is unknown. Resume a DP run's checkpoint, or")
            if saved["plan"]["noise_multiplier"] != self.plan.noise_multiplier or \
                    saved["plan"]["sample_rate"] != self.plan.sample_rate:
                raise PrivacyError(f"{checkpoint_dir} was trained with noise multiplier "
                                   f"{saved['plan']['noise_multiplier']:.4f} at q = {saved['plan']['sample_rate']:.4g}; "
                                   f"these settings give {self.plan.noise_multiplier:.4f} at q = "
                                   f"{self.plan.sample_rate:.4g}. Resume with the run's own --dp_* settings and "
                                   "--max_train_steps.")
            self.accountant.load_state_dict({"mechanism": saved["mechanism"],
                                             "history": [tuple(h) for h in saved["history"]]})
            kept = read(checkpoint_dir, DP_SECRET_FILE, "the secret its noise and sampling were drawn from "
                        "(checkpoints of runs before it was kept cannot be resumed exactly), so")
            self.set_secret(int(kept["secret"]))
            state = np.frombuffer(base64.b64decode(kept["noise_generator_state"]), dtype=np.uint8).copy()
            self.noise_generator.set_state(torch.from_numpy(state))

        accelerator.register_save_state_pre_hook(save)
        accelerator.register_load_state_pre_hook(load)


def privacy_guarantee(pipeline_dir) -> Optional[dict]:
    """The DP guarantee of a pipeline folder trained with --dp_epsilon (run_config.json's plan, train_summary.json's
    spent epsilon), or None: no folder, or not trained with DP."""
    if pipeline_dir is None:
        return None
    folder = Path(pipeline_dir)
    try:
        plan = json.loads((folder / "run_config.json").read_text()).get("privacy")
        spent = json.loads((folder / "train_summary.json").read_text()).get("privacy") or {}
    except (OSError, ValueError):
        return None
    if not plan:
        return None
    return {"epsilon": spent.get("epsilon"), "delta": plan["delta"], "unit": plan["unit"],
            "max_grad_norm": plan["max_grad_norm"], "noise_multiplier": plan["noise_multiplier"],
            "sample_rate": plan["sample_rate"], "steps": spent.get("steps"), "accountant": plan["accountant"],
            "noise_multiplicity": plan["noise_multiplicity"], "init_from": plan.get("init_from"),
            "finetune_layers": plan.get("finetune_layers"), "covers": plan["covers"],
            "not_covered": plan["not_covered"], "num_units": plan.get("num_units"),
            "prior_overlap": plan.get("prior_overlap"), "unit_note": plan.get("unit_note"),
            "delta_meaning": plan.get("delta_meaning"), "secure_rng": plan.get("secure_rng", False)}


def privacy_section(guarantee: Optional[dict]) -> str:
    """The model card's "Differential privacy" section."""
    if not guarantee:
        return ("Not trained with differential privacy: the audit below measures leakage on the images it tries, "
                "it does not bound it. `train_unconditional.py --dp_epsilon E` trains with a guarantee.")
    g = guarantee
    if g.get("prior_overlap"):
        prior = (f" Fine-tuned from {Path(str(g['init_from'])).name} (layers: {g['finetune_layers']}), which is NOT a "
                 f"public prior: {g['prior_overlap']} (--allow_prior_on_private_data); ε does not cover what it "
                 "learned of that data.")
    elif g.get("init_from"):
        prior = (f" Fine-tuned from a public prior ({Path(str(g['init_from'])).name}; layers: {g['finetune_layers']}), "
                 "whose own training data is not covered.")
    else:
        prior = ""
    randomness = ("a 128-bit secret from the operating system's random generator, drawn when the run started and "
                  "kept only in its checkpoint folders (never published); not the published --seed"
                  if g.get("secure_rng") else "the run's --seed (a run made before the secret was kept: anyone with "
                  "the data could recompute the noise, so ε is void)")
    rows = "\n".join(f"| {k} | {v} |" for k, v in [
        ("ε (spent, for δ below)", f"**{g['epsilon']:.3f}**" if g.get("epsilon") is not None else "unknown"),
        ("δ", f"{g['delta']:g}"), ("privacy unit", f"one {g['unit']}"),
        ("units in the training data", g.get("num_units") or "not recorded"),
        ("clipping bound C (per unit)", g["max_grad_norm"]), ("noise multiplier σ", f"{g['noise_multiplier']:.4f}"),
        ("sampling rate q (Poisson)", f"{g['sample_rate']:.5g}"), ("steps", g["steps"]),
        ("noise draws per image (K)", g["noise_multiplicity"]), ("accountant", f"Opacus {g['accountant'].upper()}"),
        ("noise and sampling randomness", randomness)])
    not_covered = "\n".join(f"- {item}" for item in g["not_covered"])
    unit = f"\n\n**The unit is one image.** {g['unit_note']}" if g.get("unit_note") else ""
    meaning = f" In words: {g['delta_meaning']}." if g.get("delta_meaning") else ""
    return (f"Trained with DP-SGD (Opacus: per-{g['unit']} clipping, Gaussian noise): ({g['epsilon']:.2f}, "
            f"{g['delta']:g})-differentially private with respect to one {g['unit']}: whether or not any one "
            f"{g['unit']}'s images were in the training data changes the probability of any outcome (these weights, "
            f"any image sampled from them) by at most a factor e^ε, except with probability δ.{meaning}{prior}{unit}"
            f"\n\n| | |\n|---|---|\n{rows}\n\n**What ε covers:** {g['covers']}\n\n**What ε does not cover** "
            f"(each of these may reveal something about the private data):\n\n{not_covered}")
