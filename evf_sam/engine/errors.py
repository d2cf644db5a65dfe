"""How the scripts report a failure: one line on stderr (what failed, which key or file, how to fix it)
and exit status 1; the full traceback with ``EVF_SAM_DEBUG=1``.

    @hydra.main(...)
    def main(cfg):
        with reporting("train.py"):          # errors of the run
            train(cfg)

    if __name__ == "__main__":
        with reporting("train.py"):          # errors of config composition (a wrong key, type, option)
            main()

Hydra is told to re-raise (``HYDRA_FULL_ERROR=1``) so that the outer block sees composition errors
itself; the inner one catches the run's errors inside the task function, before Hydra would add its
own "Error executing job" line. `describe` turns Hydra's and OmegaConf's multi-line reports into one
line naming the override or key; our own errors already name the file / key and the fix, and keep
their message.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

__all__ = ["DEBUG_ENV", "debug_enabled", "describe", "reporting"]

DEBUG_ENV = "EVF_SAM_DEBUG"
_HINT = f"[{DEBUG_ENV}=1 shows the traceback]"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _lines(text: str) -> list[str]:
    out = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith("Config search path"):  # Hydra's appendix: the search path, not the problem
            break
        if line and not line.startswith(("reference_type=", "object_type=", "See https://hydra.cc")):
            out.append(line)
    return out


def _join_options(lines: list[str]) -> str:
    """Hydra's "Available options in 'g':" followed by one option per line -> one clause."""
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith(":") and out[-1].startswith("Available options"):
            out[-1] = f"{out[-1]} {line}"
        elif out and out[-1].startswith("Available options") and ":" in out[-1] and " " not in line:
            out[-1] = f"{out[-1]}, {line}"
        else:
            out.append(line)
    return "; ".join(out)


def _omegaconf_text(e: BaseException) -> str:
    """OmegaConf's message (first lines) with the key it is about."""
    from omegaconf.errors import MissingMandatoryValue

    key = getattr(e, "full_key", None)
    msg = [ln for ln in _lines(str(e)) if not ln.startswith("full_key:")]
    if isinstance(e, MissingMandatoryValue) and key:
        return f"{key} has no value (??? in the config): set it on the command line, e.g. {key}=..."
    text = msg[0] if msg else type(e).__name__
    return f"{text} (key {key})" if key and key not in text else text


def describe(exc: BaseException) -> str:
    """One line about ``exc`` for a user (see the module docstring)."""
    try:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover - hydra / omegaconf are dependencies of the scripts
        HydraException = OmegaConfBaseException = ()  # type: ignore[assignment]

    from hydra.errors import OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, OmegaConfBaseException):
        return _omegaconf_text(exc)
    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override {exc.override!r}: {'; '.join(_lines(exc.message))} (syntax: "
                f"https://hydra.cc/docs/advanced/override_grammar/basic)")
    if isinstance(exc, HydraException) and isinstance(exc.__cause__, (ConfigKeyError, ConfigAttributeError)):
        key = getattr(exc.__cause__, "full_key", None) or "?"
        return (f"unknown config key {key}: {_lines(str(exc.__cause__))[0]}; check its spelling (--help lists the "
                f"keys; their types: evf_sam/config.py)")
    if isinstance(exc, HydraException):
        head = _join_options(_lines(str(exc)))
        cause = exc.__cause__
        if isinstance(cause, OmegaConfBaseException):
            return f"{head}: {_omegaconf_text(cause)}"
        if cause is not None and str(cause):
            return f"{head}: {_join_options(_lines(str(cause)))}"
        return head or type(exc).__name__
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    if isinstance(exc, (ValueError, OSError, KeyError, RuntimeError)) and text:
        known = type(exc).__module__.startswith("evf_sam") or type(exc) in (
            ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
        if known:
            return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def reporting(prog: str) -> Iterator[None]:
    """An exception in the block becomes one line on stderr and exit status 1, Ctrl+C exit status 130;
    with ``EVF_SAM_DEBUG=1`` the exception goes through (full traceback)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    try:
        yield
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as e:
        if debug_enabled():
            raise
        rank = os.environ.get("RANK")
        where = f" [rank {rank}]" if rank not in (None, "0") and os.environ.get("WORLD_SIZE", "1") != "1" else ""
        print(f"{prog}{where}: error: {describe(e)} {_HINT}", file=sys.stderr, flush=True)
        sys.exit(1)
