"""normalize_path and has_prefix: the path that is judged is the path forwarded."""

from __future__ import annotations

import pytest

from gateway.proxy.paths import BadPath, has_prefix, normalize_path, without_path_parameters


@pytest.mark.parametrize("raw, decoded, encoded", [
    ("/", "/", "/"),
    ("/a/b", "/a/b", "/a/b"),
    # dot segments
    ("/a/../b", "/b", "/b"),
    ("/a/./b", "/a/b", "/a/b"),
    ("/static/../admin", "/admin", "/admin"),
    ("/a/b/../../c", "/c", "/c"),
    ("/a/..", "/", "/"),
    ("/a/b/..", "/a/", "/a/"),
    ("/a/.", "/a/", "/a/"),
    # encoded dot segments are resolved exactly like plain ones
    ("/a/%2e%2e/b", "/b", "/b"),
    ("/static/%2E%2E/admin", "/admin", "/admin"),
    ("/a/.%2e/b", "/b", "/b"),
    ("/a/%2e/b", "/a/b", "/a/b"),
    # empty segments collapse
    ("//a//b", "/a/b", "/a/b"),
    ("///admin", "/admin", "/admin"),
    ("/static//../admin", "/admin", "/admin"),
    # trailing slash preserved
    ("/a/", "/a/", "/a/"),
    ("/a/b/", "/a/b/", "/a/b/"),
    ("/a//", "/a/", "/a/"),
    # dots that are not dot segments
    ("/a/...", "/a/...", "/a/..."),
    ("/a..b/c", "/a..b/c", "/a..b/c"),
    ("/.well-known/x", "/.well-known/x", "/.well-known/x"),
    # canonical percent-encoding: unreserved decoded, the rest upper-case escaped
    ("/a%41", "/aA", "/aA"),
    ("/%7euser", "/~user", "/~user"),
    ("/a%20b", "/a b", "/a%20b"),
    ("/a b", "/a b", "/a%20b"),
    ("/caf%c3%a9", "/café", "/caf%C3%A9"),
    ("/café", "/café", "/caf%C3%A9"),
    ("/a%3fb", "/a?b", "/a%3Fb"),
    ("/a%23b", "/a#b", "/a%23b"),
    ("/a%25b", "/a%b", "/a%25b"),
    ("/%252e%252e/x", "/%2e%2e/x", "/%252e%252e/x"),
    ("/a;b=c", "/a;b=c", "/a;b=c"),
    ("/x:y@z!$&'()*+,=", "/x:y@z!$&'()*+,=", "/x:y@z!$&'()*+,="),
    # the query is not part of the path
    ("/a/../b?x=/../y", "/b", "/b"),
])
def test_normalize(raw: str, decoded: str, encoded: str) -> None:
    assert normalize_path(raw) == (decoded, encoded)


@pytest.mark.parametrize("raw", ["/a/../b", "/a%20b", "/caf%c3%a9", "//x/./y/", "/a%3fb"])
def test_normalize_is_idempotent(raw: str) -> None:
    _, encoded = normalize_path(raw)
    assert normalize_path(encoded) == normalize_path(raw)


@pytest.mark.parametrize("raw, why", [
    # encoded slash and backslash: an upstream may split on them, we would not
    ("/a%2fb", "encoded slash"),
    ("/a%2Fb", "encoded slash"),
    ("/static%2f..%2fadmin", "encoded slash"),
    ("/a%5cb", "backslash"),
    ("/a%5Cb", "backslash"),
    ("/a\\b", "backslash"),
    ("/static/..\\admin", "backslash"),
    # NUL and control characters
    ("/a%00b", "NUL"),
    ("/admin%00.css", "NUL"),
    ("/a%01b", "control"),
    ("/a%0d%0aX-Injected:%201", "control"),
    ("/a%09b", "control"),
    ("/a%7fb", "control"),
    ("/a\x01b", "control"),
    # Tomcat path parameters on dot segments
    ("/a/..;/b", "dot segment"),
    ("/static/..;/admin", "dot segment"),
    ("/a/.;x/b", "dot segment"),
    ("/a/..;jsessionid=1/b", "dot segment"),
    ("/a/%2e%2e;/b", "dot segment"),
    ("/a/..%3b/b", "dot segment"),
    # above the root
    ("/..", "root"),
    ("/../etc/passwd", "root"),
    ("/a/../../b", "root"),
    ("/%2e%2e/x", "root"),
    ("/.%2e/x", "root"),
    # broken escapes
    ("/%zz", "percent"),
    ("/a%2", "percent"),
    ("/a%", "percent"),
    ("/%g0", "percent"),
    # invalid UTF-8
    ("/%ff", "UTF-8"),
    ("/%c3", "UTF-8"),
    ("/%c0%af", "UTF-8"),
    ("/%ed%a0%80", "UTF-8"),
    # not origin-form
    ("a/b", "start with '/'"),
    ("", "start with '/'"),
    ("*", "start with '/'"),
    ("http://evil.example/admin", "start with '/'"),
])
def test_normalize_refuses(raw: str, why: str) -> None:
    with pytest.raises(BadPath) as info:
        normalize_path(raw)
    assert why.lower() in str(info.value).lower()


@pytest.mark.parametrize("path, prefix, expected", [
    ("/app", "/app", True),
    ("/app/", "/app", True),
    ("/app/x/y", "/app", True),
    ("/apple", "/app", False),
    ("/ap", "/app", False),
    ("/", "/app", False),
    ("/anything", "/", True),
    ("/", "/", True),
    ("/static/x.css", "/static/", True),
    ("/static/", "/static/", True),
    ("/static", "/static/", False),
    ("/staticfile", "/static/", False),
    ("/api/v2/x", "/api/v2", True),
    ("/api/v20", "/api/v2", False),
    ("/API/x", "/api", False),
])
def test_has_prefix(path: str, prefix: str, expected: bool) -> None:
    assert has_prefix(path, prefix) is expected


@pytest.mark.parametrize("path, servlet", [
    ("/;/admin/x", "/admin/x"),
    ("/;x=1/admin/x", "/admin/x"),
    ("/;jsessionid=1/admin/x", "/admin/x"),
    ("/admin;x/y", "/admin/y"),
    ("/admin;x", "/admin"),
    ("/a;b/", "/a/"),
    ("/a/;x", "/a/"),
    ("/;", "/"),
    ("/plain/path", "/plain/path"),
])
def test_without_path_parameters(path: str, servlet: str) -> None:
    assert without_path_parameters(path) == servlet
