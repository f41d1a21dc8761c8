"""Train: load and check LLaMA-Factory configs, launch `llamafactory-cli train`, write the training manifest,
merge adapters (export) and train grids (sweep). Never imports vLLM."""
