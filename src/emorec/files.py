"""Safe file writes shared by the stages: atomic, and never over an existing file unless asked."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write data to path through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (use --exist-ok to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must not reach the disk before the data (power loss)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Text version of atomic_write_bytes (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path: str | Path, payload: Any, overwrite: bool = True) -> Path:
    """Write payload as indented JSON, atomically (NaN and infinities become null)."""
    return atomic_write_text(path, to_json(payload) + "\n", overwrite)


def to_json(payload: Any, indent: int | None = 2) -> str:
    """Payload as strict JSON: NumPy values and paths converted, NaN and infinities written as null."""
    return json.dumps(_finite(payload), indent=indent, default=_jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    # json.dumps writes float("nan") as the bare word NaN, which JSON readers refuse.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _finite(value.tolist())
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_figure(figure, path: str | Path, overwrite: bool = True) -> Path:
    """Save a Matplotlib figure as PNG atomically."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue(), overwrite)


def new_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """Create project/name; if it exists, project/name-2, -3, ... unless exist_ok reuses it.

    Each candidate is claimed by one `mkdir`, so runs started at the same moment get different folders.
    """
    check_folder_name(name)
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        (project / name).mkdir(exist_ok=True)
        return project / name
    n = 1
    while True:
        candidate = project / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def check_folder_name(name: str) -> str:
    """Return name if it is a single folder name (no separators, not '.' or '..'); else raise ValueError."""
    separators = {os.sep, os.altsep} - {None}
    if not name or name in (".", "..") or any(sep in name for sep in separators):
        raise ValueError(f"{name!r} is not a single folder name")
    return name


def check_targets(paths: Sequence[Path], exist_ok: bool) -> None:
    """Raise FileExistsError if outputs would replace files (unless exist_ok) or each other."""
    seen = set()
    for path in paths:
        if path in seen:
            raise FileExistsError(f"{path}: two inputs would write the same annotated file")
        seen.add(path)
        if path.exists() and not exist_ok:
            raise FileExistsError(f"{path}: already exists; refusing to overwrite it (use --exist-ok to replace)")
