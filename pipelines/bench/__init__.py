"""`make bench`: the pipeline against the seeds' way, side by side.

    python -m pipelines bench [train|train_options|eval|convert|constrained|significance|router|ranks|setup|all|report] [--repeats 3] [--quick]

Each benchmark runs both sides in one run on the same tiny model, data and settings, repeats, prints a table
and writes `bench/results/<name>.json`: per side the median, min and max of each figure, and a top-level
`ratio` (ours / theirs, higher is better). `report` (also run after `all`) rewrites `BENCHMARKS.md` from the
result files. Benchmarks print figures; they are not tests (only the pure parts are unit-tested).

On a CUDA machine `train` runs both sides on the GPU; with no model hub there, `python -m pipelines shaped-model
--shape qwen2.5-0.5b` gives it a model of Qwen2.5-0.5B's shape (`--train-model models/qwen2.5-0.5b-shape`).
Such a result, copied to `bench/results/gpu/train.json`, gets its own section in BENCHMARKS.md.

Modules: `measure` (summaries, tables, child processes with their peak RSS), `seeds` (the seeds' hand-written
training loop, one-at-a-time `generate` and converter, re-implemented), `data` (CLUENER converted into a
temporary folder, never into the repository), `server` (a vLLM server through `pipelines.serve`), the
benchmarks `train`, `eval`, `convert`, `constrained`, `significance`, `router` (2 replicas behind vllm-router
against one server directly), `ranks` (1 rank against 2: the same global batch and loss; samples/s on shared
cores), `setup`, and `report` (BENCHMARKS.md).
"""
