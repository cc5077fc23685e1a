# bankintent: `make demo` trains and evaluates the default recipe (into runs/demo, replacing an earlier demo);
# `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean browser java

install: $(STAMP)

# torch is installed first with an exact pin: that release is a CPU build available offline here,
# while an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,spark]"
	touch $(STAMP)

demo: install
	$(BIN)/bankintent train --config configs/lpft.yaml --output runs/demo --overwrite
	$(BIN)/bankintent evaluate runs/demo --split test

# The web page's browser test drives Debian's chromium; without it (no root, no apt) that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will be skipped"

# Spark (bankintent.spark, its tests) needs Java 17 or later: Debian's default JRE when java is missing.
java:
	@command -v java >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; } || echo "java not installed: the Spark tests will be skipped"

test: install browser java
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
