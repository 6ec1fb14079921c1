"""The one YAML config file: its schema, its values' parsers, and the loader."""

from .load import ConfigError, Section, build_config, default_config_path, load_config, read_yaml
from .schema import (AssertionConfig, ClusterConfig, Config, IdentityHeaders, Limits, MfaConfig,
                     RateLimitRule, RedisConfig, Rule, SentinelConfig, SessionConfig,
                     ThrottleConfig, Upstream, UsersConfig)
from .values import bad_role, origin_of, parse_duration, parse_size

__all__ = ["AssertionConfig", "ClusterConfig", "Config", "ConfigError", "IdentityHeaders",
           "Limits", "MfaConfig", "RateLimitRule", "RedisConfig", "Rule", "Section",
           "SentinelConfig", "SessionConfig", "ThrottleConfig", "Upstream", "UsersConfig",
           "bad_role", "build_config", "default_config_path", "load_config", "origin_of",
           "parse_duration", "parse_size", "read_yaml"]
