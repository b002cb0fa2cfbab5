#!/usr/bin/env python
"""Consistency-distil a trained pipeline into a few-step student (LCM); the code is medgen_diffusers/distill.py.

    accelerate launch distill_lcm.py --output_dir runs/lcm --teacher runs/blood --max_train_steps 500

Installed: `medgen distill ...` or `accelerate launch -m medgen_diffusers.distill ...`.
"""

from medgen_diffusers.distill import (boundary_scalings, lcm_pipeline, main, parse_args, phase_start,  # noqa: F401
                                      run_as_script, student_pipeline)

if __name__ == "__main__":
    run_as_script()
