"""Credentials out of URLs, before a URL reaches a log, the status or a request line."""

from __future__ import annotations

import re

#: What stands in for a password.
MASK = "***"
#: A URL inside free text (an exception's message, a log line): a scheme, "://", and
#: everything up to the next white space, quote or angle bracket (the quotes Python and
#: PyAV put around a file name).
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")


def redact(url: str, *, keep_user: bool = True) -> str:
    """``url`` with its password replaced by ``***`` (``rtsp://user:***@host/path``); a
    URL without a password comes back unchanged. ``keep_user=False`` drops the user and
    the password (``rtsp://host/path``): what an RTSP request line carries, the
    credentials going in the Authorization header instead.

    Host and port stay as written (an IPv6 address keeps its brackets); user and
    password are split at the last ``@`` and the first ``:`` before it, so a password
    with ``@`` or ``:`` in it, percent-encoded or not, is hidden whole."""
    scheme, slashes, rest = url.partition("://")
    if not slashes:
        return url
    # The authority ends where the path, query or fragment begins (as urlsplit has it,
    # which raises for a malformed IPv6 address: a URL only has to be hidden here).
    end = min((at for at in map(rest.find, "/?#") if at >= 0), default=len(rest))
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if not keep_user:
        netloc = hostport
    elif colon:
        netloc = f"{user}:{MASK}@{hostport}"
    else:
        return url
    return f"{scheme}://{netloc}{rest[end:]}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact`: for messages that
    may quote a URL with its password (PyAV's and FFmpeg's errors name the file they
    could not open, ``[Errno 111] Connection refused: 'rtsp://admin:pw@[fe80::1]/x'``)."""
    return _URL_IN_TEXT.sub(lambda found: redact(found.group()), text)
