"""Values checked by type before anything runs, with one message per bad value: ``field: what is wrong; what is
allowed``.

Values reach wanflow from places that do not enforce types: papermill injects whatever it is given (``-p`` guesses
types, ``-r`` passes strings, a parameter may be None), JSON spec files, and Python callers. Each converter returns
the value normalized (an integral float such as ``64.0``, or a string such as ``"64"``, becomes ``64``) or raises
:class:`ParameterError`; :func:`check` applies converters to a dict and collects every problem at once. Booleans are
never numbers here (``True`` is not a seed). Plain Python, importable without torch.
"""

from __future__ import annotations

import math
from typing import Any, Callable


class ParameterError(ValueError):
    """A value of the wrong type; the message says what it is and what is allowed (without the field name,
    which :func:`check` puts in front)."""


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 60 characters (a parameter may hold a whole document)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def as_integer(value: Any, allowed: str) -> int:
    """``value`` as an int: ints, integral floats (``64.0``) and integer strings (``"64"``) pass.

    Raises:
        ParameterError: ``'abc' is not an integer; <allowed>`` (also for bools and ``9.5``).
    """
    if isinstance(value, bool):
        raise ParameterError(f"{value!r} is not an integer; {allowed}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ParameterError(f"{_shown(value)} is not an integer; {allowed}")


def as_number(value: Any, allowed: str) -> float:
    """``value`` as a float: ints, floats and numeric strings pass (NaN and infinities too: range checks catch them).

    Raises:
        ParameterError: ``'x' is not a number; <allowed>`` (also for bools).
    """
    if isinstance(value, bool):
        raise ParameterError(f"{value!r} is not a number; {allowed}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ParameterError(f"{_shown(value)} is not a number; {allowed}")


def as_text(value: Any, allowed: str) -> str:
    """``value`` if it is a string.

    Raises:
        ParameterError: ``None is not text; <allowed>``.
    """
    if isinstance(value, str):
        return value
    raise ParameterError(f"{_shown(value)} is not text; {allowed}")


#: A rule: the converter, what is allowed (for the message), and whether None passes unchanged.
Rule = tuple[Callable[[Any, str], Any], str, bool]


def check(values: dict[str, Any], rules: dict[str, Rule]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Apply ``rules`` to the keys of ``values`` that have one (others pass unchanged).

    Returns:
        ``(normalized values, problems)``, each problem ``(field, message)``; no problems when all are fine.
    """
    out, problems = dict(values), []
    for name, (convert, allowed, optional) in rules.items():
        if name not in values or (optional and values[name] is None):
            continue
        try:
            out[name] = convert(values[name], allowed)
        except ParameterError as err:
            problems.append((name, str(err)))
    return out, problems


def raise_problems(problems: list[tuple[str, str]], error: type[Exception] = ValueError) -> None:
    """Raise ``error`` with one ``field: message`` line per problem, if there are any."""
    if problems:
        raise error("\n".join(f"{name}: {message}" for name, message in problems))
