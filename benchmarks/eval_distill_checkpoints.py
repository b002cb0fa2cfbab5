"""Score every checkpoint of a distillation run (distill_lcm.py) at 1, 2 and 4 network evaluations on val, to choose
the checkpoint and learning rate (val only; the test split is for the chosen pipeline).

    python benchmarks/eval_distill_checkpoints.py ../bg-runs/lcm --num-samples 256 --out benchmarks/results/few_step/lcm_val.json

The student's weights are the checkpoint's `model.safetensors` (loaded by name, strictly); the scheduler is the one
distill_lcm.py saves (LCMScheduler on the teacher's schedule; with --phases K the teacher's DDIMScheduler). The teacher's own 4- and 20-step FIDs are scored on the
same images' labels and seeds for reference.
"""

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distill_lcm import student_pipeline  # noqa: E402
from medgen_diffusers import DEFAULT_MODEL, BloodMNISTPipeline  # noqa: E402
from medgen_diffusers.data import class_counts  # noqa: E402
from medgen_diffusers.evaluation import RealFeatures, fid  # noqa: E402
from medgen_diffusers.provenance import write_json_atomic as write_json  # noqa: E402
from medgen_diffusers.generation import generate_images, labels_like_split  # noqa: E402
from medgen_diffusers.inception import InceptionFeatures  # noqa: E402
from medgen_diffusers.checkpointing import list_checkpoints  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--teacher", default=DEFAULT_MODEL)
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    teacher = BloodMNISTPipeline.from_pretrained(args.teacher)
    config = json.loads((Path(args.run_dir) / "distill_config.json").read_text())
    extractor = InceptionFeatures()
    real = RealFeatures(extractor).get("val", "standard")[0]
    labels = labels_like_split(class_counts("bloodmnist", "val"), args.num_samples)

    def score(pipe, steps):
        return fid(real, extractor.standard(generate_images(pipe, args.num_samples, labels, steps, None, seed=0,
                                                            progress=False)))

    rows = [{"model": "teacher", "nfe": steps, "fid": score(teacher, steps)} for steps in (4, 20)]
    for checkpoint in list_checkpoints(args.run_dir):
        pipe = student_pipeline(teacher, load_file(checkpoint / "model.safetensors"), config)
        for steps in (int(s) for s in args.steps.split(",")):
            rows.append({"model": checkpoint.name, "nfe": steps, "fid": score(pipe, steps)})
            print(json.dumps(rows[-1]), flush=True)
    write_json({"run": Path(args.run_dir).name, "learning_rate": config["learning_rate"],
                "lr_scheduler": config.get("lr_scheduler", "constant_with_warmup"),
                "num_ddim_timesteps": config["num_ddim_timesteps"], "phases": config.get("phases", 0),
                "train_batch_size": config["train_batch_size"], "split": "val", "num_samples": args.num_samples,
                "rows": rows}, args.out)


if __name__ == "__main__":
    main()
