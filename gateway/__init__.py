"""gateway: a reverse-proxy authentication gateway for legacy web apps."""

__version__ = "0.1.0"
