"""Credentials out of URLs, before a URL reaches a log, the status or a request line."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: What stands in for a password.
MASK = "***"


def redact(url: str, *, keep_user: bool = True) -> str:
    """``url`` with its password replaced by ``***`` (``rtsp://user:***@host/path``); a
    URL without a password comes back unchanged. ``keep_user=False`` drops the user and
    the password (``rtsp://host/path``): what an RTSP request line carries, the
    credentials going in the Authorization header instead.

    Host and port stay as written (an IPv6 address keeps its brackets); user and
    password are split at the last ``@`` and the first ``:`` before it, so a password
    with ``@`` or ``:`` in it, percent-encoded or not, is hidden whole."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if not keep_user:
        netloc = hostport
    elif colon:
        netloc = f"{user}:{MASK}@{hostport}"
    else:
        return url
    return urlunsplit(parts._replace(netloc=netloc))
