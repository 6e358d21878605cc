"""Read an INI-like config the way GLib's GKeyFile does (DeepStream Gst-nvinfer loads its config with
`g_key_file_load_from_file` and reads each key with `g_key_file_get_integer/_double/_boolean/_*_list`). Stdlib only.

The behaviour was checked against libglib-2.0 2.74 through ctypes when this was written:
- `#` starts a comment only at the start of a line (leading blanks allowed); `;` is not a comment; any other line
  that is not `[group]` or `key=value` fails the whole file, as does a key before the first group.
- blanks around `=` are dropped; a value keeps its trailing blanks. A repeated key: the last one wins.
- integer: optional blanks, sign, decimal digits, then the end or a blank and anything (`1 # int8` reads as 1);
  it must fit a 32-bit int. Hex, `1.0` and `` fail.
- double: the whole value must be a number (`g_ascii_strtod`, hex too): trailing blanks or a comment fail.
- boolean: exactly `true`, `false`, `1` or `0`, then only blanks (`True`, `yes` fail).
- lists: `;`-separated, one trailing `;` allowed, elements read as above (a double element may not end in a blank).
"""
from __future__ import annotations

import re

_INT = re.compile(r"[ \t]*[+-]?[0-9]+(?:[ \t\n\v\f\r].*)?", re.DOTALL)
_FLOAT = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
                    re.IGNORECASE)
_HEX = re.compile(r"[ \t\n\v\f\r]*[+-]?0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?:p[+-]?[0-9]+)?", re.IGNORECASE)


class KeyFileError(ValueError):
    """The text is not a key file GLib would load."""


def parse(text: str) -> dict[str, dict[str, str]]:
    """Group -> key -> raw value. Raises KeyFileError for what `g_key_file_load_from_data` refuses."""
    groups: dict[str, dict[str, str]] = {}
    group = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line.strip() or line.startswith("#"):
            continue
        if line.rstrip().startswith("[") and line.rstrip().endswith("]"):
            name = line.rstrip()[1:-1]
            if not name or set(name) & set("[]") or not name.isprintable():
                raise KeyFileError(f"line {no}: invalid group name '{name}'")
            group = groups.setdefault(name, {})
        elif "=" in line and line.split("=", 1)[0].strip():
            if group is None:
                raise KeyFileError(f"line {no}: key file does not start with a group")
            key, value = line.split("=", 1)
            group[key.strip()] = value.lstrip(" \t")
        else:
            raise KeyFileError(f"line {no}: '{raw.strip()}' is not a key-value pair, group, or comment")
    return groups


def as_int(value: str) -> int:
    if not _INT.fullmatch(value):
        raise ValueError(f"'{value}' is not an integer")
    number = int(value.split()[0])
    if not -2**31 <= number < 2**31:
        raise ValueError(f"'{value}' does not fit a 32-bit integer")
    return number


def as_float(value: str) -> float:
    if _HEX.fullmatch(value):
        return float.fromhex(value.strip())
    if not _FLOAT.fullmatch(value):
        raise ValueError(f"'{value}' is not a number")
    return float(value)


def as_bool(value: str) -> bool:
    word = value.rstrip()
    if word not in ("true", "false", "1", "0"):
        raise ValueError(f"'{value}' is not true, false, 1 or 0")
    return word in ("true", "1")


def as_list(value: str) -> list[str]:
    items = re.split(r"(?<!\\);", value)
    return items[:-1] if items and items[-1] == "" else items


READERS = {"int": as_int, "float": as_float, "bool": as_bool, "string": str, "path": str}


def read(kind: str, value: str):
    """`value` read as `kind` (int, float, bool, string, path, or `<one of them>-list`); ValueError if GLib can't."""
    if kind.endswith("-list"):
        return [READERS[kind[:-5]](item) for item in as_list(value)]
    return READERS[kind](value)
