"""What a User-Agent string says about a device: type, OS and browser.

Parsed with ua-parser (the maintained Browserscope rules) when sessions are
shown, never per proxied request, and off the event loop: one parse costs
about 2 ms of pure-Python regex matching (7 ms for a crafted string, so only
the first 256 characters are read), and loading the rules 0.2 s, which a
worker does once in a thread at start (``warm_up``). Results are cached by
the exact string, since one person's sessions mostly share a few.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ua_parser import parse

_MOBILE_OS = frozenset({"iOS", "Android", "iPadOS", "Windows Phone", "KaiOS", "HarmonyOS"})


@dataclass(frozen=True)
class Device:
    type: str       # desktop | mobile | tablet | bot | unknown
    os: str         # "iOS 17", "Windows 10", "Linux"; "" when unknown
    browser: str    # "Mobile Safari 17", "Chrome 156"; "" when unknown
    # What security events compare (auth/security.py): families, and the
    # browser's major version, never the full string.
    os_family: str = ""
    browser_family: str = ""
    browser_major: int | None = None

    def public(self) -> dict[str, str]:
        return {"type": self.type, "os": self.os, "browser": self.browser}

    def text(self) -> str:
        """ "Firefox 130 on Linux", for people."""
        if self.browser and self.os:
            return f"{self.browser} on {self.os}"
        return self.browser or self.os or "an unknown device"


def _name(family: str | None, major: str | None) -> str:
    if not family or family == "Other":
        return ""
    return f"{family} {major}" if major else family


@functools.lru_cache(maxsize=2048)
def describe(user_agent: str) -> Device:
    if not user_agent.strip():
        return Device("unknown", "", "")
    result = parse(user_agent[:256])
    ua, os, device = result.user_agent, result.os, result.device
    browser = _name(ua.family, ua.major) if ua else ""
    os_name = _name(os.family, os.major) if os else ""
    family = device.family if device else ""
    if family == "Spider":
        kind = "bot"
    elif "iPad" in family or "Tablet" in family or (os and os.family == "Android"
                                                     and "Mobile" not in user_agent):
        kind = "tablet"
    elif (os and os.family in _MOBILE_OS) or (ua and "Mobile" in ua.family):
        kind = "mobile"
    elif browser or os_name:
        kind = "desktop"
    else:
        kind = "unknown"
    major = ua.major if ua and ua.major and ua.major.isdigit() else None
    return Device(kind, os_name, browser, os_family=os.family if os else "",
                  browser_family=ua.family if ua else "",
                  browser_major=int(major) if major else None)


def warm_up() -> None:
    """Load the rules (about 0.2 s); run in a thread, away from the event loop."""
    describe("Mozilla/5.0 (X11; Linux x86_64) warm-up")
