"""The expected-failure family: every error emorec raises for the user to fix is an EmorecError."""

from __future__ import annotations

import pytest

from emorec.config import ConfigError
from emorec.data import DatasetError
from emorec.images import ImageReadError
from emorec.distributed import EngineError
from emorec.errors import EmorecError, UsageError
from emorec.extras import MissingExtra
from emorec.files import InputFileError, OutputPathError
from emorec.labels import LabelFileError
from emorec.runtime import ModelError
from emorec.train import TrainingDiverged

VALUE_ERRORS = (ConfigError, DatasetError, ImageReadError, EngineError, UsageError, InputFileError, OutputPathError,
                LabelFileError, ModelError, TrainingDiverged)


@pytest.mark.parametrize("error", VALUE_ERRORS, ids=lambda error: error.__name__)
def test_expected_failures_are_emorec_errors_and_still_value_errors(error):
    assert issubclass(error, EmorecError) and issubclass(error, ValueError)


def test_a_missing_extra_is_an_emorec_error_and_still_an_import_error():
    assert issubclass(MissingExtra, EmorecError) and issubclass(MissingExtra, ImportError)


def test_a_plain_value_error_is_not_an_expected_failure():
    assert not issubclass(ValueError, EmorecError)
