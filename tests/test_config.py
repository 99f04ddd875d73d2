"""TrainConfig / PredictConfig: recipes, overrides, validation and JSON round trips."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from emorec.config import RECIPES, ConfigError, PredictConfig, TrainConfig, read_config_file, train_config
from emorec.runtime import DEFAULT_MODEL


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
