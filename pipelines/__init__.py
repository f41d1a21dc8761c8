"""Convert → train (LLaMA-Factory) → serve (vLLM) → evaluate (OpenAI client): one subpackage per stage, one
command in front (`python -m pipelines --help`)."""

__version__ = "0.1.0"
