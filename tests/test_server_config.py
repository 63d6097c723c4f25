"""Server configuration: flags over environment over TOML file over defaults, with errors naming the option."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tokentrim_server.server.app import model_spec
from tokentrim_server.server.config import ConfigError, ServerConfig, load_config, parse_size


def test_sources_are_layered(tmp_path):
    config_file = tmp_path / "server.toml"
    config_file.write_text('max_sessions = 3\ndrain_seconds = 12.5\nlisten = ["127.0.0.1:1", "127.0.0.1:2"]\n'
                           'default_policy = "tokentrim"\n')
    env = {"TOKENTRIM_CONFIG": str(config_file), "TOKENTRIM_MAX_SESSIONS": "5", "TOKENTRIM_AUTH_TOKENS": "a, b"}
    config = load_config([], env)
    assert (config.max_sessions, config.drain_seconds, config.default_policy) == (5, 12.5, "tokentrim")
    assert config.listen == ["127.0.0.1:1", "127.0.0.1:2"] and config.tokens() == ["a", "b"]
    config = load_config(["--max-sessions", "7", "--listen", "0.0.0.0:9"], env)
    assert config.max_sessions == 7 and config.listen == ["0.0.0.0:9"]
    assert load_config([], {}) == ServerConfig()


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--max-sessions", "many"], {}, "max_sessions (--max-sessions) must be int"),
        ([], {"TOKENTRIM_MAX_CREDITS": "0"}, "max_credits must be > 0"),
        (["--tls-cert", "c.pem"], {}, "tls_cert and tls_key must be given together"),
        (["--cache-budget", "lots"], {}, "cache_budget: expected a size"),
        (["--default-credits", "20"], {}, "default_credits (20) must be <= max_credits (16)"),
        (["--jpeg-quality", "0"], {}, "jpeg_quality must be in [1, 100]"),
    ],
)
def test_bad_values_name_the_option(argv, env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(argv, env)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_sesions = 3\n")
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(["--config", str(bad)], {})
    with pytest.raises(ConfigError, match="config file"):
        load_config(["--config", str(tmp_path / "missing.toml")], {})


def test_token_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("first  # the CI client\n\n# comment only\nsecond\n")
    assert load_config(["--auth-token-file", str(tokens)], {}).tokens() == ["first", "second"]
    with pytest.raises(ConfigError, match="auth_token_file"):
        load_config(["--auth-token-file", str(tmp_path / "nope")], {}).tokens()


def test_sizes():
    assert parse_size("8GiB") == 8 * 2**30 and parse_size("512MB") == 512 * 10**6 and parse_size("1024") == 1024
    with pytest.raises(ValueError):
        parse_size("-3GiB")


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("YES", True), (" on ", True), ("1", True), ("False", False), ("no", False), ("OFF", False),
     ("0", False)],
)
def test_bool_words_from_the_environment(text, expected):
    assert load_config([], {"TOKENTRIM_COMPILE": text}).compile is expected


def test_bool_options_are_layered(tmp_path):
    config_file = tmp_path / "server.toml"
    config_file.write_text("compile = true\n")
    env = {"TOKENTRIM_CONFIG": str(config_file)}
    assert load_config([], env).compile is True
    assert load_config([], {**env, "TOKENTRIM_COMPILE": "off"}).compile is False
    assert load_config(["--no-compile"], {"TOKENTRIM_COMPILE": "yes"}).compile is False
    assert load_config(["--compile"], {**env, "TOKENTRIM_COMPILE": "0"}).compile is True
    assert load_config([], {}).compile is False


def test_every_bool_option_has_a_negating_flag():
    names = [spec.name for spec in dataclasses.fields(ServerConfig) if spec.type == "bool"]
    assert "compile" in names
    for name in names:
        flag = name.replace("_", "-")
        assert getattr(load_config([f"--{flag}"], {}), name) is True
        assert getattr(load_config([f"--no-{flag}"], {}), name) is False


@pytest.mark.parametrize(
    "toml, env, message",
    [
        (None, {"TOKENTRIM_COMPILE": "maybe"}, "compile (environment TOKENTRIM_COMPILE) must be bool"),
        ("compile = 1", {}, "compile (config file"),
        ('compile = "sometimes"', {}, "compile (config file"),
        ("max_sessions = true", {}, "max_sessions (config file"),
        (None, {"TOKENTRIM_WARMUP_CHUNKS": "-2"}, "warmup_chunks must be >= -1"),
    ],
)
def test_bad_bool_and_warmup_values_name_the_option(tmp_path, toml, env, message):
    if toml is not None:
        config_file = tmp_path / "server.toml"
        config_file.write_text(toml + "\n")
        env = {**env, "TOKENTRIM_CONFIG": str(config_file)}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config([], env)


def test_model_spec_carries_compile():
    assert model_spec(load_config(["--compile"], {})).compile is True
    assert model_spec(load_config([], {})).compile is False
