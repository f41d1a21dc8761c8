"""Evaluate: score served models through the OpenAI-compatible API (task registry, requests, client,
predictions file, scoring, judge, prompt parity, report). Imports neither vLLM nor LLaMA-Factory, but for
`parity`, which needs LLaMA-Factory's template and is imported only when asked for."""

from pipelines.common.errors import PipelinesError


class EvalError(PipelinesError, RuntimeError):
    """A problem the user can fix, said in one sentence."""
