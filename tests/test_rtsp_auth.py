"""The built-in RTSP client's answers to a camera's 401 (rtsp_auth.py)."""

from __future__ import annotations

from edge_agent.sources.camera.rtsp_auth import RtspAuth, choose_challenge, digest_authorization


def test_digest_authorization_matches_the_rfc_2617_example() -> None:
    challenge = {
        "realm": "testrealm@host.com",
        "qop": "auth,auth-int",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "opaque": "5ccc069c403ebaf9f0171e9517f40e41",
    }
    header = digest_authorization(
        challenge,
        "Mufasa",
        "Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce_count=1,
        cnonce="0a4f113b",
    )
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert "nc=00000001" in header and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header


def test_digest_is_chosen_over_basic_whatever_order_the_camera_offers_them() -> None:
    """Hikvision-style: Digest first, Basic second, each in a header of its own; a
    quoted realm may hold commas, a qop list spaces."""
    digest = 'Digest realm="Hik, Inc", nonce="abc", qop="auth-int, auth", stale="FALSE"'
    for offered in ([digest, 'Basic realm="Hik"'], ['Basic realm="Hik"', digest]):
        chosen = choose_challenge(offered)
        assert chosen is not None
        scheme, params = chosen
        assert scheme == "digest"
        assert params["realm"] == "Hik, Inc" and params["qop"] == "auth-int, auth"
    assert choose_challenge(['Basic realm="cam"']) == ("basic", {"realm": "cam"})
    assert choose_challenge(["Negotiate abc"]) is None


def test_a_new_nonce_counts_again_from_one_and_basic_needs_no_count() -> None:
    auth = RtspAuth("admin", "pw")
    assert auth.header("OPTIONS", "rtsp://cam/") == ""  # nothing asked yet
    assert auth.take_challenge(['Digest realm="cam", nonce="a", qop="auth"'])
    assert "nc=00000001" in auth.header("DESCRIBE", "rtsp://cam/")
    assert "nc=00000002" in auth.header("SETUP", "rtsp://cam/")
    assert auth.take_challenge(['Digest realm="cam", nonce="b", qop="auth"'])
    assert "nc=00000001" in auth.header("PLAY", "rtsp://cam/")
    assert not RtspAuth("admin", "pw").take_challenge(["Negotiate abc"])
    basic = RtspAuth("admin", "pw")
    assert basic.take_challenge(['Basic realm="cam"'])
    assert basic.header("DESCRIBE", "rtsp://cam/") == "Basic YWRtaW46cHc="
