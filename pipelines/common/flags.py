"""Boolean switches (`DRY_RUN=1`, `RESUME=true`, `use_cpu: yes`): the one parser every module uses."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipelines.common.errors import PipelinesError

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


class FlagError(PipelinesError, ValueError):
    """A switch whose value is neither true nor false; one sentence naming it."""


def flag(value: object, name: str, default: bool = False) -> bool:
    """`value` as a boolean: unset or empty is `default`; 1/0, true/false, yes/no, on/off in any case; a YAML
    boolean as it is. Anything else raises FlagError naming `name`."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if not text:
        return default
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise FlagError(f"`{name}={value}` is not a switch; set it to 1/0, true/false, yes/no or on/off.")


def env_flag(name: str, default: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """The environment variable `name` as a boolean (see `flag`)."""
    return flag((os.environ if env is None else env).get(name), name, default)


def env_int(name: str, env: Mapping[str, str] | None = None, minimum: int = 1) -> int | None:
    """The environment variable `name` as a whole number >= `minimum`, None when unset or empty; anything else is
    one sentence naming the variable (`SAMPLES=abc make all`)."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise FlagError(f"`{name}={raw}` is not a whole number; set it to one (at least {minimum}) or leave it "
                        "unset.") from None
    if value < minimum:
        raise FlagError(f"`{name}={raw}` must be at least {minimum}; set it higher or leave it unset.")
    return value


def config_flag(cfg: Mapping, key: str) -> bool:
    """A boolean key of a parsed config; a value that is no switch counts as false (the config's type check
    reports it)."""
    try:
        return flag(cfg.get(key), key)
    except FlagError:
        return False
