# advlib: `make reproduce` regenerates every table and figure; `make test` runs the unit tests
# and nbval over every notebook in the smoke profile. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# What people edit: the jupytext percent sources beside them (`make notebooks` writes the .ipynb).
NOTEBOOK_SOURCES := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
# Jupyter's runtime/config files stay inside the project, not in $HOME.
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.jupyter_runtime
export JUPYTER_DATA_DIR := $(CURDIR)/.jupyter_runtime/data
export IPYTHONDIR := $(CURDIR)/.jupyter_runtime/ipython
export PYTHONHASHSEED := 0

.PHONY: env test unit nbval reproduce lab bench bench-gpu bench-memory data clean-cache notebooks attacks

env: $(STAMP)

# torch and torchvision first, from PyPI as a pair (the machine's local CPU torch 2.13 breaks
# PyPI's CUDA-built torchvision), then everything else under the same constraints.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[test,notebooks]"
	$(PY) -c "import torch, torchvision; from torchvision.ops import nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

# nbval (the notebooks, two threads) runs beside the unit tests (one thread but for a few
# multi-process tests), so that the two cores CI has are both busy; the smoke data is generated
# first so that the two never generate it at once. Fails if either fails; nbval's log follows.
NBVAL_LOG := $(JUPYTER_RUNTIME_DIR)/nbval.log
test: env
	mkdir -p $(IPYTHONDIR) $(JUPYTER_RUNTIME_DIR)
	$(PY) -m advlib.cli data --profile smoke
	ADVLIB_PROFILE=smoke $(PY) -m pytest --nbval-lax -p no:cacheprovider $(NOTEBOOKS) -q --durations=10 \
		> $(NBVAL_LOG) 2>&1 & nbval=$$!; \
	$(PY) -m pytest tests -q -x --durations=10; unit=$$?; \
	wait $$nbval; nb=$$?; echo "== nbval (exit $$nb)"; cat $(NBVAL_LOG); \
	test $$unit -eq 0 && test $$nb -eq 0

unit: env
	$(PY) -m pytest tests -q

nbval: env
	ADVLIB_PROFILE=smoke $(PY) -m pytest --nbval-lax -p no:cacheprovider $(NOTEBOOKS) -q

# the papers' data: make reproduce PROFILE=voc DATA_ROOT=/path/VOCdevkit [DATA_FORMAT=coco] [DEVICE=cuda]
DATA_ARGS := $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(DATA_FORMAT),--data-format $(DATA_FORMAT))

data: env
	$(PY) -m advlib.cli data --profile $(PROFILE) $(DATA_ARGS)

reproduce: env
	mkdir -p $(IPYTHONDIR) $(JUPYTER_RUNTIME_DIR)
	$(PY) -m advlib.cli data --profile $(PROFILE) $(DATA_ARGS)
	$(PY) -m advlib.cli reproduce --profile $(PROFILE) $(DATA_ARGS) $(if $(DEVICE),--device $(DEVICE)) $(NOTEBOOKS)

# notebooks/NN_*.py (jupytext percent: what people edit and review) -> notebooks/NN_*.ipynb
# (what papermill and nbval run): no outputs, no jupytext metadata, cell ids "NN-ii" so that
# regenerating gives a byte-identical file. tests/test_notebooks.py fails when a pair is out of sync.
define SYNC_NOTEBOOKS
import sys
from pathlib import Path
import jupytext, nbformat
JUPYTEXT_KEYS = {"lines_to_next_cell", "lines_to_end_of_cell_marker", "cell_marker", "region_name", "title"}
for src in map(Path, sys.argv[1:]):
    nb = jupytext.read(src, fmt="py:percent")
    nb.metadata = nbformat.from_dict({"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                      "language_info": {"name": "python"}})
    for i, cell in enumerate(nb.cells):
        cell.id = f"{src.stem[:2]}-{i:02d}"
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k not in JUPYTEXT_KEYS})
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    text = nbformat.writes(nb, version=4) + "\n"
    dst = src.with_suffix(".ipynb")
    if dst.exists() and dst.read_text(encoding="utf-8") == text:
        print("unchanged", dst)
    else:
        dst.write_text(text, encoding="utf-8")
        print("wrote", dst)
endef
export SYNC_NOTEBOOKS

notebooks: env
	$(PY) -c "$$SYNC_NOTEBOOKS" $(NOTEBOOK_SOURCES)

attacks: env
	$(PY) -m advlib.cli attack-suite --profile $(PROFILE)

lab: env
	$(VENV)/bin/jupyter lab notebooks/

bench: env
	$(PY) benchmarks/run.py --profile $(PROFILE)

# SSD300 (VGG16, ResNet-50) at batch 32 on the GPU: training (fp32, AMP), PGD step, evaluation img/s
bench-gpu: env
	$(PY) benchmarks/gpu.py $(if $(DEVICE),--device $(DEVICE))

# peak memory of streamed evaluation + PGD on generated 300 px test splits of 500 and 5,000 images
bench-memory: env
	$(PY) benchmarks/memory.py --sizes 500 5000 --steps $(or $(STEPS),10)

clean-cache:
	rm -rf data/cache
