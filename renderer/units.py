"""Durations and byte sizes as kai.yaml writes them.

A duration is a Go (and Kubernetes) duration string, one or more `<number><unit>`
with unit ns, us, ms, s, m or h (`500ms`, `5s`, `2m`, `1h30m`, `720h`), or a bare
number of seconds (`5`, `0.5`, `"30"`). A size is a Kubernetes quantity of bytes: a
number with an optional suffix k, M, G, T, P, E (powers of 1000) or Ki, Mi, Gi, Ti,
Pi, Ei (powers of 1024): `512Mi`, `1Gi`, `1000000`. A quantity is any Kubernetes
resource quantity (cpu, memory, ephemeral storage, an emptyDir's size): a number with
an optional suffix, a decimal one n, u, m, k, M, G, T, P, E, a binary one Ki ... Ei, or
an exponent e3 / E-2 (of at most three digits): `100m`, `0.5`, `512Mi`, `1e3`.

The JSON Schemas (schemas/kai.schema.json, and krt.schema.json for quantities) hold the
same patterns (a test keeps them equal), so a value that passed them always parses; the
bounds a value must keep are checked in renderer.projectfile and renderer.scheduling.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_NUMBER = r"[0-9]+(\.[0-9]+)?"
DURATION_PATTERN = rf"^({_NUMBER}(ns|us|ms|s|m|h))+$|^{_NUMBER}$"
SIZE_PATTERN = rf"^{_NUMBER}(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_NUMBER = r"([0-9]+(\.[0-9]*)?|\.[0-9]+)"
_QUANTITY_SUFFIX = r"(Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?[0-9]{1,3}|n|u|m|k|M|G|T|P|E)"
QUANTITY_PATTERN = rf"^{_QUANTITY_NUMBER}{_QUANTITY_SUFFIX}?$"

_DURATION_UNITS = {  # nanoseconds, longest first (the order format_duration writes them)
    "h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1,
}
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|ms|s|m|h)")
_SIZE_SUFFIXES = {
    "Ei": 1024**6, "Pi": 1024**5, "Ti": 1024**4, "Gi": 1024**3, "Mi": 1024**2, "Ki": 1024,
    "E": 1000**6, "P": 1000**5, "T": 1000**4, "G": 1000**3, "M": 1000**2, "k": 1000,
}
_SIZE = re.compile(rf"({_NUMBER})(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_QUANTITY = re.compile(QUANTITY_PATTERN)
_QUANTITY_SCALES: dict[str, Fraction] = {
    **{suffix: Fraction(unit) for suffix, unit in _SIZE_SUFFIXES.items()},
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
}

# The longest duration a Go time.Duration (and so NATS) holds is just over 2562047h.
MAX_DURATION = 2562047 * 3600.0  # seconds
MAX_SIZE = 2**63 - 1  # bytes: JetStream's limits are signed 64-bit integers


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration; `math.inf` when too large for a float.

    Raises ValueError for text that is not a duration (the schema refuses it first).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        return _seconds(Fraction(value))
    text = value.strip()
    if re.fullmatch(_NUMBER, text):
        return _seconds(Fraction(text))
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {value!r}")
    nanos = sum(Fraction(number) * _DURATION_UNITS[unit]
                for number, _, unit in _DURATION_PART.findall(text))
    return _seconds(Fraction(nanos) / 10**9)


def _seconds(value: Fraction) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def format_duration(seconds: float) -> str | float:
    """A duration as kai.yaml writes it (`5s`, `500ms`, `1h30m`, `720h`, `0s`);
    parse_duration gives `seconds` back. A value that is no whole number of
    nanoseconds stays a number of seconds."""
    if not math.isfinite(seconds) or seconds < 0:
        return seconds
    nanos = round(Fraction(seconds) * 10**9)
    if nanos == 0:
        return "0s" if seconds == 0 else seconds
    parts = []
    rest = nanos
    for unit, size in _DURATION_UNITS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    text = "".join(parts)
    return text if parse_duration(text) == seconds else seconds


def parse_size(value: str | int) -> Fraction:
    """Bytes in a size (a Fraction: `1.5` is no whole number of bytes, which the
    caller refuses). Raises ValueError for text that is not a size."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(f"not a size: {value!r}")
    number, _, suffix = match.groups()
    return Fraction(number) * (_SIZE_SUFFIXES[suffix] if suffix else 1)


def format_size(size: int) -> str:
    """A size as kai.yaml writes it: the largest suffix that divides it (`1Gi`,
    `512Mi`, `1M`), else the plain number (`0`, `1500`)."""
    for suffix, unit in _SIZE_SUFFIXES.items():
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def parse_quantity(value: str) -> Fraction:
    """The amount a Kubernetes quantity says (`100m` is 1/10, `512Mi` 536870912), to
    compare quantities exactly; space around it is ignored (a YAML block scalar ends in a
    newline, which the schema's `$` lets through). Raises ValueError for text that is not
    a quantity (the schemas refuse it first)."""
    match = _QUANTITY.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"not a quantity: {value!r}")
    number, _, suffix = match.groups()
    amount = Fraction(number if not number.endswith(".") else number[:-1])
    if not suffix:
        return amount
    if suffix in _QUANTITY_SCALES:
        return amount * _QUANTITY_SCALES[suffix]
    return amount * Fraction(10) ** int(suffix[1:])  # an exponent: e3, E-2


def is_quantity(value: object) -> bool:
    """Is `value` a Kubernetes quantity as kai.yaml and krt.yml write one (text)?"""
    return isinstance(value, str) and _QUANTITY.fullmatch(value.strip()) is not None
