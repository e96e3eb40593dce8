# lic_kd: `make demo` (a small local sweep on the shipped data, ending in a report), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

DEMO_DIR ?= outputs/demo
DEMO_LAMBDAS ?= 0.0035,0.05
DEMO_WIDTHS ?= 16,32
DEMO_TEACHER_N ?= 64

.PHONY: install test test-all demo report clean

install: $(INSTALLED)

# torch is left unpinned on purpose: the registry's newest torch pairs with its torchvision (see README).
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" --config-settings editable_mode=compat
	touch $@

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

# Teachers at each lambda, then plain and KD students at each width and lambda (each KD student takes the
# teacher of its own lambda from the teacher sweep), all coded on Kodak, then the report. Re-running
# resumes: finished runs are skipped, interrupted ones continue from their last checkpoint.
demo: install
	$(PY) -m lic_kd.train -m experiment=demo role=teacher student.N=$(DEMO_TEACHER_N) lmbda=$(DEMO_LAMBDAS) \
		hydra.sweep.dir=$(DEMO_DIR)/teachers
	$(PY) -m lic_kd.train -m experiment=demo role=student,kd student.N=$(DEMO_WIDTHS) lmbda=$(DEMO_LAMBDAS) \
		teacher.checkpoint=$(DEMO_DIR)/teachers hydra.sweep.dir=$(DEMO_DIR)/students
	$(PY) -m lic_kd.report $(DEMO_DIR)/teachers $(DEMO_DIR)/students --name demo

# make report SWEEPS="outputs/multirun/A outputs/multirun/B" NAME=my_study [ANCHOR=teacher-N128-M192]
SWEEPS ?= $(DEMO_DIR)/teachers $(DEMO_DIR)/students
NAME ?= demo
report: install
	$(PY) -m lic_kd.report $(SWEEPS) --name $(NAME) $(if $(ANCHOR),--anchor $(ANCHOR))

clean:
	rm -rf outputs multirun_reports .pytest_cache
