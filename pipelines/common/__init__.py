"""Shared helpers every stage may use: paths, boolean flags, file I/O, ports, device facts, vLLM's LoRA facts and
the LLaMA-Factory command line. Nothing here imports a higher stage."""
