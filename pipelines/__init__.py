"""Convert → train (LLaMA-Factory) → serve (vLLM) → evaluate (OpenAI client), one step per module."""

__version__ = "0.1.0"
