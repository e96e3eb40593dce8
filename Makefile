# lic_kd: `make demo` (a small local sweep on the shipped data, ending in a report), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

DEMO_DIR ?= outputs/demo
DEMO_LAMBDAS ?= 0.0009,0.0018,0.0035  # where thin students still trade rate for quality (N=16 saturates near 23.7 dB)
# The teacher curve of the demo: the ladder's rungs from 0.05 to 0.32 bpp, the qualities its students reach
DEMO_TEACHER_LAMBDAS ?= 0.0002,0.0004,0.0009,0.0018,0.0035
# Jobs of a sweep in parallel processes of one torch thread each: 1.6-1.7x the throughput of one 2-thread job
DEMO_LAUNCHER ?= joblib
DEMO_WIDTHS ?= 16,32
DEMO_INIT ?= teacher
DEMO_TEACHER_N ?= 64  # the teachers of make families and make variants

# The shipped teacher ladder (make teachers rebuilds it): KD runs take the rung of their own lambda.
TEACHERS ?= teachers/bmshj2018-hyperprior-N64-M96
TEACHERS_RUN_DIR ?= outputs/teachers
TEACHER_LAMBDAS ?= 0.0018,0.0035,0.0067,0.013,0.0009,0.0004,0.0002  # a new rung goes last: sweep job numbers name the run dirs
# Budgets of their own: the base's batches (5x the shipped base's 4000, docs/teachers.md) and each rung's fine-tune.
# TEACHER_LAUNCHER=slurm makes base and rungs jobs of the cluster (its hydra.launcher.* settings in TEACHER_OVERRIDES).
TEACHER_BASE_STEPS ?= 20000
TEACHER_RUNG_STEPS ?= 600
TEACHER_LAUNCHER ?= basic
TEACHER_OVERRIDES ?=
TEACHER_NOTE ?=
TEACHER_BASE_CMD = $(PY) -m lic_kd.train -m experiment=teacher_ladder steps=$(TEACHER_BASE_STEPS) \
	launcher=$(TEACHER_LAUNCHER) $(TEACHER_OVERRIDES) hydra.sweep.dir=$(TEACHERS_RUN_DIR)/base
TEACHER_RUNGS_CMD = $(PY) -m lic_kd.train -m experiment=teacher_ladder_finetune lmbda=$(TEACHER_LAMBDAS) \
	steps=$(TEACHER_RUNG_STEPS) student.init=$(TEACHERS_RUN_DIR)/base/0 launcher=$(TEACHER_LAUNCHER) $(TEACHER_OVERRIDES) \
	hydra.sweep.dir=$(TEACHERS_RUN_DIR)/ladder

REFERENCES ?= data/reference/compressai-bmshj2018-hyperprior_mse_cuda.json data/reference/jpeg.json \
	data/reference/webp.json data/reference/bpg_444_x265_ycbcr.json data/reference/vtm.json

.PHONY: install lint test test-all demo demo-teachers teachers study frugal codecs report figures families variants slurm-up slurm-down bench clean

install: $(INSTALLED)

# torch is left unpinned on purpose: the registry's newest torch pairs with its torchvision (see docs/configuration.md, Install).
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# ruff (configured in pyproject.toml): lint, and the format it keeps.
LINTED := lic_kd tests benchmarks hydra_plugins
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# Every test, on two pytest-xdist workers (one per core; tests of one xdist_group, the SLURM ones, share a worker).
test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=12

# The same tests in one process, one after the other, torch on every core: to read a failure in order.
test-all: install
	$(PY) -m pytest -q

# The shipped teachers, coded on Kodak for real (their numbers checked against the ladder's record), then plain
# and KD students at each width and lambda, started from their teacher's most important channels (each KD
# student takes the teacher of its own lambda), all coded on Kodak, then the report. Re-running resumes:
# finished runs are skipped, interrupted ones continue from their last checkpoint.
demo: install
	$(MAKE) -j2 codecs demo-teachers  # Pillow's codecs use one core: the teachers are coded meanwhile
	$(PY) -m lic_kd.train -m launcher=$(DEMO_LAUNCHER) experiment=demo role=kd,student 'student.N=[$(DEMO_WIDTHS)]' \
		lmbda=$(DEMO_LAMBDAS) student.init=$(DEMO_INIT) teacher.checkpoint=$(TEACHERS) hydra.sweep.dir=$(DEMO_DIR)/students
	$(MAKE) report

demo-teachers: install
	$(PY) -m lic_kd.evaluate -m launcher=$(DEMO_LAUNCHER) checkpoint=$(TEACHERS) lmbda=$(DEMO_TEACHER_LAMBDAS) \
		hydra.sweep.dir=$(DEMO_DIR)/teachers

# Retrain the teacher ladder from scratch: one base teacher (lambda 0.0067), fine-tuned to each lambda of the
# ladder, then shipped with its provenance into $(TEACHERS). Base and rungs have budgets of their own and both go
# through the launcher: on SLURM, e.g. make teachers TEACHER_LAUNCHER=slurm TEACHER_BASE_STEPS=2000000
# TEACHER_RUNG_STEPS=100000 TEACHER_OVERRIDES="student.N=128 student.M=192 hydra.launcher.gpus_per_node=1".
teachers: install
	$(TEACHER_BASE_CMD)
	$(TEACHER_RUNGS_CMD)
	$(PY) -m lic_kd.teachers.ladder $(TEACHERS_RUN_DIR)/ladder $(TEACHERS) --base $(TEACHERS_RUN_DIR)/base/0 \
		--command "$(TEACHER_BASE_CMD) && $(TEACHER_RUNGS_CMD)" $(if $(TEACHER_NOTE),--note "$(TEACHER_NOTE)")

# The longer study on the shipped ladder: students of every width below the teacher's, plain and KD, from random
# and from teacher initialisation, at every lambda of the ladder, over seeds; the report answers "what
# distillation buys" with 95 % intervals. The same target runs on SLURM: make study STUDY_LAUNCHER=slurm. Each job
# trains the 6 students of one role, lambda and seed together (3 widths x 2 inits): one teacher forward per batch.
# The report is multirun_reports/<the name of STUDY_DIR>/.
STUDY_DIR ?= outputs/study
STUDY_WIDTHS ?= 16,32,48
STUDY_LAMBDAS ?= 0.0004,0.0009,0.0018,0.0035  # where thin students trade rate for quality (the demo's range)
STUDY_SEEDS ?= 1,2,3
STUDY_LAUNCHER ?= joblib
STUDY_OVERRIDES ?=  # e.g. steps=2000: a budget at which students from random init form RD curves
study: install codecs
	$(PY) -m lic_kd.evaluate -m launcher=$(STUDY_LAUNCHER) checkpoint=$(TEACHERS) lmbda=$(TEACHER_LAMBDAS) \
		hydra.sweep.dir=$(STUDY_DIR)/teachers
	$(PY) -m lic_kd.train -m experiment=demo launcher=$(STUDY_LAUNCHER) role=kd,student 'student.init=[random,teacher]' \
		'student.N=[$(STUDY_WIDTHS)]' lmbda=$(STUDY_LAMBDAS) seed=$(STUDY_SEEDS) teacher.checkpoint=$(TEACHERS) \
		$(STUDY_OVERRIDES) hydra.sweep.dir=$(STUDY_DIR)/students
	$(PY) -m lic_kd.report $(STUDY_DIR)/teachers $(STUDY_DIR)/students $(DEMO_DIR)/codecs --name $(notdir $(STUDY_DIR)) --reference $(REFERENCES)

# Frugal codecs on the shipped ladder, each technique alone and all three in one command: structured pruning
# (prune.keep of the teacher's channels, fine-tuned plain and with KD from the unpruned teacher), post-training
# fixed point of the teachers (quant.weight_bits), and a pruned, distilled, quantization-aware student; one
# report with BD-rate against decoder kMAC and against model bytes.
FRUGAL_DIR ?= outputs/frugal
FRUGAL_LAMBDAS ?= 0.0009,0.0018,0.0035
FRUGAL_KEEP ?= 0.5,0.25
FRUGAL_BITS ?= 6,8
FRUGAL_ARGS = -m launcher=$(DEMO_LAUNCHER) lmbda=$(FRUGAL_LAMBDAS) teacher.checkpoint=$(TEACHERS)
frugal: install
	$(PY) -m lic_kd.evaluate -m launcher=$(DEMO_LAUNCHER) checkpoint=$(TEACHERS) lmbda=$(FRUGAL_LAMBDAS) \
		hydra.sweep.dir=$(FRUGAL_DIR)/teachers
	$(PY) -m lic_kd.train $(FRUGAL_ARGS) experiment=demo prune=channels prune.keep=$(FRUGAL_KEEP) role=student,kd \
		hydra.sweep.dir=$(FRUGAL_DIR)/pruned
	$(PY) -m lic_kd.train $(FRUGAL_ARGS) quant=ptq quant.weight_bits=$(FRUGAL_BITS) student.init=teacher \
		student.N=64 student.M=96 hydra.sweep.dir=$(FRUGAL_DIR)/ptq
	$(PY) -m lic_kd.train $(FRUGAL_ARGS) experiment=demo prune=channels prune.keep=0.5 role=kd quant=qat \
		quant.weight_bits=8 hydra.sweep.dir=$(FRUGAL_DIR)/combined
	$(PY) -m lic_kd.report $(FRUGAL_DIR)/teachers $(FRUGAL_DIR)/pruned $(FRUGAL_DIR)/ptq $(FRUGAL_DIR)/combined --name frugal

# JPEG, WebP, JPEG 2000 and AVIF (Pillow) at their quality ladders on Kodak: real files, same metrics.
CODEC_POINTS ?= 5
CODECS ?= JPEG,WebP  # the demo's; add JPEG2000,AVIF for the full comparison (about 1.5 minutes more)
codecs: install
	$(PY) -m lic_kd.evaluation.classical --out $(DEMO_DIR)/codecs --points $(CODEC_POINTS) --codecs $(CODECS)

# make report SWEEPS="outputs/multirun/A outputs/multirun/B" NAME=my_study [ANCHOR=JPEG]
# Tables, BD-rate, figures and report.md into multirun_reports/NAME/.
SWEEPS ?= $(DEMO_DIR)/teachers $(DEMO_DIR)/students $(DEMO_DIR)/codecs
NAME ?= demo
report: install
	$(PY) -m lic_kd.report $(SWEEPS) --name $(NAME) --reference $(REFERENCES) $(if $(ANCHOR),--anchor $(ANCHOR))

figures: report

# Every model family at the demo budget (200 batches, N=64, M=96; cheng2020 has N only), one lambda, coded on
# Kodak, in one report (one point per family: the BD table stays empty, the RD table is the comparison).
FAMILIES ?= bmshj2018-factorized,bmshj2018-hyperprior,mbt2018-mean,mbt2018,cheng2020-anchor-checkerboard
families: install
	$(PY) -m lic_kd.train -m experiment=demo model=$(FAMILIES) hydra.sweep.dir=$(DEMO_DIR)/families
	$(PY) -m lic_kd.report $(DEMO_DIR)/families --name families --anchor student-N64-M96

# Every distillation variant at the demo budget, at two lambdas, N=16 students of an N=64 teacher: plain
# student, KD on y and x_hat (MSE, then KL), KD on z, hybrid KD (z from the low-rate teacher), and
# autoencoder KD (no entropy model); one report.
VARIANTS_DIR ?= outputs/variants
VARIANT_LAMBDAS ?= 0.0035,0.013
STUDENT := experiment=demo student.N=16 lmbda=$(VARIANT_LAMBDAS) teacher.checkpoint=$(VARIANTS_DIR)/teachers
HYPERWIDTH := model=bmshj2018-hyperprior-hyperwidth model.hyper_N=$(DEMO_TEACHER_N)
variants: install
	$(PY) -m lic_kd.train -m experiment=demo role=teacher student.N=$(DEMO_TEACHER_N) lmbda=$(VARIANT_LAMBDAS) \
		hydra.sweep.dir=$(VARIANTS_DIR)/teachers
	$(PY) -m lic_kd.train -m $(STUDENT) role=student,kd hydra.sweep.dir=$(VARIANTS_DIR)/kd
	$(PY) -m lic_kd.train -m $(STUDENT) role=kd loss.latent_criterion=kl hydra.sweep.dir=$(VARIANTS_DIR)/kd_kl
	$(PY) -m lic_kd.train -m $(STUDENT) role=kd $(HYPERWIDTH) loss.w_z=0.3 hydra.sweep.dir=$(VARIANTS_DIR)/kd_z
	$(PY) -m lic_kd.train -m $(STUDENT) role=kd_hybrid $(HYPERWIDTH) teacher.z_checkpoint=$(VARIANTS_DIR)/teachers \
		teacher.z_lmbda=$(firstword $(subst $(comma), ,$(VARIANT_LAMBDAS))) hydra.sweep.dir=$(VARIANTS_DIR)/kd_hybrid
	$(PY) -m lic_kd.train -m experiment=demo model=autoencoder role=teacher student.N=$(DEMO_TEACHER_N) \
		hydra.sweep.dir=$(VARIANTS_DIR)/ae_teacher
	$(PY) -m lic_kd.train -m experiment=demo model=autoencoder role=student,kd student.N=16 \
		teacher.checkpoint=$(VARIANTS_DIR)/ae_teacher hydra.sweep.dir=$(VARIANTS_DIR)/ae
	$(PY) -m lic_kd.report $(VARIANTS_DIR)/teachers $(VARIANTS_DIR)/kd $(VARIANTS_DIR)/kd_kl $(VARIANTS_DIR)/kd_z \
		$(VARIANTS_DIR)/kd_hybrid --name variants
	$(PY) -m lic_kd.report $(VARIANTS_DIR)/ae_teacher $(VARIANTS_DIR)/ae --name variants_autoencoder
comma := ,

# A real single-node SLURM on this machine (root; Debian packages), for the SLURM tests and launcher=slurm.
slurm-up:
	bash scripts/slurm-local.sh up

slurm-down:
	bash scripts/slurm-local.sh down

# lic_kd's speed against baselines measured in the same run (docs/benchmarks.md): ratios, absolute figures and goals,
# printed and written to benchmarks/results/*.json (about 10 minutes on 2 CPU cores). BENCH_ARGS=--smoke: a tiny run
# that checks every benchmark works (benchmarks/results/smoke/); BENCH_ARGS="--only decode_fps" picks some.
BENCH_ARGS ?=
bench: install
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf outputs multirun_reports .pytest_cache
