"""Safe file writes shared by the stages: atomic, and never over an existing file unless asked."""

from __future__ import annotations

import json
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Text version of atomic_write_bytes (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path: str | Path, payload: Any, overwrite: bool = True) -> Path:
    """Write payload as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n", overwrite)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
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
    """Create project/name; if it exists, project/name-2, -3, ... unless exist_ok reuses it."""
    base = Path(project) / name
    candidate, n = base, 2
    while candidate.exists() and not exist_ok:
        candidate = base.with_name(f"{name}-{n}")
        n += 1
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def check_targets(paths: Sequence[Path], exist_ok: bool) -> None:
    """Raise FileExistsError if outputs would replace files (unless exist_ok) or each other."""
    seen = set()
    for path in paths:
        if path in seen:
            raise FileExistsError(f"{path}: two inputs would write the same annotated file")
        seen.add(path)
        if path.exists() and not exist_ok:
            raise FileExistsError(f"{path}: already exists; refusing to overwrite it (use --exist-ok to replace)")
