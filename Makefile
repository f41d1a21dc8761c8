# Thin by design: each target is one line calling a module of `pipelines` or a tool. Logic lives in Python.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON     ?= python3
PY         := .venv/bin/python
LLAMAFACTORY := .venv/bin/llamafactory-cli
MODEL      ?=
# the tokenizer/model that lengths, parity and eval use when MODEL= is not given
MODEL_OR_TINY = $(or $(MODEL),models/tiny-qwen2-base)
PROFILE    ?= cpu
CONFIG     ?= conf/tiny_lora_cluener.yaml
ARGS       ?=
ADAPTER    ?= saves/tiny/lora/cluener
NAME       ?=
SERVE      ?= conf/serve/tiny.yaml
PORT       ?= 8000
TASK       ?= cluener
EVAL_DATA  ?= data/cluener_val.json
MODELS     ?= tiny-base cluener
EVAL_OUT   ?= results/eval
LIMIT      ?=
DATA_DIR   ?= data
CLUENER_DIR   ?= data/raw/cluener_sample
RUOZHIBA_FILE ?= data/raw/ruozhiba_sample.json
DATASET    ?= cluener_train
NPROC_PER_NODE ?=
DEEPSPEED  ?=
RESUME     ?=
DRY_RUN    ?=
SAMPLES    ?=
EVAL_LIMIT ?=
RUN        ?=
PYTEST_ARGS ?=

export NPROC_PER_NODE NNODES NODE_RANK MASTER_ADDR MASTER_PORT DEEPSPEED RESUME DRY_RUN PROFILE MODEL PORT \
       CLUENER_DIR RUOZHIBA_FILE SAMPLES EVAL_LIMIT RUN

.PHONY: help setup tiny-model tiny-base data download lengths check train export sweep serve serve-status \
        serve-stop lora-load lora-unload eval parity all bench test clean

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z][a-zA-Z_-]*:.*## /{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: MODEL=$(MODEL_OR_TINY) CONFIG=$(CONFIG) SERVE=$(SERVE) PORT=$(PORT) PROFILE=$(PROFILE)"

setup: ## build .venv (LLaMA-Factory) and .venv-vllm (vLLM); a no-op when nothing changed
	@$(PYTHON) -m pipelines.setup

tiny-model: setup ## build models/tiny-qwen2: a Qwen2 model with random weights and a locally trained tokenizer
	@$(PY) -m pipelines.tiny_model

tiny-base: tiny-model ## pre-train the tiny model on the CPU (LLaMA-Factory stage pt) into models/tiny-qwen2-base (cached)
	@$(PY) -m pipelines.tiny_base

data: setup ## convert the raw data (bundled samples, or CLUENER_DIR= / RUOZHIBA_FILE=) into data/*.json + dataset_info.json
	@$(PY) -m pipelines.convert cluener --raw $(CLUENER_DIR) --out-dir $(DATA_DIR)
	@$(PY) -m pipelines.convert ruozhiba --raw $(RUOZHIBA_FILE) --out-dir $(DATA_DIR)
	@$(PY) -m pipelines.convert huanhuan --raw data/raw/huanhuan_sample.json --out-dir $(DATA_DIR)
	@$(PY) -m pipelines.convert classification --raw data/raw/classification_sample.json --out-dir $(DATA_DIR)

download: setup ## fetch the official CLUENER zip and hfl/ruozhiba_gpt4 (needs a network), checksums verified
	@$(PY) -m pipelines.download --out downloads

lengths: ## token lengths of DATASET with MODEL's tokenizer and the training template; suggests cutoff_len
	@$(PY) -m pipelines.lengths $(DATASET) --model $(MODEL_OR_TINY) --dataset-dir $(DATA_DIR)

check: ## validate CONFIG (+ ARGS overrides) with LLaMA-Factory's own parser and the project's rules
	@$(PY) -m pipelines.check $(CONFIG) $(ARGS)

train: ## check, then train CONFIG with llamafactory-cli (ARGS="key=value …", RESUME=1, NPROC_PER_NODE=, DEEPSPEED=)
	@$(PY) -m pipelines.train $(CONFIG) $(ARGS)

export: ## merge ADAPTER into its base with llamafactory-cli export
	@$(PY) -m pipelines.export $(ADAPTER) $(ARGS)

sweep: ## train a grid over lora_rank x learning_rate x max_samples into named adapters
	@$(PY) -m pipelines.sweep $(CONFIG) $(ARGS)

serve: ## start vLLM (OpenAI API) in the background with the base model and every adapter of SERVE
	@$(PY) -m pipelines.serve start $(SERVE) --port $(PORT)

serve-status: ## is the server of SERVE up, and what does it serve
	@$(PY) -m pipelines.serve status $(SERVE) --port $(PORT)

serve-stop: ## stop the server (SIGTERM, then SIGKILL after a grace period)
	@$(PY) -m pipelines.serve stop $(SERVE) --port $(PORT)

lora-load: ## hot-load ADAPTER as NAME= into the running server (only if SERVE allows runtime updates)
	@$(PY) -m pipelines.serve load $(SERVE) --port $(PORT) $(if $(NAME),--name $(NAME)) --path $(ADAPTER)

lora-unload: ## unload adapter NAME= from the running server (only if SERVE allows runtime updates)
	@$(PY) -m pipelines.serve unload $(SERVE) --port $(PORT) $(if $(NAME),--name $(NAME))

eval: ## check prompt parity with MODEL's tokenizer, then score MODELS served on PORT on EVAL_DATA for TASK into EVAL_OUT (JUDGE= optional)
	@$(PY) -m pipelines.evaluate --base-url http://127.0.0.1:$(PORT)/v1 --task $(TASK) --data $(EVAL_DATA) \
	  $(foreach m,$(MODELS),--model $(m)) --out $(EVAL_OUT) $(if $(LIMIT),--limit $(LIMIT)) \
	  --tokenizer $(MODEL_OR_TINY) $(if $(JUDGE),--judge $(JUDGE))

parity: ## check that training (LLaMA-Factory template) and serving (chat template) render identical prompts
	@$(PY) -m pipelines.parity --model $(MODEL_OR_TINY) --data $(EVAL_DATA)

all: setup ## the whole pipeline into results/RUN (PROFILE=cpu|gpu, MODEL=, CLUENER_DIR=, SAMPLES=, EVAL_LIMIT=, DRY_RUN=1)
	@$(PY) -m pipelines.run_all

bench: tiny-base ## benchmarks against the seeds' way (ARGS="--quick --repeats 1"): tables, bench/results/*.json, BENCHMARKS.md
	@$(PY) -m pipelines.bench all $(ARGS)

test: setup ## run the test suite (builds what it needs; slow tests train and serve for real)
	@$(PY) -m pytest $(PYTEST_ARGS)

clean: ## remove generated data, adapters and results (keeps venvs and models)
	rm -rf saves results $(DATA_DIR)/*_train.json $(DATA_DIR)/*_val.json $(DATA_DIR)/dataset_info.json
