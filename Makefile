# The two commands of the README: `make demo` (the main CPU job) and `make test`.
# Each creates its venvs on first use and installs what they need (CPU torch, pinned in
# requirements-cpu.txt). The two tested stacks (megatron_patch/version_guard.py):
#   .venv     megatron-core 0.16.1 on Python 3.10-3.11 (PYTHON); the demo's
#   .venv312  megatron-core 0.19.2 on Python >= 3.12 (PYTHON312: python3.12, else pyenv's 3.12)
# `make test` tests every stack whose Python this machine has (scripts/test_stacks.sh) and says
# which it skipped and why; `make test ARGS=...` passes ARGS to each stack's pytest.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
ifndef PYTHON312
PYTHON312 := $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { command -v "$$p"; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV312 := .venv312
STAMP312 := $(VENV312)/.installed
# "yes" when the stack's Python is there and the right version.
HAVE_311 := $(shell $(PYTHON) -c 'import sys; assert (3, 10) <= sys.version_info < (3, 12)' 2>/dev/null && echo yes)
HAVE_312 := $(if $(PYTHON312),$(shell $(PYTHON312) -c 'import sys; assert sys.version_info >= (3, 12)' \
	2>/dev/null && echo yes))
# pip install, quiet, without the warning this machine's pip config prints for every package (an
# extra index that is not there: "WARNING: Location 'file:///opt/pypi/...' is ignored").
PIP = $(1)/bin/python -m pip install --quiet $(2) 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

.PHONY: demo test clean

define install_venv
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(call PIP,$(1),--upgrade pip)
	$(call PIP,$(1),-r requirements-cpu.txt)
	$(call PIP,$(1),--no-deps -e .)
	touch $(1)/.installed
endef

$(STAMP): setup.py requirements-cpu.txt
	$(call install_venv,$(VENV),$(PYTHON))

$(STAMP312): setup.py requirements-cpu.txt
	@test -n "$(HAVE_312)" || { echo "no Python >= 3.12 found: set PYTHON312=/path/to/python3.12"; exit 1; }
	$(call install_venv,$(VENV312),$(PYTHON312))

demo: $(STAMP)
	$(PY) -m tools.demo.run $(ARGS)

test: $(if $(HAVE_311),$(STAMP)) $(if $(HAVE_312),$(STAMP312))
	@$(if $(HAVE_311)$(HAVE_312),,echo "no stack to test: PYTHON=$(PYTHON) is not Python 3.10-3.11 and no Python \
	>= 3.12 was found; set PYTHON or PYTHON312" && exit 1;) \
	VENV=$(if $(HAVE_311),$(VENV)) SKIP_311="PYTHON=$(PYTHON) is not Python 3.10-3.11 (set PYTHON=python3.11)" \
	VENV312=$(if $(HAVE_312),$(VENV312)) SKIP_312="no Python >= 3.12 found (set PYTHON312=/path/to/python3.12)" \
	scripts/test_stacks.sh $(ARGS)

clean:
	rm -rf $(VENV) $(VENV312) build *.egg-info
