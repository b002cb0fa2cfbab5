"""FID/KID curves after the fact: score the EMA weights of every kept checkpoint of a run exactly as
`--eval_steps` would have during training, and append the lines to a metrics.jsonl.

    python benchmarks/eval_curve.py runs/main_v --metrics medgen_diffusers/pretrained/bloodmnist/metrics.jsonl \
        --prediction_type v_prediction --beta_schedule squaredcos_cap_v2 --every 1000

For runs started without --eval_steps (the shipped model's run was: it trained on one CPU core, and in-training
evaluation would have taken that core's time). Lines carry "posthoc": true.
"""

import argparse
import json
import re
from pathlib import Path

from eval_checkpoint import pipeline_from_checkpoint

from medgen_diffusers.evaluation import TrainingEvaluator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--metrics", required=True, help="metrics.jsonl to append the evaluation lines to.")
    parser.add_argument("--prediction_type", required=True)
    parser.add_argument("--beta_schedule", required=True)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=256)
    args = parser.parse_args()

    checkpoints = sorted((int(m.group(1)), p) for p in Path(args.run_dir).glob("checkpoint-*")
                         if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    # every --every steps, and the last one (the shipped weights)
    checkpoints = [(s, p) for s, p in checkpoints if s % args.every == 0 or s == checkpoints[-1][0]]
    evaluator = TrainingEvaluator(num_samples=args.num_samples)
    metrics = Path(args.metrics)
    done = {json.loads(line)["step"] for line in metrics.read_text().splitlines() if "eval/fid_val" in line}
    for step, checkpoint in checkpoints:
        if step in done:
            continue
        pipe = pipeline_from_checkpoint(checkpoint, args.prediction_type, args.beta_schedule)
        logs = evaluator(pipe)
        with metrics.open("a") as f:
            f.write(json.dumps({"step": step, **logs, "posthoc": True}) + "\n")
        print(step, logs, flush=True)


if __name__ == "__main__":
    main()
