"""The gateway's cookies as the browser sees them.

The session cookie is HttpOnly, SameSite=Lax, Path=/, Secure (with the
``__Host-`` name) on https, and persistent only with "remember me". The
notice cookie tells the login page, once, why the user has to sign in again.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Config

NOTICE_COOKIE = "gateway_notice"


def set_session_cookie(response: web.StreamResponse, config: Config, token: str,
                       max_age: int | None) -> None:
    response.set_cookie(config.cookie_name, token, path="/", max_age=max_age, httponly=True,
                        samesite="Lax", secure=config.secure_cookies)


def clear_session_cookie(response: web.StreamResponse, config: Config) -> None:
    response.del_cookie(config.cookie_name, path="/", httponly=True, samesite="Lax",
                        secure=config.secure_cookies)


def set_notice(response: web.StreamResponse, config: Config, notice: str) -> None:
    response.set_cookie(NOTICE_COOKIE, notice, path=config.prefix, max_age=300,
                        httponly=True, samesite="Lax", secure=config.secure_cookies)
