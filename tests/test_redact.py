"""One way to take credentials out of a URL (edge_agent.redact), for logs, the status
and the built-in RTSP client's request lines."""

from __future__ import annotations

import pytest

from edge_agent.redact import redact


@pytest.mark.parametrize(
    ("url", "redacted", "without_user"),
    [
        (
            "rtsp://admin:s3cret@10.0.0.7:554/stream1",
            "rtsp://admin:***@10.0.0.7:554/stream1",
            "rtsp://10.0.0.7:554/stream1",
        ),
        (  # IPv6: the brackets stay
            "rtsp://admin:pw@[fe80::1]:554/x",
            "rtsp://admin:***@[fe80::1]:554/x",
            "rtsp://[fe80::1]:554/x",
        ),
        ("rtsp://admin:pw@[::1]/x", "rtsp://admin:***@[::1]/x", "rtsp://[::1]/x"),
        (  # a percent-encoded ':' and '@' in the password
            "rtsp://viewer:se%3Acr%40t@cam.local/live",
            "rtsp://viewer:***@cam.local/live",
            "rtsp://cam.local/live",
        ),
        (  # '@' and ':' left unencoded: split at the last '@' and the first ':'
            "rtsp://viewer:p@ss:w@rd@cam.local:8554/live",
            "rtsp://viewer:***@cam.local:8554/live",
            "rtsp://cam.local:8554/live",
        ),
        (  # an empty password is still a password
            "rtsp://viewer:@cam.local/live",
            "rtsp://viewer:***@cam.local/live",
            "rtsp://cam.local/live",
        ),
        (  # query and fragment stay
            "http://u:p@Host.Example:8080/a/b?x=1#f",
            "http://u:***@Host.Example:8080/a/b?x=1#f",
            "http://Host.Example:8080/a/b?x=1#f",
        ),
    ],
)
def test_the_password_is_masked_or_user_and_password_dropped(
    url: str, redacted: str, without_user: str
) -> None:
    assert redact(url) == redacted
    assert redact(url, keep_user=False) == without_user


@pytest.mark.parametrize(
    "url",
    ["rtsp://10.0.0.7/stream1", "rtsp://[fe80::1]:554/x", "/dev/video0", "testsrc=size=640x480"],
)
def test_a_url_without_credentials_is_unchanged(url: str) -> None:
    assert redact(url) == url
    assert redact(url, keep_user=False) == url


def test_a_user_without_a_password_is_kept_unless_dropped() -> None:
    assert redact("rtsp://viewer@cam.local/live") == "rtsp://viewer@cam.local/live"
    assert redact("rtsp://viewer@cam.local/live", keep_user=False) == "rtsp://cam.local/live"
