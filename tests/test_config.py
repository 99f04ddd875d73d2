"""TrainConfig / PredictConfig: recipes, overrides, validation and JSON round trips."""

from __future__ import annotations

import json
import os
from dataclasses import fields

import pytest

from emorec.cli import main
from emorec.config import RECIPES, ConfigError, PredictConfig, TrainConfig, read_config_file, train_config
from emorec.catalog import DEFAULT_MODEL


def test_defaults_without_recipe():
    cfg = train_config(data="faces")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    assert cfg.to_dict() == {**defaults, "data": "faces"}
    assert cfg.recipe == ""
    assert cfg.channels == 1 and cfg.run_name == "seed"


def test_recipe_values_are_applied():
    cfg = train_config("fer2013", data="faces")
    for key, value in RECIPES["fer2013"].items():
        assert getattr(cfg, key) == value, key
    assert cfg.recipe == "fer2013"
    assert cfg.run_name == "vgg"
    # Keys the recipe does not set keep their defaults.
    assert cfg.image_size == TrainConfig.image_size and cfg.val_split == TrainConfig.val_split


def test_explicit_values_override_the_recipe():
    cfg = train_config("fer2013", data="faces", epochs=3, arch="seed", augment=False, name="quick")
    assert (cfg.epochs, cfg.arch, cfg.augment, cfg.run_name) == (3, "seed", False, "quick")
    assert cfg.optimizer == RECIPES["fer2013"]["optimizer"]


def test_rgb_has_three_channels():
    assert train_config(color_mode="rgb").channels == 3


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="epoch_count"):
        train_config(data="faces", epoch_count=3)


def test_unknown_recipe_is_named():
    with pytest.raises(ConfigError, match="imagenet"):
        train_config("imagenet")


@pytest.mark.parametrize(
    "key, value",
    [
        ("arch", "vgg19"),
        ("color_mode", "cmyk"),
        ("optimizer", "rmsprop"),
        ("schedule", "step"),
        ("class_weight", "inverse"),
    ],
)
def test_unknown_choice_is_named(key, value):
    with pytest.raises(ConfigError, match=key) as caught:
        train_config(**{key: value})
    assert value in str(caught.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("val_split", 0.95),
        ("val_split", -0.1),
        ("epochs", 0),
        ("batch_size", 0),
        ("image_size", 8),
        ("learning_rate", 0.0),
        ("learning_rate", 20.0),
        ("weight_decay", 1.5),
        ("label_smoothing", 0.6),
        ("dropout", 1.0),
        ("patience", -1),
        ("time_limit", -1.0),
        ("warmup_epochs", -1),
    ],
)
def test_out_of_range_is_named(key, value):
    with pytest.raises(ConfigError, match=f"{key}=.*out of range"):
        train_config(**{key: value})


@pytest.mark.parametrize("key, value", [("val_split", 0.9), ("image_size", 16), ("dropout", 0.0), ("patience", 0)])
def test_range_bounds_are_inclusive(key, value):
    assert getattr(train_config(**{key: value}), key) == value


def test_zero_val_split_needs_a_val_set():
    with pytest.raises(ConfigError, match="val_split=0"):
        train_config(data="faces", val_split=0.0)
    assert train_config(data="faces", val="held_out", val_split=0.0).val == "held_out"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_save_writes_json_that_rebuilds_the_config(tmp_path):
    cfg = train_config("fer2013", data="faces", val="val_faces", epochs=7, name="exp")
    path = tmp_path / "config.json"
    cfg.save(path)
    payload = json.loads(path.read_text())
    assert payload["epochs"] == 7 and payload["recipe"] == "fer2013" and payload["val"] == "val_faces"
    assert TrainConfig(**payload) == cfg


def test_predict_config_ranges():
    assert PredictConfig(sources=["a.jpg"], stride=3, smooth=0.5).stride == 3
    with pytest.raises(ConfigError, match="stride"):
        PredictConfig(stride=0)
    with pytest.raises(ConfigError, match="smooth"):
        PredictConfig(smooth=1.0)
    assert PredictConfig(track_buffer=0.5).track_buffer == 0.5
    with pytest.raises(ConfigError, match="track_buffer"):
        PredictConfig(track_buffer=-1)


def test_list_defaults_are_not_shared():
    first, second = PredictConfig(), PredictConfig()
    first.sources.append("x.jpg")
    assert second.sources == []


def test_saved_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = train_config(data="faces", val="held_out", weights="start.keras", project="runs").with_absolute_paths()
    assert (cfg.data, cfg.val, cfg.weights, cfg.project) == tuple(str(tmp_path / p) for p in
                                                                  ("faces", "held_out", "start.keras", "runs"))
    assert train_config(data="faces", weights="bundled").with_absolute_paths().weights == DEFAULT_MODEL
    assert train_config(data="faces", weights="fer2013").with_absolute_paths().weights == "fer2013"


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", ".."])
def test_run_names_are_single_folder_names(name):
    with pytest.raises(ConfigError, match="single folder name") as caught:
        train_config(name=name)
    assert caught.value.key == "name"


def test_errors_name_their_key():
    with pytest.raises(ConfigError) as caught:
        train_config(optimizer="rmsprop")
    assert caught.value.key == "optimizer" and "rmsprop" in caught.value.problem


def test_config_files_in_json_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text('{"epochs": 5, "optimizer": "sgd"}')
    (tmp_path / "a.yaml").write_text("epochs: 5\noptimizer: sgd\n")
    assert read_config_file(tmp_path / "a.json") == read_config_file(tmp_path / "a.yaml") == {"epochs": 5,
                                                                                             "optimizer": "sgd"}


@pytest.mark.parametrize("name, text, message", [("x.json", "{not json", "not valid JSON"),
                                                  ("x.yaml", "epochs: [5", "not valid YAML"),
                                                  ("x.json", "[1, 2]", "mapping"),
                                                  ("missing.json", None, "missing.json")])
def test_bad_config_files_are_named(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_config_file(tmp_path / name)
    assert str(tmp_path / name) in str(caught.value)


def test_a_run_config_rebuilds_the_same_config(tmp_path):
    cfg = train_config("fer2013", data="faces", epochs=7).with_absolute_paths()
    cfg.save(tmp_path / "config.json")
    values = read_config_file(tmp_path / "config.json")
    assert train_config(values.pop("recipe"), **values) == cfg


def test_devices_are_a_count_or_all():
    assert train_config(data="faces", devices=2).devices == "2"
    assert train_config(data="faces", devices="ALL").devices == "all"
    for bad in ("0", "two", -1, True):
        with pytest.raises(ConfigError, match="devices"):
            train_config(data="faces", devices=bad)


@pytest.mark.parametrize("key, value, expected", [
    ("epochs", 1.5, "whole number"), ("seed", "abc", "whole number"), ("image_size", 48.7, "whole number"),
    ("batch_size", 2.5, "whole number"), ("epochs", True, "whole number"), ("learning_rate", "0.1", "number"),
    ("data", ["a", "b"], "text"), ("arch", 3, "text"), ("project", {"a": 1}, "text"), ("name", b"\x00", "text"),
    ("augment", "no", "true or false"), ("mixed_precision", "false", "true or false"), ("exist_ok", 0, "true or false"),
    ("val", 5, "text or null"), ("seed", -1, "out of range"), ("seed", 2**40, "out of range"),
])
def test_values_of_the_wrong_type_are_named_with_the_expected_type(key, value, expected):
    with pytest.raises(ConfigError, match=expected) as caught:
        train_config(**{"data": "faces", key: value})
    assert caught.value.key == key


def test_whole_floats_are_taken_as_ints_and_paths_as_text(tmp_path):
    cfg = train_config(data=tmp_path, epochs=3.0, learning_rate=1)
    assert (cfg.epochs, cfg.data, cfg.learning_rate) == (3, str(tmp_path), 1.0)
    assert isinstance(cfg.epochs, int) and isinstance(cfg.learning_rate, float)


def test_other_configs_are_typed_too():
    with pytest.raises(ConfigError, match="stride"):
        PredictConfig(sources=["a.jpg"], stride=1.5)
    with pytest.raises(ConfigError, match="sources"):
        PredictConfig(sources="a.jpg")
    assert PredictConfig(sources=["a.jpg"], tta=True).tta == "flip"
    assert PredictConfig(sources=["a.jpg"], tta=None).tta == "none"


@pytest.mark.parametrize("name, text, message", [
    ("laughs.yaml", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nepochs: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "aliases"),
    ("deep.yaml", "epochs: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested|deep"),
    ("deep.json", '{"epochs": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested"),
    ("keys.yaml", "1: 2\n", "mapping"),
    ("big.json", '{"name": "' + "x" * (2**20 + 10) + '"}', "limit"),
])
def test_hostile_config_files_are_refused_quickly(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        read_config_file(tmp_path / name)
    assert str(tmp_path / name) in str(caught.value) and "\n" not in str(caught.value)


def test_a_binary_yaml_value_is_refused_by_type(tmp_path):
    (tmp_path / "bin.yaml").write_text("name: !!binary aGVsbG8=\n")
    with pytest.raises(ConfigError, match="name: expected text, got b'hello' \\(binary data\\)"):
        train_config(**read_config_file(tmp_path / "bin.yaml"))


def test_a_fifo_or_device_config_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(ConfigError, match="FIFO"):
        read_config_file(tmp_path / "pipe.json")
    with pytest.raises(ConfigError, match="character device"):
        read_config_file("/dev/zero")


@pytest.mark.parametrize("text, flag", [('{"epochs": 1.5}', "epochs"), ('{"seed": "abc"}', "seed"),
                                        ('{"exist_ok": "false"}', "exist_ok"), ('{"recipe": [1]}', "recipe")])
def test_cli_refuses_a_bad_config_file_in_one_line_and_creates_nothing(tmp_path, capsys, text, flag):
    (tmp_path / "c.json").write_text(text)
    code = main(["train", str(tmp_path / "faces"), "--config", str(tmp_path / "c.json"),
                 "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "c.json") in err and flag in err
    assert not (tmp_path / "runs").exists()
