"""The launcher's HTTP side: health, the served model list and the runtime-adapter endpoints (httpx, no vLLM)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from pipelines.common.errors import PipelinesError


class ServeError(PipelinesError, RuntimeError):
    """A failure of the running server (start, status, load); one sentence. `pid`: the server's, if one ran."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


def headers(env: Mapping[str, str]) -> dict[str, str]:
    key = env.get("VLLM_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_models(base_url: str, env: Mapping[str, str], timeout: float = 10.0) -> list[str]:
    r = httpx.get(f"{base_url}/v1/models", headers=headers(env), timeout=timeout)
    if r.status_code == 401:
        raise ServeError(f"the server on {base_url} wants an API key; set `VLLM_API_KEY` to the key it was "
                         "started with.")
    r.raise_for_status()
    return [m["id"] for m in r.json()["data"]]


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/health", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def post(url: str, body: dict, env: Mapping[str, str]) -> str:
    r = httpx.post(url, json=body, headers=headers(env), timeout=120.0)
    if r.status_code != 200:
        try:
            msg = r.json().get("error", {}).get("message") or r.text
        except (ValueError, AttributeError):
            msg = r.text
        raise ServeError(f"{url.rsplit('/', 1)[-1]} failed ({r.status_code}): {msg.strip()}")
    return r.text
