"""Values that come from outside the code (a file, a ``--model-opt``), checked for type and bounds
where they are read: a damaged or hand-made file is one line naming the file and the field, not a
traceback later, an allocation of hundreds of GB, nor a run that silently does nothing.

``check`` raises TypeError (wrong kind) or ValueError (out of bounds), as a constructor's
argument check does; ``file_field`` reads one field of a file and turns those into ``UserError``.
"""
import csv
import json
import math

from .errors import UserError

KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
         list: "a list"}


def _is(value, kind):
    if isinstance(value, bool) and kind is not bool:  # True is an int to Python, never to a user
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, (list, tuple) if kind is list else kind)


def _shown(value):
    text = repr(value)
    return f"{text[:40]}... ({type(value).__name__})" if len(text) > 40 else f"{text} ({type(value).__name__})"


def check(name, value, kind, low=None, high=None, each=None, length=None):
    """``value`` if it is a ``kind`` (``int``, ``float`` for any finite number, ``str``, ``bool``,
    ``dict``, ``list``) within [``low``, ``high``]; a list of ``length`` items, each an ``each``
    within those bounds. ``name`` says what it is in the message."""
    if not _is(value, kind):
        raise TypeError(f"{name} must be {KINDS.get(kind, 'a ' + kind.__name__)}, got {_shown(value)}")
    if kind is list:
        if length is not None and len(value) != length:
            raise ValueError(f"{name} must have {length} item(s), got {len(value)}")
        if each is not None:
            for i, item in enumerate(value):
                check(f"{name}[{i}]", item, each, low, high)
        return value
    if kind in (int, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low}, {high}]" if low is not None and high is not None else \
                f"at least {low}" if low is not None else f"at most {high}"
            raise ValueError(f"{name} must be {'in ' if bounds.startswith('[') else ''}{bounds}, got {value}")
    return value


def file_field(path, mapping, key, kind, optional=False, within="", **bounds):
    """``mapping[key]`` of the file at ``path`` (``within``: where the mapping sits in it, e.g.
    'args'), checked by ``check`` (``bounds``: its ``low``, ``high``, ``each``, ``length``);
    missing or None is allowed only when ``optional``."""
    name = f"{within}.{key}" if within else key
    if mapping.get(key) is None:
        if optional:
            return None
        raise UserError(f"{path}: field {name!r} is missing; not a file this project wrote, or a damaged one")
    try:
        return check(f"field {name!r}", mapping[key], kind, **bounds)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: {exc}; not a file this project wrote, or a damaged one") from None


def mapping_of(path, value, what="the file"):
    """``value`` if it is a mapping (a JSON object, a checkpoint's dict), else one line."""
    if not isinstance(value, dict):
        raise UserError(f"{path}: {what} is {_shown(value)}, not a mapping; not a file this project wrote")
    return value


def read_rows(path, keys=()):
    """The rows of a table this project wrote (a JSON list of objects: results.json, a bench's
    table), each with the fields ``keys``; a file that is not one is one line."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, not UTF-8
        raise UserError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path}: not a table (a JSON list of objects); not a file this project wrote")
    missing = next((k for r in rows for k in keys if k not in r), None)
    if missing is not None:
        raise UserError(f"{path}: a row has no field {missing!r}; not a file this project wrote, or a damaged one")
    return rows


def read_log(path):
    """-> (header, rows) of a run's log.csv, each row a list of strings. A field beyond csv's
    limit, bytes that are not text or a folder in the file's place are one line."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the run's log {path}: {getattr(exc, 'strerror', None) or exc}; "
                        "move it away to continue without it") from None
    return (lines[0], lines[1:]) if lines else ([], [])


def log_row(row, header, epochs_done=None):
    """Whether a row of log.csv is a whole epoch's: as many fields as the header, an epoch from 1
    (to ``epochs_done``), numbers after it (``nan`` for an epoch not validated)."""
    epoch = row[0] if row else ""
    if len(row) != len(header) or not (epoch.isascii() and epoch.isdigit() and len(epoch) < 10):
        return False
    if int(epoch) < 1 or (epochs_done is not None and int(epoch) > epochs_done):
        return False
    try:
        return all(not math.isinf(float(v)) for v in row[1:])
    except ValueError:
        return False
