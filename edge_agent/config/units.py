"""Parsing of the human units used in the configuration: sizes, rates and durations.

    parse_size("512MiB")     -> 536870912       (bytes; SI and IEC prefixes, B optional)
    parse_rate("2Mbit/s")    -> 250000.0        (bytes per second; bit and byte rates)
    parse_duration("1m30s")  -> 90.0            (seconds; ms, s, m, h, d, combinable)

Plain numbers are taken as bytes, bytes per second and seconds. Each parse function raises
``ValueError`` with a message fit to show next to the key that held the value.

``format_size``, ``format_rate`` and ``format_duration`` write values back in the same
units (the reference shows defaults that way); ``plural`` writes a count with its noun
("1 record", "2 records") for status and log lines.
"""

from __future__ import annotations

import re
from datetime import datetime

from edge_agent.errors import EdgeAgentError

_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_RATE_FACTORS = {
    "bit/s": 1 / 8,
    "bps": 1 / 8,
    "kbit/s": 1000 / 8,
    "kbps": 1000 / 8,
    "mbit/s": 1000**2 / 8,
    "mbps": 1000**2 / 8,
    "gbit/s": 1000**3 / 8,
    "gbps": 1000**3 / 8,
    "b/s": 1,
    "kb/s": 1000,
    "mb/s": 1000**2,
    "gb/s": 1000**3,
    "kib/s": 1024,
    "mib/s": 1024**2,
    "gib/s": 1024**3,
}

_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z/]*)\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")


def parse_size(value: object) -> int:
    """Bytes from ``"512MiB"``, ``"1.5GB"``, ``"4096"`` or an integer."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '512MiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as '512MiB', got {value!r}")
    match = _NUMBER_UNIT.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_FACTORS:
        raise ValueError(f"expected a size such as '512MiB' or '2GB', got {value!r}")
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])


def parse_rate(value: object) -> float:
    """Bytes per second from ``"2Mbit/s"``, ``"256kbit/s"``, ``"1MiB/s"`` or a number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate such as '2Mbit/s', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"rate must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a rate such as '2Mbit/s', got {value!r}")
    match = _NUMBER_UNIT.match(value)
    if match is None:
        raise ValueError(f"expected a rate such as '2Mbit/s' or '500KiB/s', got {value!r}")
    unit = match.group(2)
    # 'Mb/s' is ambiguous in the wild; here an upper-case B is bytes, lower-case b is bits.
    key = unit.lower()
    if key in {"b/s", "kb/s", "mb/s", "gb/s"} and "b/" in unit:
        key = key.replace("b/s", "bit/s")
    if key not in _RATE_FACTORS:
        raise ValueError(f"expected a rate such as '2Mbit/s' or '500KiB/s', got {value!r}")
    return float(match.group(1)) * _RATE_FACTORS[key]


def parse_duration(value: object) -> float:
    """Seconds from ``"30s"``, ``"250ms"``, ``"1h30m"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '30s', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '30s', got {value!r}")
    text = value.strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or _DURATION_PART.sub("", text).strip():
        raise ValueError(f"expected a duration such as '30s', '250ms' or '1h30m', got {value!r}")
    return sum(float(number) * _DURATION_FACTORS[unit] for number, unit in parts)


def format_size(value: int) -> str:
    """The shortest exact text for a size: ``1073741824`` -> ``"1GiB"``."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    for unit, factor in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}B"


def format_rate(bytes_per_s: float) -> str:
    """The shortest exact text for a rate, in bits per second as links are sold:
    ``250000`` -> ``"2Mbit/s"``, ``125`` -> ``"1kbit/s"``, ``100`` -> ``"800bit/s"``."""
    bits = bytes_per_s * 8
    for unit, factor in (("Gbit/s", 1000**3), ("Mbit/s", 1000**2), ("kbit/s", 1000)):
        if bits >= factor and bits % factor == 0:
            return f"{bits / factor:g}{unit}"
    return f"{bits:g}bit/s"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` with its noun, singular for one: ``plural(1, "record")`` -> ``"1 record"``,
    ``plural(3, "retry", "retries")`` -> ``"3 retries"`` (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def format_duration(seconds: float) -> str:
    """The text for a duration: ``604800`` -> ``"7d"``, ``90`` -> ``"1m30s"``."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis >= factor:
            parts.append(f"{millis // factor}{unit}")
            millis %= factor
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms from a duration before now, an ISO 8601 time, or epoch ms."""
    if text.isdigit():
        return int(text)
    try:
        return now_ms - int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        raise EdgeAgentError(
            f"not a time: {text!r} (a duration before now such as '10m', an ISO time, or "
            "epoch milliseconds)"
        ) from None
