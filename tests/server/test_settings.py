"""Settings resolve once: flag over DEL_* environment variable over default, validated."""

from __future__ import annotations

import argparse

import pytest

from del_server.settings import DType, Settings, add_arguments, resolve


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_beats_environment_beats_default():
    env = {"DEL_MAX_NEW_TOKENS": "99", "DEL_PORT": "6000", "DEL_ENABLE_RAW": "true"}
    settings = resolve(parse("--port", "7000"), env)
    assert settings.port == 7000
    assert settings.max_new_tokens == 99
    assert settings.enable_raw is True
    assert settings.max_running == Settings().max_running


def test_choices_fail_before_anything_loads():
    with pytest.raises(SystemExit):
        parse("--dtype", "float64")
    assert resolve(parse("--dtype", "bfloat16"), {}).dtype is DType.bfloat16


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEL_MAX_RUNNING": "0"}, "max_running must be >= 1"),
        ({"DEL_PORT": "eighty"}, "DEL_PORT='eighty'"),
        ({"DEL_ENABLE_RAW": "maybe"}, "not a boolean"),
        ({"DEL_MODEL_FORMAT": "gguf"}, "model_format"),
        ({"DEL_DEFAULT_NEW_TOKENS": "300"}, "default_new_tokens"),
        ({"DEL_HEALTH_PORT": "50051"}, "port, metrics_port and health_port must differ"),
        ({"DEL_HEALTH_PORT": "-2"}, "health_port must lie in"),
        ({"DEL_PORT": "99999"}, "port must lie in 0..65535, got 99999"),
    ],
)
def test_invalid_values_name_the_setting(env, message):
    with pytest.raises(ValueError, match=message):
        resolve(parse(), env)
