"""Authentication of the built-in RTSP client: answering a camera's 401.

Credentials come from the camera's URL. Of the challenges a camera offers (often
Digest and Basic, each in a WWW-Authenticate header of its own), Digest is chosen
(SHA-256 before MD5) over Basic, which would send the password in the clear. A new
nonce starts the nonce count again; a 401 to a keepalive renews the challenge.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re


class RtspAuth:
    """The credentials of one session and the challenge they answer."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self._password = password
        self._challenge: tuple[str, dict[str, str]] | None = None  # scheme, parameters
        self._nonce_count = 0

    def take_challenge(self, challenges: list[str]) -> bool:
        """Take a 401's challenges; True if a request can be sent again with them."""
        chosen = choose_challenge(challenges)
        if chosen is None:
            return self._challenge is not None
        previous = self._challenge
        if previous is None or previous[1].get("nonce") != chosen[1].get("nonce"):
            self._nonce_count = 0  # a new nonce counts from 1
        self._challenge = chosen
        return True

    def header(self, method: str, url: str) -> str:
        """The Authorization header for a request ("" before any challenge)."""
        if self._challenge is None:
            return ""
        scheme, challenge = self._challenge
        if scheme == "basic":
            token = base64.b64encode(f"{self.user}:{self._password}".encode()).decode()
            return f"Basic {token}"
        self._nonce_count += 1
        return digest_authorization(
            challenge,
            self.user,
            self._password,
            method=method,
            uri=url,
            nonce_count=self._nonce_count,
        )


_AUTH_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def choose_challenge(challenges: list[str]) -> tuple[str, dict[str, str]] | None:
    """The challenge to answer a 401 with, of all the server offered: Digest (SHA-256
    before MD5) before Basic, which would send the password in the clear. Cameras often
    offer both, each in a WWW-Authenticate header of its own."""
    offered: list[tuple[int, str, dict[str, str]]] = []
    for header in challenges:
        scheme, _, rest = header.strip().partition(" ")
        params = {
            key.lower(): quoted if quoted or bare == "" else bare
            for key, quoted, bare in _AUTH_PARAM.findall(rest)
        }
        params = {key: value.replace('\\"', '"') for key, value in params.items()}
        scheme = scheme.lower()
        if scheme == "digest":
            sha256 = params.get("algorithm", "MD5").upper().startswith("SHA-256")
            offered.append((0 if sha256 else 1, scheme, params))
        elif scheme == "basic":
            offered.append((2, scheme, params))
    if not offered:
        return None
    _, scheme, params = min(offered, key=lambda item: item[0])
    return scheme, params


def digest_authorization(
    challenge: dict[str, str],
    user: str,
    password: str,
    *,
    method: str,
    uri: str,
    nonce_count: int,
    cnonce: str | None = None,
) -> str:
    """The Authorization header for a Digest challenge (RFC 2617; RFC 7616's SHA-256)."""
    algorithm = challenge.get("algorithm", "MD5")
    hash_name = "sha256" if algorithm.upper().startswith("SHA-256") else "md5"

    def digest(text: str) -> str:
        return hashlib.new(hash_name, text.encode()).hexdigest()

    realm, nonce = challenge.get("realm", ""), challenge.get("nonce", "")
    first = digest(f"{user}:{realm}:{password}")
    cnonce = cnonce or os.urandom(8).hex()
    if algorithm.upper().endswith("-SESS"):
        first = digest(f"{first}:{nonce}:{cnonce}")
    second = digest(f"{method}:{uri}")
    qop = "auth" if "auth" in (q.strip() for q in challenge.get("qop", "").split(",")) else ""
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if qop:
        count = f"{nonce_count:08x}"
        response = digest(f"{first}:{nonce}:{count}:{cnonce}:{qop}:{second}")
        fields += [f"qop={qop}", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        response = digest(f"{first}:{nonce}:{second}")
    fields.append(f'response="{response}"')
    if "algorithm" in challenge:
        fields.append(f"algorithm={algorithm}")
    if "opaque" in challenge:
        fields.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(fields)
