"""Progress bars on a terminal only, and one summary line when a bar's work is done.

Every bar in emorec is made by `bar()`. It is drawn only when stderr is a
terminal, or when the command got `--progress` (`draw_bars(True)`):
written to a log, a bar would leave hundreds of carriage-return updates.
Either way, a finished bar leaves one line on stderr, e.g.
`photos: 56 img in 3.2 s`.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

_FORCED = {"bars": False}


def draw_bars(on: bool) -> None:
    """Draw bars even when stderr is not a terminal (the commands' `--progress` flag)."""
    _FORCED["bars"] = on


def bar(items: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True) -> Any:
    """A tqdm bar over items (or counting up to total): drawn on a terminal, else counted in silence,
    with a one-line summary on stderr when it closes. enabled=False: no bar and no summary."""
    from tqdm import tqdm

    class SummarizedBar(tqdm):
        def close(self) -> None:
            if self.disable:
                return
            done, elapsed = self.n, self.format_dict["elapsed"]
            super().close()
            counted = f"{done}/{self.total}" if self.total and done != self.total else f"{done}"
            print(f"{desc}: {counted} {unit}{'' if done == 1 else 's'} in {elapsed:.1f} s", file=sys.stderr, flush=True)

    sink = sys.stderr if _FORCED["bars"] or _is_terminal(sys.stderr) else _Silent()
    return SummarizedBar(items, total=total, desc=desc, unit=unit, leave=False, disable=not enabled, file=sink)


class _Silent:
    """Where a bar that is not drawn writes: nowhere (it still counts, for the summary)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False
