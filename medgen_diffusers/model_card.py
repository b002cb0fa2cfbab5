"""Hub model cards for saved pipelines, built with ``huggingface_hub.ModelCard``."""

import json
from pathlib import Path
from typing import Dict, List, Optional

from huggingface_hub import ModelCard, ModelCardData

MEDMNIST_CITATION = """@article{medmnistv2,
  title={MedMNIST v2 -- A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister, Hanspeter and Ni, Bingbing},
  journal={Scientific Data},
  volume={10},
  number={1},
  pages={41},
  year={2023}
}
@article{acevedo2020dataset,
  title={A dataset of microscopic peripheral blood cell images for development of automatic recognition systems},
  author={Acevedo, Andrea and Merino, Anna and Alf{\\'e}rez, Santiago and Molina, {\\'A}ngel and Bold{\\'u}, Laura and Rodellar, Jos{\\'e}},
  journal={Data in Brief},
  volume={30},
  pages={105474},
  year={2020}
}"""

TEMPLATE = """---
{card_data}
---

# {title}

A denoising diffusion model that generates synthetic **{dataset}** images ({resolution}x{resolution}
{color}), trained with [medgen-diffusers](https://github.com/medgen-diffusers/medgen-diffusers).
{latent_section}{description}{classes_section}
## How to use

```python
from medgen_diffusers import BloodMNISTPipeline

pipe = BloodMNISTPipeline.from_pretrained("{repo_or_path}")
images = pipe(batch_size=8).images  # {sampler_note}

{scheduler_swap}
```

Without medgen-diffusers installed, plain diffusers loads it with the pipeline file shipped in this repo:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_or_path}", trust_remote_code=True)
```

## Training

Trained with `{launched_as}` on the real {dataset} train split ({num_train_images} images;
augmentation: {augmentation}).

```json
{training_config}
```

## Samples

{samples_section}

## Metrics

{metrics_section}

## Differential privacy

{privacy_section}

## Utility and privacy

{trust_section}

## Intended use and limitations

For research and data augmentation only: **not for diagnosis** or any clinical decision. Synthetic images
reproduce, and can amplify, the biases of the training data ({bias_note}); they are not new patients.
{citation_section}"""


def trust_section(audit: Optional[Dict], utility: Optional[Dict], reader_study: Optional[Dict] = None) -> str:
    """Markdown from `medgen audit` (audit.json), `medgen utility` (utility.json) and `medgen reader-study score`
    (reader_study.json), each number beside its real baseline."""
    parts = []
    if audit:
        rows = ["| measure | synthetic | real test images (baseline) |", "|---|---|---|"]
        ci = lambda interval: f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""  # noqa: E731
        for space, stats in audit.get("nearest_neighbours", {}).items():
            intervals = stats.get("copy_rate_ci95", {})
            rows.append(f"| copy rate, {space} space{' (95 % CI)' if intervals else ''} | "
                        f"{stats['copy_rate']['synthetic']:.4f}"
                        f"{ci(intervals.get('synthetic'))} | {stats['copy_rate']['test']:.4f}{ci(intervals.get('test'))} |")
            rows.append(f"| nearest/second-nearest < 1/3 (Gu et al.), {space} | "
                        f"{stats['memorized_gu']['synthetic']:.4f} | {stats['memorized_gu']['test']:.4f} |")
            rows.append(f"| median distance to nearest training image, {space} | "
                        f"{stats['median_nn_distance']['synthetic']:.3f} | {stats['median_nn_distance']['test']:.3f} |")
        mia = audit.get("membership_inference")
        if mia:
            rows.append(f"| membership inference (loss attack) ROC AUC{' (95 % CI)' if 'auc_ci95' in mia else ''} | "
                        f"{mia['auc']:.3f}"
                        f"{ci(mia.get('auc_ci95'))} | 0.5 = nothing learned |")
            rows.append(f"| ... TPR at 1 % FPR | {mia['tpr_at_1pct_fpr']:.3f} | 0.01 = chance |")
        parts.append(f"Privacy (`medgen audit`, {audit.get('num_synthetic')} synthetic images vs "
                     f"{audit.get('num_train')} training and {audit.get('num_test')} held-out test images):\n\n"
                     + "\n".join(rows)
                     + "".join(f"\n- **{v.split(':')[0]}**:{v.split(':', 1)[1]}" for v in audit.get("verdict", {}).values()))
    if utility:
        arms, seeds = utility["arms"], len(utility.get("seeds", []))
        rows = ["| arm | ACC | AUC |", "|---|---|---|"]
        spread = lambda arm, m: "" if seeds == 1 else f" ± {arm[m + '_std']:.3f}"  # noqa: E731 (one seed: no spread)
        rows += [f"| {name} | {arm['acc_mean']:.3f}{spread(arm, 'acc')} | {arm['auc_mean']:.3f}{spread(arm, 'auc')} |"
                 for name, arm in arms.items()]
        gains = "; ".join(f"{float(f):.0%} real: {g['acc']:+.3f}" for f, g in utility.get("augmentation_gain", {}).items())
        added = (f"\n\nAdding {utility.get('num_synthetic_added')} synthetic images (the train split's class mix) "
                 f"changes test ACC by {gains}." if gains else "")
        parts.append(f"Utility (`medgen utility`: MedMNIST's ResNet-18 trained on {utility.get('num_train')} real (TRTR) "
                     f"or synthetic (TSTR) images, {utility.get('classifier_steps')} steps per arm, "
                     f"{seeds} seed{'' if seeds == 1 else 's'}, scored on the real **{utility.get('split', 'test')}** "
                     f"split; TSTR/TRTR ACC ratio **{utility['tstr_ratio']['acc']:.3f}**, AUC ratio "
                     f"{utility['tstr_ratio']['auc']:.3f}; "
                     + ("real_f = a stratified fraction f of the real train split, +syn = with synthetic images added; "
                        if any(name.startswith("real_") for name in arms) else "")
                     + f"run on {utility.get('device', 'an unrecorded device')}):\n\n"
                     + "\n".join(rows) + added)
    if reader_study:
        from .reader_study import study_summary

        parts.append(study_summary(reader_study) + " (`medgen reader-study`: half held-out real, half synthetic "
                     "images, blinded; exact Clopper-Pearson interval and binomial test.)")
    return "\n\n".join(parts) or "Not audited yet: run `medgen audit` (and `medgen utility`) on this pipeline."


def trust_summary(audit: Optional[Dict], utility: Optional[Dict]) -> Dict:
    """The headline utility and privacy numbers, each with its real baseline, for evaluation.json (the full results
    stay in audit.json and utility.json beside it)."""
    summary = {}
    if utility:
        summary["utility"] = {"file": "utility.json", "split": utility.get("split", "test"),
                              "tstr_ratio": utility["tstr_ratio"], "augmentation_gain": utility["augmentation_gain"],
                              "trtr_acc": utility["arms"]["trtr"]["acc_mean"],
                              "tstr_acc": utility["arms"]["tstr"]["acc_mean"], "device": utility.get("device")}
    if audit:
        summary["privacy"] = {"file": "audit.json", **{
            f"{space}_{key}": stats[key] for space, stats in audit.get("nearest_neighbours", {}).items()
            for key in ("copy_rate", "memorized_gu")}}
        if audit.get("membership_inference"):
            mia = audit["membership_inference"]
            summary["privacy"]["membership_inference"] = {"auc": mia["auc"], "tpr_at_1pct_fpr": mia["tpr_at_1pct_fpr"]}
    return summary


def metrics_table(evaluation: Dict) -> str:
    """Markdown: the model's numbers, the real-vs-real floor and the seed notebook's, on both protocols."""
    floor = evaluation.get("floor", {})
    # The seed notebook's row describes BloodMNIST-28 only (beside a private model, FID64 0.057 read as "100x better").
    reference = evaluation.get("seed_reference", {}) if evaluation.get("dataset") == "bloodmnist" else {}
    generation = evaluation.get("generation", {})

    def cell(block, protocol, key, digits=3):
        value = block.get(protocol, {}).get(key)
        return "–" if value is None else f"{value:.{digits}f}"

    rows = [("this model", evaluation)]
    if evaluation.get("previous"):  # the model this one replaced, scored the same way (package_default_model.sh)
        rows.append((f"previous version ({evaluation['previous'].get('label', 'replaced model')})", evaluation["previous"]))
    rows.append((f"real-vs-real floor ({floor.get('num_train', '?')} train images)", floor))
    # Precision/recall/density/coverage columns only when the evaluation has them (evaluations before them do not).
    fidelity = [k for k in ("precision", "recall", "density", "coverage") if k in evaluation.get("standard", {})]
    # KID and KID64 both as computed (clean-fid's and torchmetrics' estimators, no rescaling): one convention.
    lines = ["| | FID | KID | FID64 | KID64 |" + "".join(f" {k} |" for k in fidelity),
             "|---|---|---|---|---|" + "---|" * len(fidelity)]
    for name, block in rows:
        kid = block.get("standard", {}).get("kid")
        lines.append(f"| {name} | {cell(block, 'standard', 'fid')} | {'–' if kid is None else f'{kid:.5f}'} | "
                     f"{cell(block, 'seed', 'fid64')} | {cell(block, 'seed', 'kid64')} |"
                     + "".join(f" {cell(block, 'standard', k)} |" for k in fidelity))
    if reference:
        lines.append(f"| seed notebook (real statistics leaked training images) | – | – | {reference['fid64']:.3f} | "
                     f"{reference['kid64']:.3f} +- {reference['kid64_std']:.3f} |" + " – |" * len(fidelity))
    how = (f"{evaluation.get('num_generated')} generated vs {evaluation.get('num_real')} real "
           f"{evaluation.get('dataset')} **{evaluation.get('split')}** images")
    if generation.get("scheduler"):
        spacing = f", {generation['timestep_spacing']} spacing" if generation.get("timestep_spacing") else ""
        how += (f"; sampler {generation['scheduler']} with {generation['steps']} steps{spacing} "
                f"({generation.get('nfe_per_image')} network evaluations per image), seed {generation.get('seed')}")
    return ("\n".join(lines) + f"\n\n{how}. FID/KID: clean-fid's clean protocol (2048-d Inception pool3). "
            + ("Precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al. 2020, k = 5) on the "
               "same 2048-d features, with the `prdc` package: fidelity and diversity apart. " if fidelity else "")
            + "FID64/KID64: the seed notebook's protocol (64-d Inception features after the first max-pool, "
            "torchmetrics-style resize). Computed with `medgen evaluate`.")


BLOOD_BIAS = "one hospital's smears, staining and scanner"
BLOOD_CITATION = MEDMNIST_CITATION  # MedMNIST v2 and Acevedo et al., the blood-cell data BloodMNIST is built from
MEDMNIST_ONLY = MEDMNIST_CITATION.split("@article{acevedo2020dataset")[0].rstrip()


def source_metadata(training_config: Dict, description: Optional[str] = None,
                    citation: Optional[str] = None) -> Dict:
    """What the card says about the data, from the data source: MedMNIST sets carry their own licence (medmnist's
    INFO) and citation; the user's own data gets `license: other`, no dataset tag, and the description/citation
    the user gave (train_unconditional.py --data_description/--data_citation, or `medgen card`)."""
    from medmnist.info import INFO

    from .provenance import is_public_source

    dataset = training_config.get("dataset") or "unrecorded data"  # no run_config.json: say so, claim nothing
    description = description or training_config.get("data_description")
    citation = citation or training_config.get("data_citation")
    if is_public_source(dataset):
        licence = INFO[dataset]["license"].lower().replace(" ", "-")  # "CC BY 4.0" -> "cc-by-4.0", a Hub id
        return {"name": dataset, "license": licence, "datasets": [f"medmnist/{dataset}"],
                "description": description or INFO[dataset]["description"],
                "citation": citation or (BLOOD_CITATION if dataset == "bloodmnist" else MEDMNIST_ONLY),
                "citation_note": f"Data: MedMNIST v2 ({INFO[dataset]['license']})"
                                 + (" and the blood-cell dataset it is built from." if dataset == "bloodmnist" else
                                    f"; cite also the source dataset of {dataset} named in MedMNIST's paper."),
                "bias": BLOOD_BIAS if dataset == "bloodmnist" else "the sites, devices and protocols it came from"}
    return {"name": Path(str(dataset)).name or str(dataset), "license": "other", "datasets": None,
            "description": description, "citation": citation,
            "citation_note": "Data: the model owner's own data (not public).",
            "bias": "the sites, devices, protocols and patients it came from"}


# The card's "swap a scheduler" snippet: any DDPM-family scheduler fits a DDPM-formulation model; an EDM model's
# timesteps are noise levels, so only the EDM schedulers (which share its precondition_*) fit it.
SCHEDULER_SWAP = {
    "ddpm": "# Any diffusers scheduler swaps in from the saved config, e.g.:\nfrom diffusers import DDIMScheduler\n"
            "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)\n"
            "images = pipe(batch_size=8, num_inference_steps=50).images",
    "edm": "# Trained with the EDM formulation (Karras et al. 2022): EDM schedulers swap in from the saved config, e.g.:\n"
           "from diffusers import EDMEulerScheduler\n"
           "pipe.scheduler = EDMEulerScheduler.from_config(pipe.scheduler.config)\n"
           "images = pipe(batch_size=8, num_inference_steps=40).images",
}


def latent_section(latent: Optional[Dict]) -> str:
    """What a latent model is made of: the autoencoder, its latents and how well it reconstructs held-out images."""
    if not latent:
        return ""
    side = latent["latent_resolution"]
    text = (f"\nIt is a **latent** diffusion model: the UNet denoises {latent['latent_channels']}x{side}x{side} "
            f"latents of an `AutoencoderKL` ({latent['downsample']}x downsampling; latents scaled by "
            f"{latent['scaling_factor']:.4g}, {latent['scaling_rule']}), whose decoder (`pipe.vae`) makes the "
            f"images. Autoencoder: `{latent['vae']}` (weights sha256 {latent['vae_sha256'][:12]}).")
    quality = latent.get("reconstruction")
    if quality:
        text += (f" Its reconstruction of {quality['num_images']} held-out {quality['split']} images: PSNR "
                 f"{quality['psnr']:.2f} dB, SSIM {quality['ssim']:.3f} -- detail it loses, the model cannot make.")
    return text + "\n"


def build_model_card(
    training_config: Dict,
    class_names: Optional[List[str]] = None,
    metrics: Optional[Dict] = None,
    repo_or_path: str = "path/to/pipeline",
    samples_image: Optional[str] = None,
    sampler_note: str = "DDPMScheduler, 1000 steps (the training scheduler)",
    audit: Optional[Dict] = None,
    utility: Optional[Dict] = None,
    reader_study: Optional[Dict] = None,
    description: Optional[str] = None,
    citation: Optional[str] = None,
    privacy: Optional[Dict] = None,
) -> ModelCard:
    """A model card whose YAML metadata validates on the Hub and whose body says how the model was made."""
    from .data import resolve_augmentation
    from .privacy import privacy_section
    from .provenance import redact_paths

    training_config = redact_paths(training_config)  # no absolute path of this machine on a card
    source = source_metadata(training_config, description, citation)
    dataset = source["name"]
    edm = training_config.get("formulation") == "edm"
    tags = ["diffusers", "medical-imaging", "edm" if edm else "ddpm", "synthetic-data"]
    if source["datasets"]:
        tags[2:2] = ["medmnist", dataset]
    if class_names:
        tags.append("class-conditional")
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=source["license"],
        datasets=source["datasets"],
        tags=tags,
    )
    augmentation = training_config.get("augmentation") or resolve_augmentation(
        training_config.get("augment"), str(training_config.get("dataset")))[0]
    citation_section = ""
    if source["citation"]:
        citation_section = f"\n## Citation\n\n{source['citation_note']}\n\n```bibtex\n{source['citation']}\n```\n"
    elif source["citation_note"]:
        citation_section = f"\n## Citation\n\n{source['citation_note']}\n"
    classes_section = ""
    if class_names:
        listing = "\n".join(f"| {i} | {name} |" for i, name in enumerate(class_names))
        classes_section = (
            "\nIt is class-conditional (classifier-free guidance); pass `class_labels` as indices or names:\n\n"
            f"| label | class |\n|---|---|\n{listing}\n"
        )
    if metrics:
        metrics_section = metrics_table(metrics)
    else:
        metrics_section = "Not evaluated yet: run `medgen evaluate` on this pipeline."
    scheduler_swap = SCHEDULER_SWAP["edm" if edm else "ddpm"]
    text = TEMPLATE.format(
        scheduler_swap=scheduler_swap,
        card_data=card_data.to_yaml(),
        title=f"{dataset} diffusion model",
        dataset=dataset,
        resolution=training_config.get("resolution", 28),
        color="grayscale" if training_config.get("channels") == 1 else "RGB",
        description=f"\n{source['description']}\n" if source["description"] else "",
        augmentation=augmentation,
        bias_note=source["bias"],
        citation_section=citation_section,
        classes_section=classes_section,
        latent_section=latent_section(training_config.get("latent")),
        repo_or_path=repo_or_path,
        num_train_images=training_config.get("num_train_images", "all"),
        launched_as=training_config.get("launched_as", "train_unconditional.py"),
        training_config=json.dumps(training_config, indent=2, sort_keys=True),
        metrics_section=metrics_section,
        trust_section=trust_section(audit, utility, reader_study),
        privacy_section=privacy_section(privacy),
        samples_section=f"![Generated samples]({samples_image})" if samples_image else "No sample grid saved.",
        sampler_note=sampler_note,
    )
    return ModelCard(text)


def write_card(pipeline_dir, repo_id: Optional[str] = None, description: Optional[str] = None,
               citation: Optional[str] = None) -> Path:
    """(Re)write ``pipeline_dir/README.md`` from its run_config.json, figures, and the results beside it
    (evaluation.json, audit.json, utility.json) whose recorded weights are this pipeline's: a result of other
    weights (an earlier run in the same folder, a result copied from another model) is left off the card."""
    from .pipelines import default_steps
    from .privacy import privacy_guarantee

    folder = Path(pipeline_dir)
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} holds no model_index.json: pass a folder written by save_pretrained.")
    config_path = folder / "run_config.json"
    training_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    model_index = json.loads(index.read_text())
    class_names = model_index.get("class_names")
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    steps = default_steps(model_index)
    sampler_note = f"the saved sampler: {scheduler['_class_name']}, {steps} steps"
    if scheduler.get("timestep_spacing"):
        sampler_note += f", {scheduler['timestep_spacing']} spacing"
    samples = next((name for name in ("classes.png", "samples.png") if (folder / name).is_file()), None)
    results = read_results(folder)
    # The usage snippets name the repo id, else the folder as given -- never an absolute path of this machine.
    where = repo_id or (folder.name if folder.is_absolute() else folder.as_posix())
    card = build_model_card(training_config, class_names, results["evaluation"], repo_or_path=where,
                            samples_image=samples, sampler_note=sampler_note, audit=results["audit"],
                            utility=results["utility"], reader_study=results["reader_study"],
                            description=description, citation=citation,
                            privacy=privacy_guarantee(folder))
    card.save(folder / "README.md")
    return folder / "README.md"


def read_results(pipeline_dir) -> Dict[str, Optional[Dict]]:
    """``evaluation``, ``audit`` and ``utility``: the results `medgen evaluate/audit/utility PIPELINE` saved in the
    folder, each only where its recorded weights are this pipeline's (None otherwise: missing, an earlier run's, or
    copied from another model). The card and the web demo show only these."""
    from .provenance import folder_weights_sha256

    folder = Path(pipeline_dir)
    weights = folder_weights_sha256(folder)
    results = {}
    for name in ("evaluation", "audit", "utility", "reader_study"):
        path = folder / f"{name}.json"
        result = json.loads(path.read_text()) if path.is_file() else {}
        results[name] = result if (result.get("provenance") or {}).get("weights_sha256") == weights else None
    return results
