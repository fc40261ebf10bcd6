# The one place where the torch/torchvision pair is pinned. They must match: a torchvision
# built for another torch fails to import ("operator torchvision::nms does not exist").
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/vae_fmnist.yaml

.PHONY: install data test run clean help

help:
	@echo "make install  - create $(VENV), install $(TORCH_PAIR), lightning-gen[dev], Fashion-MNIST (apt)"
	@echo "make test     - run the test suite (no network, no GPU)"
	@echo "make run      - train the default VAE on Fashion-MNIST (CONFIG=$(CONFIG)), then test it"

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PAIR)
	$(MAKE) data

# Debian ships the real Fashion-MNIST IDX files; the DataModule reads them from
# /usr/share/datasets/fashion-mnist by default.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		echo "Fashion-MNIST already in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Skipping Debian's dataset-fashion-mnist (needs apt-get and root)."; \
		echo "Point data_dir or \$$LIGHTNING_GEN_DATA at a folder with the IDX files, or set download: true when online."; \
	fi

test:
	$(PY) -m pytest -q

run:
	$(PY) -m lightning_gen fit --config $(CONFIG) --test_after_fit true

clean:
	rm -rf runs .pytest_cache
