#!/usr/bin/env bash
# The diffusers versions setup.cfg admits, tested: a scratch venv on top of the project's .venv (its torch,
# transformers, ...; through a .pth file) with another diffusers installed over it (--no-deps), then the
# pipeline and loading tests there. Usage: benchmarks/check_diffusers_range.sh [VERSION ...] (default: the oldest
# admitted minor). Writes benchmarks/results/diffusers_range.txt. Nothing in .venv is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("${@:-0.35.2}")
out=benchmarks/results/diffusers_range.txt
: > "$out.tmp"
for version in "${versions[@]}"; do
  scratch=$(mktemp -d)
  .venv/bin/python -m venv "$scratch"
  # The scratch interpreter sees the project's packages (and its editable install) after its own: the scratch
  # diffusers comes first.
  site=$(.venv/bin/python -c "import site; print(site.getsitepackages()[0])")
  own=$("$scratch/bin/python" -c "import site; print(site.getsitepackages()[0])")
  echo "import site; site.addsitedir('$site')" > "$own/zz_project.pth"
  "$scratch/bin/pip" install --quiet --no-deps "diffusers==$version"
  got=$("$scratch/bin/python" -c "import diffusers; print(diffusers.__version__)")
  if HF_HUB_OFFLINE=1 "$scratch/bin/python" -m pytest -q -p no:cacheprovider tests/test_pipeline.py \
      tests/test_reliability.py -k "pipeline or load or scheduler or truncated" > "$scratch/log" 2>&1; then
    echo "diffusers $got: $(tail -n 1 "$scratch/log")" | tee -a "$out.tmp"
  else
    echo "diffusers $got: FAILED: $(tail -n 1 "$scratch/log")" | tee -a "$out.tmp"
  fi
  rm -rf "$scratch"
done
{ echo "# $(date -u +%Y-%m-%d) on $(uname -m), $(nproc) CPUs, torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
  cat "$out.tmp"; } > "$out"
rm "$out.tmp"
