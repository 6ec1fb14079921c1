"""Where an IP address is, from a MaxMind-format database (GeoIP2/GeoLite2 City
or Country, or any database with the same fields), when one is configured.

maxminddb is MaxMind's own reader (its C extension where installed, the
file memory-mapped), so a lookup costs microseconds and reads nothing until
asked. Lookups happen
when sessions are shown, never per proxied request, and are cached.
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any

import maxminddb

from ..config import ConfigError


class Locator:
    def __init__(self, database: Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(database), maxminddb.MODE_AUTO)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError([f"geoip.database: cannot read {database} ({exc})"]) from None
        self.locate = functools.lru_cache(maxsize=4096)(self._locate)

    def _locate(self, ip: str) -> dict[str, str] | None:
        """``{"country", "region", "city"}`` (names in English, "" when unknown)."""
        try:
            ipaddress.ip_address(ip)
            record: Any = self._reader.get(ip)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return None
        if not isinstance(record, dict):
            return None
        country = _name(record.get("country"))
        regions = record.get("subdivisions") or []
        region = _name(regions[0]) if isinstance(regions, list) and regions else ""
        city = _name(record.get("city"))
        if not (country or region or city):
            return None
        return {"country": country, "region": region, "city": city}

    def close(self) -> None:
        self._reader.close()


def _name(node: Any) -> str:
    if not isinstance(node, dict):
        return ""
    names = node.get("names")
    if isinstance(names, dict) and isinstance(names.get("en"), str):
        return names["en"]
    code = node.get("iso_code")
    return code if isinstance(code, str) else ""
