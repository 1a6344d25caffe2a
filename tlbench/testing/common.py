"""What every conformance check shares: one way to fail, and checks of names and docstrings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tlbench.errors import UserError
from tlbench.plugins.registry import NAME_PATTERN, NAME_RULE


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _call(where: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc


def _check_plugin_name(who: str, name: Any) -> None:
    _require(
        isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None,
        f"{who}.name must be the name suites use, and the registry's rule holds for it: {NAME_RULE}; got {name!r}",
    )


def _check_docstring(cls: type, what: str) -> None:
    _require(
        bool((cls.__doc__ or "").strip()),
        f"{cls.__name__} needs a docstring: its first line is what 'tlbench list' shows for {what}",
    )
    _check_summary_line(cls, what)


def _check_summary_line(cls: type, what: str) -> None:
    """The first docstring line is all that ``tlbench list`` prints: it must be a whole sentence,
    not the start of one wrapped onto the next line."""
    first = (cls.__doc__ or "").strip().splitlines()[0].rstrip()
    _require(
        first.endswith((".", "!", "?")),
        f"{cls.__name__}'s docstring starts with {first!r}, which 'tlbench list' would print for {what} cut "
        "mid-sentence: make the first line one whole sentence ending in a full stop, the rest below it",
    )


def _user_error_only(where: str, call: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, result)``, or ``(False, the UserError)``; any other exception is an AssertionError."""
    try:
        return True, call()
    except UserError as exc:
        return False, exc
    except Exception as exc:
        raise AssertionError(
            f"{where} raised {type(exc).__name__}: {exc}; problems with the user's data or "
            "options must be a tlbench.UserError (one line: what is wrong, what would be valid)"
        ) from exc
