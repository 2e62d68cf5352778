import json

import pytest

from catphish.config import PRESETS, apply_override, config_from_dict, load_config, preset_config
from catphish.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_valid_and_round_trips(name):
    config = load_config(preset=name)
    assert config.preset == name
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_presets_differ_in_dimensionality():
    assert preset_config("demo").data.spatial_dims == 2
    assert preset_config("small3d").data.grid == (64, 64, 48)
    assert preset_config("paper").data.grid == (128, 192, 192)


def test_override_parses_values_and_keeps_types():
    config = load_config(preset="demo", overrides=["diffusion.steps=7", "data.grid=[32, 32]", "classifier.mamba=true"])
    assert config.diffusion.steps == 7
    assert config.data.grid == (32, 32)
    assert config.classifier.mamba is True


def test_int_is_accepted_for_float_field():
    assert apply_override(preset_config("demo"), "diffusion.lr=1").diffusion.lr == 1.0


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("diffusion.stepz=3", "diffusion.stepz"),
        ("difusion.steps=3", "difusion"),
        ("diffusion.steps=three", "diffusion.steps"),
        ("classifier.mamba=3", "classifier.mamba"),
        ("synthesis.sampler=euler", "synthesis.sampler"),
        ("data.grid=64", "data.grid"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(preset="demo", overrides=[override])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["diffusion.steps"])


def test_yaml_file_sets_preset_and_values(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("preset: small3d\ndiffusion:\n  steps: 12\n")
    config = load_config(path)
    assert config.preset == "small3d" and config.diffusion.steps == 12 and config.data.spatial_dims == 3


def test_json_file_with_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"autoencoder": {"chanels": [4, 8]}}))
    with pytest.raises(ConfigError, match=r"autoencoder\.chanels"):
        load_config(path)


def test_missing_and_malformed_config_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(bad)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="data.grid"):
        load_config(overrides=["data.grid=[64, 64, 64]"])
    with pytest.raises(ConfigError, match="divisible"):
        load_config(overrides=["data.grid=[30, 30]"])
    with pytest.raises(ConfigError, match="filter_percentile"):
        load_config(overrides=["synthesis.filter_percentile=100"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_exponent_notation_without_a_dot_is_a_number():
    assert load_config(overrides=["autoencoder.lr=1e-3"]).autoencoder.lr == 0.001  # YAML 1.1 reads it as text
    with pytest.raises(ConfigError, match="'autoencoder.lr' must be a number"):
        load_config(overrides=["autoencoder.lr=fast"])
