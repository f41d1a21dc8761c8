# Thin by design: each target is one line of `python -m pipelines <command>` (`python -m pipelines --help`).
# Logic lives in Python, where the tests reach it.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON     ?= python3
PY         := .venv/bin/python
CLI        := $(PY) -m pipelines
LLAMAFACTORY := .venv/bin/llamafactory-cli
MODEL      ?=
# the tokenizer/model that lengths, parity and eval use when MODEL= is not given
MODEL_OR_TINY = $(or $(MODEL),models/tiny-qwen2-base)
PROFILE    ?= cpu
CONFIG     ?= conf/tiny_lora_cluener.yaml
ARGS       ?=
ADAPTER    ?= saves/tiny/lora/cluener
NAME       ?=
SERVE      ?= serve/tiny.yaml
PORT       ?= 8000
# `make serve REPLICAS=2`: that many servers behind vllm-router on PORT (overrides the config's `replicas`)
REPLICAS   ?=
TASK       ?= cluener
EVAL_DATA  ?= data/cluener_val.json
MODELS     ?= tiny-base cluener
# the evaluated server's OpenAI API (a deployed bundle's, e.g. http://gpu-host:8000/v1)
BASE_URL   ?= http://127.0.0.1:$(PORT)/v1
EVAL_OUT   ?= results/eval
# none | auto (NER: spans of the input; classification: one of the candidates) | both
CONSTRAIN  ?= none
# more `python -m pipelines eval` options, e.g. EVAL_ARGS=--fresh
EVAL_ARGS  ?=
# a served model that judges the answers (`make eval JUDGE=…`); empty: no judge
JUDGE      ?=
# `make lock KIND=cpu|cuda`: the machine kind a lock is resolved for (default: this machine's)
KIND       ?=
LIMIT      ?=
DATA_DIR   ?= data
CLUENER_DIR   ?= data/raw/cluener_sample
RUOZHIBA_FILE ?= data/raw/ruozhiba_sample.json
DATASET    ?= cluener_train
NPROC_PER_NODE ?=
DEEPSPEED  ?=
RESUME     ?=
# where make train / sweep / all log the loss, offline: tensorboard | swanlab | none (unset: the config's report_to)
TRACKER    ?=
DRY_RUN    ?=
SAMPLES    ?=
EVAL_LIMIT ?=
RUN        ?=
PYTEST_ARGS ?=
TARGET     ?= compose
OUT        ?=
ADAPTER_URLS ?=

# q: one shell word, single-quoted, so that a user value (a path with a space, a URL with `&`, `;` or `$(…)`)
# reaches the command as it is; qs: each whitespace-separated word of a list so. ADAPTER_URLS reaches deploy
# through the environment (split on whitespace in Python), never through the shell.
q  = '$(subst ','\'',$(1))'
qs = $(foreach w,$(1),$(call q,$(w)))
# `value`: not even make expands it (a URL's `$(…)` stays as it is)
export PIPELINES_ADAPTER_URLS = $(value ADAPTER_URLS)

export NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT DEEPSPEED RESUME DRY_RUN TRACKER PROFILE MODEL PORT \
       CLUENER_DIR RUOZHIBA_FILE SAMPLES EVAL_LIMIT RUN

.PHONY: help setup lock tiny-model tiny-base data download lengths check train export curve sweep serve serve-status \
        serve-stop lora-load lora-unload deploy eval parity all gpu-check bench test test-real lint clean

help: ## list the targets (colour only on a terminal, never with NO_COLOR set)
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then c=$$(printf '\033[36m'); r=$$(printf '\033[0m'); fi; \
	  awk -v c="$$c" -v r="$$r" 'BEGIN{FS=":.*## "} /^[a-z][a-zA-Z_-]*:.*## /{printf "  %s%-14s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: MODEL=$(MODEL_OR_TINY) CONFIG=$(CONFIG) SERVE=$(SERVE) PORT=$(PORT) PROFILE=$(PROFILE)"

setup: ## build .venv (LLaMA-Factory) and .venv-vllm (vLLM) from requirements/lock with uv (PIPELINES_INSTALLER=pip); a no-op when nothing changed
	@$(PYTHON) -m pipelines setup

lock: ## resolve the declared requirements into requirements/lock/*-KIND.txt with uv (KIND=cpu|cuda, default this machine's)
	@$(PYTHON) -m pipelines setup --lock $(if $(KIND),--kind $(call q,$(KIND)))

tiny-model: setup ## build models/tiny-qwen2: a Qwen2 model with random weights and a locally trained tokenizer
	@$(CLI) tiny-model

tiny-base: tiny-model ## pre-train the tiny model on the CPU (LLaMA-Factory stage pt) into models/tiny-qwen2-base (cached)
	@$(CLI) tiny-base

data: setup ## convert every registered data set's bundled sample (or CLUENER_DIR= / RUOZHIBA_FILE=) into data/*.json + dataset_info.json
	@$(CLI) data --out-dir $(call q,$(DATA_DIR)) --raw $(call q,cluener=$(CLUENER_DIR)) --raw $(call q,ruozhiba=$(RUOZHIBA_FILE))

download: setup ## fetch the official CLUENER zip and hfl/ruozhiba_gpt4 (needs a network), checksums verified
	@$(CLI) download --out downloads

lengths: ## token lengths of DATASET with MODEL's tokenizer and the training template; suggests cutoff_len
	@$(CLI) lengths $(call q,$(DATASET)) --model $(call q,$(MODEL_OR_TINY)) --dataset-dir $(call q,$(DATA_DIR))

check: ## validate CONFIG (+ ARGS overrides) with LLaMA-Factory's own parser and the project's rules
	@$(CLI) check $(call q,$(CONFIG)) $(call qs,$(ARGS))

train: ## check, then train CONFIG with llamafactory-cli (ARGS="key=value …", RESUME=1, NPROC_PER_NODE=, DEEPSPEED=, TRACKER=)
	@$(CLI) train $(call q,$(CONFIG)) $(call qs,$(ARGS))

export: ## merge ADAPTER into its base with llamafactory-cli export
	@$(CLI) export $(call q,$(ADAPTER)) $(call qs,$(ARGS))

curve: ## score every epoch's checkpoint of ADAPTER (a training output_dir) from one server: ADAPTER/curve/curve.json, curve.png, samples.md
	@$(CLI) curve $(call q,$(ADAPTER)) $(call qs,$(ARGS))

sweep: ## train a grid (ARGS="--ranks 8,16 --lrs 1e-3,3e-3 --samples 300"), serve and score every adapter from one server, write OUT/leaderboard.md
	@$(CLI) sweep $(call q,$(CONFIG)) $(call qs,$(ARGS)) $(if $(OUT),--out $(call q,$(OUT)))

serve: ## start vLLM (OpenAI API) in the background with the base model and every adapter of SERVE (REPLICAS=N: N servers behind vllm-router)
	@$(CLI) serve start $(call q,$(SERVE)) --port $(call q,$(PORT)) $(if $(REPLICAS),--replicas $(call q,$(REPLICAS)))

serve-status: ## is the server of SERVE up, and what does it serve
	@$(CLI) serve status $(call q,$(SERVE)) --port $(call q,$(PORT))

serve-stop: ## stop the server (SIGTERM, then SIGKILL after a grace period)
	@$(CLI) serve stop $(call q,$(SERVE)) --port $(call q,$(PORT))

lora-load: ## hot-load ADAPTER as NAME= into the running server (only if SERVE allows runtime updates)
	@$(CLI) serve load $(call q,$(SERVE)) --port $(call q,$(PORT)) $(if $(NAME),--name $(call q,$(NAME))) --path $(call q,$(ADAPTER))

lora-unload: ## unload adapter NAME= from the running server (only if SERVE allows runtime updates)
	@$(CLI) serve unload $(call q,$(SERVE)) --port $(call q,$(PORT)) $(if $(NAME),--name $(call q,$(NAME)))

deploy: ## render a bundle of SERVE for TARGET=compose|k8s into OUT (default serve/deploy/<name>/); ADAPTER_URLS="NAME=URL …" (k8s)
	@$(CLI) deploy $(call q,$(SERVE)) --target $(call q,$(TARGET)) $(if $(OUT),--out $(call q,$(OUT))) \
	  $(if $(ADAPTER_URLS),--adapter-urls-from-env PIPELINES_ADAPTER_URLS)

eval: ## check prompt parity with MODEL's tokenizer, then score MODELS served at BASE_URL (default: PORT here) on EVAL_DATA for TASK into EVAL_OUT (CONSTRAIN=, JUDGE=, EVAL_ARGS=)
	@$(CLI) eval --base-url $(call q,$(BASE_URL)) --task $(call q,$(TASK)) --data $(call q,$(EVAL_DATA)) \
	  $(foreach m,$(MODELS),--model $(call q,$(m))) --out $(call q,$(EVAL_OUT)) $(if $(LIMIT),--limit $(call q,$(LIMIT))) \
	  --tokenizer $(call q,$(MODEL_OR_TINY)) $(if $(JUDGE),--judge $(call q,$(JUDGE))) --constrain $(call q,$(CONSTRAIN)) $(call qs,$(EVAL_ARGS))

parity: ## check that training (LLaMA-Factory template) and serving (chat template) render identical prompts
	@$(CLI) parity --model $(call q,$(MODEL_OR_TINY)) --data $(call q,$(EVAL_DATA))

all: setup ## the whole pipeline into results/RUN (PROFILE=cpu|gpu, MODEL=, CLUENER_DIR=, SAMPLES=, EVAL_LIMIT=, DRY_RUN=1)
	@$(CLI) all --profile $(call q,$(PROFILE)) --port $(call q,$(PORT)) $(if $(MODEL),--model $(call q,$(MODEL))) \
	  $(if $(RUN),--run $(call q,$(RUN))) --cluener-dir $(call q,$(CLUENER_DIR)) --ruozhiba-file $(call q,$(RUOZHIBA_FILE)) \
	  $(if $(SAMPLES),--samples $(call q,$(SAMPLES))) $(if $(EVAL_LIMIT),--eval-limit $(call q,$(EVAL_LIMIT)))

gpu-check: setup ## on a CUDA machine: train (1 GPU, torchrun, DeepSpeed), serve, eval, deploy in minutes; results/gpu-check/ (MODEL=, DRY_RUN=1)
	@$(CLI) gpu-check $(call qs,$(ARGS))

bench: tiny-base ## benchmarks against the seeds' way (ARGS="--quick --repeats 1"): tables, bench/results/*.json, BENCHMARKS.md
	@$(CLI) bench all $(call qs,$(ARGS))

test: setup ## the tests a bare clone passes (builds what it needs; slow tests train and serve for real)
	@$(PY) -m pytest $(PYTEST_ARGS)

test-real: setup ## the tests on the real data sets and official schemas (PIPELINES_SHARED=DIR, default ../shared; make download)
	@$(PY) -m pytest -m real $(PYTEST_ARGS)

lint: setup ## ruff and mypy (unknown names and module attributes fail) over pipelines/, serve/plugin/ and tests/
	@$(PY) -m ruff check pipelines serve/plugin tests
	@$(PY) -m mypy

clean: ## remove generated data, adapters and results (keeps venvs and models)
	rm -rf saves results $(DATA_DIR)/*_train.json $(DATA_DIR)/*_val.json $(DATA_DIR)/dataset_info.json
