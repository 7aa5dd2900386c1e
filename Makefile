# The few commands a newcomer needs. Each installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install serve test lint typecheck pytest models evaluate bench-train docker-smoke bench fonts browser screenshot realworld clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision are pinned in pyproject.toml to the builds on this machine's disk.
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the service, training and dev tools

serve: $(STAMP)  ## start the service on the shipped models (http://127.0.0.1:8000)
	$(PY) -m app

test: lint typecheck pytest  ## linters, type checks and the whole test suite

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest

models: $(STAMP)  ## retrain every shipped model from its recipe (training/recipes.py)
	$(PY) -m training shipped

evaluate: $(STAMP)  ## re-evaluate every shipped model on its full test split
	for m in models/*/; do $(PY) -m training evaluate $$m; done

bench-train: $(STAMP)  ## time our training loop against the tutorial's, per shipped model
	$(PY) bench/train_speed.py

docker-smoke: $(STAMP)  ## build the images, run them and compose, POST real images (minutes)
	PY=$(PY) deploy/smoke.sh

bench: $(STAMP)  ## serving benchmark: the service vs a plain baseline, one core each (needs wrk)
	$(PY) bench/run.py

# Handwriting fonts for the realistic upload set (Debian packages, ~1.4 MB); without them the
# font-digit kind is skipped and its test skips cleanly.
FONTS := fonts-dkg-handwriting fonts-bwht fonts-comic-neue fonts-dancingscript \
         fonts-humor-sans fonts-breip fonts-kristi
fonts:  ## install the handwriting fonts (needs root / apt-get)
	apt-get update -qq && apt-get install -y -qq --no-install-recommends $(FONTS)

# Debian's chromium for the browser demo's tests (tests/system/test_demo_browser.py), driven by
# Playwright; without it those tests skip cleanly.
browser:  ## install chromium for the browser tests (needs root / apt-get)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

screenshot: $(STAMP)  ## redraw docs/demo.png: the browser demo after drawing a digit
	$(PY) docs/screenshot.py

realworld: $(STAMP)  ## generate the realistic upload set and report accuracy, none vs auto
	$(PY) bench/realworld.py generate --per-kind 1000 --seed 0
	$(PY) bench/realworld.py evaluate --modes none,auto,dataset

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
