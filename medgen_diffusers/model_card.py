"""Hub model cards for saved pipelines, built with ``huggingface_hub.ModelCard``."""

import json
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

A denoising diffusion model that generates synthetic **{dataset}** images ({resolution}x{resolution} RGB),
trained with [medgen-diffusers](https://github.com/medgen-diffusers/medgen-diffusers).
{classes_section}
## How to use

```python
from medgen_diffusers import BloodMNISTPipeline

pipe = BloodMNISTPipeline.from_pretrained("{repo_or_path}")
images = pipe(batch_size=8, num_inference_steps=1000).images
```

Without medgen-diffusers installed, plain diffusers loads it with the pipeline file shipped in this repo:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{repo_or_path}", trust_remote_code=True)
```

## Training

Trained with `train_unconditional.py` on the real {dataset} train split ({num_train_images} images).

```json
{training_config}
```

## Metrics

{metrics_section}

## Intended use and limitations

For research and data augmentation only: **not for diagnosis** or any clinical decision. Synthetic images
reproduce, and can amplify, the biases of the training data (one hospital's smears, staining and scanner);
they are not new patients.

## Citation

Data: MedMNIST v2 (CC BY 4.0) and the blood-cell dataset it is built from.

```bibtex
{citation}
```
"""


def build_model_card(
    training_config: Dict,
    class_names: Optional[List[str]] = None,
    metrics: Optional[Dict] = None,
    repo_or_path: str = "path/to/pipeline",
) -> ModelCard:
    """A model card whose YAML metadata validates on the Hub and whose body says how the model was made."""
    dataset = training_config.get("dataset", "bloodmnist")
    tags = ["diffusers", "medical-imaging", "medmnist", dataset, "ddpm", "synthetic-data"]
    if class_names:
        tags.append("class-conditional")
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license="cc-by-4.0",
        datasets=[f"medmnist/{dataset}"],
        tags=tags,
    )
    classes_section = ""
    if class_names:
        listing = "\n".join(f"| {i} | {name} |" for i, name in enumerate(class_names))
        classes_section = (
            "\nIt is class-conditional (classifier-free guidance); pass `class_labels` as indices or names:\n\n"
            f"| label | class |\n|---|---|\n{listing}\n"
        )
    if metrics:
        metrics_section = "```json\n" + json.dumps(metrics, indent=2) + "\n```"
    else:
        metrics_section = "Not evaluated yet: run `medgen evaluate` on this pipeline."
    text = TEMPLATE.format(
        card_data=card_data.to_yaml(),
        title=f"{dataset} diffusion model",
        dataset=dataset,
        resolution=training_config.get("resolution", 28),
        classes_section=classes_section,
        repo_or_path=repo_or_path,
        num_train_images=training_config.get("num_train_images", "all"),
        training_config=json.dumps(training_config, indent=2, sort_keys=True),
        metrics_section=metrics_section,
        citation=MEDMNIST_CITATION,
    )
    return ModelCard(text)
