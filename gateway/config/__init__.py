"""The one YAML config file: its schema, defaults and validation."""

from .load import (AssertionConfig, Config, ConfigError, IdentityHeaders, Limits, RedisConfig,
                   Rule, Section, SessionConfig, Upstream, bad_role, build_config,
                   default_config_path, load_config, origin_of, parse_duration, parse_size,
                   read_yaml)

__all__ = ["AssertionConfig", "Config", "ConfigError", "IdentityHeaders", "Limits",
           "RedisConfig", "Rule", "Section", "SessionConfig", "Upstream", "bad_role",
           "build_config", "default_config_path", "load_config", "origin_of",
           "parse_duration", "parse_size", "read_yaml"]
