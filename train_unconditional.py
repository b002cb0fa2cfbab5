#!/usr/bin/env python
"""Train a (class-conditional) DDPM on a MedMNIST dataset or your own data and save it as a BloodMNISTPipeline.

    accelerate launch train_unconditional.py --output_dir runs/blood --max_train_steps 2000

The script lives in the package, so an installed wheel has it too (`medgen train ...`, `accelerate launch -m
medgen_diffusers.train ...`): read it top to bottom in medgen_diffusers/train.py.
"""

from medgen_diffusers.train import main, parse_args  # noqa: F401 (parse_args: for tests and tools)

if __name__ == "__main__":
    main()
