"""Evaluate: score served models through the OpenAI-compatible API (task registry, requests, client,
predictions file, scoring, judge, prompt parity, report). Imports neither vLLM nor LLaMA-Factory, but for
`parity`, which needs LLaMA-Factory's template and is imported only when asked for."""


class EvalError(RuntimeError):
    """A problem the user can fix, said in one sentence."""
