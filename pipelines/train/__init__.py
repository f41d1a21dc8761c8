"""Train: load and check LLaMA-Factory configs, launch `llamafactory-cli train`, write the training manifest,
merge adapters (export) and train grids (grid, the training half of `make sweep`). Never imports vLLM."""
