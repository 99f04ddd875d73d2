"""The family of expected failures: bad input, options or files, each told in one line.

Every error emorec raises on purpose for something the user can fix derives
from `EmorecError`; `emorec` prints those as one line naming the file or
option and the reason. Anything else is a bug and keeps its traceback. The
subclasses live beside the code that raises them (ConfigError in config,
InputFileError and OutputPathError in files, ImageReadError and DatasetError
in data, LabelFileError in labels, ModelError in runtime, EngineError in
distributed, TrainingDiverged in train, MissingExtra in extras); most also
derive from ValueError (MissingExtra from ImportError), as callers of the
Python API catch them that way. This module imports nothing.
"""

from __future__ import annotations


class EmorecError(Exception):
    """An expected failure the user can fix; the message names the file or option and the reason."""


class UsageError(EmorecError, ValueError):
    """Arguments that do not go together, or a setting this command cannot run with."""
