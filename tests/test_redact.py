"""One way to take credentials out of a URL (edge_agent.redact), for logs, the status
and the built-in RTSP client's request lines."""

from __future__ import annotations

import pytest

from edge_agent.redact import redact, redact_text


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


def test_a_malformed_ipv6_url_is_still_redacted_not_raised_on() -> None:
    assert redact("rtsp://admin:pw@[fe80::1/x") == "rtsp://admin:***@[fe80::1/x"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (  # PyAV's error names the file it could not open, in quotes
            "[Errno 111] Connection refused: 'rtsp://admin:s3cret@10.0.0.7:554/stream1'",
            "[Errno 111] Connection refused: 'rtsp://admin:***@10.0.0.7:554/stream1'",
        ),
        (  # an IPv6 host, in double quotes
            'cannot open "rtsp://admin:pw@[fe80::1]:554/x": timed out',
            'cannot open "rtsp://admin:***@[fe80::1]:554/x": timed out',
        ),
        (  # two URLs, one without credentials, the other followed by punctuation
            "from rtsp://cam.local/a to http://u:p@[::1]:8080, then stop",
            "from rtsp://cam.local/a to http://u:***@[::1]:8080, then stop",
        ),
        (  # a password with '@' and ':' in it, at the end of the text
            "redirected to rtsp://viewer:p@ss:w@rd@cam.local:8554/live",
            "redirected to rtsp://viewer:***@cam.local:8554/live",
        ),
        ("connect: connection refused", "connect: connection refused"),
    ],
)
def test_every_url_in_a_text_loses_its_password(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted
