"""Models: the tiny Qwen2 model the project builds, its CPU pre-training into the demo's base, and random-weight
models with Qwen2.5's shape for GPU throughput."""
