"""A real RTSP server for the tests and benchmarks: GStreamer's gst-rtsp-server (Debian's
``gir1.2-gst-rtsp-server-1.0``), serving recordings the way an IP camera serves its
stream, paced in real time, over RTP/TCP or UDP as the client asks.

Two halves in one file:

* run as a script under Debian's own ``/usr/bin/python3`` (which has PyGObject): the
  server; ``--mount /live=FILE.mp4:h264`` (or ``:jpeg`` for Motion JPEG, ``:h265``) per
  path, ``:h264+aac`` (and ``+latm``, ``+pcma``, ``+pcmu``) to serve the file's audio
  too, as a camera with a microphone does; prints ``ready`` once it accepts connections;
* imported by the tests (any Python): :class:`RtspServer`, which starts and stops that
  script on a free loopback port.
"""

from __future__ import annotations

import argparse
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

SYSTEM_PYTHON = "/usr/bin/python3"
PAYLOADERS = {
    "h264": "h264parse ! rtph264pay config-interval=-1",
    "h265": "h265parse ! rtph265pay config-interval=-1",
    "jpeg": "rtpjpegpay",
}
#: The audio payloaders, by the name a mount gives after "+": RFC 3640 and RFC 6416 AAC,
#: G.711 A-law and mu-law (their static payload types, in 20 ms packets as cameras send).
AUDIO_PAYLOADERS = {
    "aac": "aacparse ! rtpmp4gpay pt=97",
    "latm": "aacparse ! rtpmp4apay pt=97",
    "pcma": "rtppcmapay pt=8 min-ptime=20000000 max-ptime=20000000",
    "pcmu": "rtppcmupay pt=0 min-ptime=20000000 max-ptime=20000000",
}
DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".mkv": "matroskademux"}


def available() -> str | None:
    """None if the server can run here, else why not."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0')"
    probe += "; from gi.repository import GstRtspServer"
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], check=False, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{SYSTEM_PYTHON}: {error}"
    if done.returncode != 0:
        return "gst-rtsp-server is not installed (bash .ci/setup installs it)"
    return None


class RtspServer:
    """gst-rtsp-server on 127.0.0.1:``port`` serving ``mounts`` (path -> (file, codec))."""

    def __init__(
        self,
        port: int,
        mounts: Mapping[str, tuple[Path, str]],
        *,
        auth: tuple[str, str, str] | None = None,
    ) -> None:
        """``auth``: (method, user, password), method "basic" or "digest": clients must
        authenticate, as most IP cameras ask."""
        self.port = port
        self.mounts = dict(mounts)
        self.auth = auth
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 30.0) -> RtspServer:
        command = [SYSTEM_PYTHON, __file__, "--port", str(self.port)]
        for path, (file, codec) in self.mounts.items():
            command += ["--mount", f"{path}={file}:{codec}"]
        if self.auth is not None:
            command += ["--auth", ":".join(self.auth)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                chunk = self.process.stdout.read1(64)  # type: ignore[attr-defined]
                if not chunk:
                    break
                line += chunk
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"gst-rtsp-server did not start: {line!r}")
        return self

    def stop(self) -> None:
        from tests.support import terminate  # not at the top: the server half runs alone

        if self.process is None:
            return
        terminate(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _launch_line(file: str, codec: str) -> str:
    demuxer = DEMUXERS[Path(file).suffix.lower()]
    video, _, audio = codec.partition("+")
    if not audio:
        return f"( filesrc location={file} ! {demuxer} ! {PAYLOADERS[video]} name=pay0 pt=96 )"
    return (
        f"( filesrc location={file} ! {demuxer} name=d "
        f"d.video_0 ! queue ! {PAYLOADERS[video]} name=pay0 pt=96 "
        f"d.audio_0 ! queue ! {AUDIO_PAYLOADERS[audio]} name=pay1 )"
    )


def _serve(port: int, mounts: list[str], auth: str | None) -> None:  # pragma: no cover - gi
    import gi  # type: ignore[import-not-found]  # Debian's PyGObject, not in the venv

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    gi.require_version("GstRtsp", "1.0")
    from gi.repository import (  # type: ignore[import-not-found]
        GLib,
        Gst,
        GstRtsp,
        GstRtspServer,
    )

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    points = server.get_mount_points()
    permissions = None
    if auth:
        method, user, password = auth.split(":", 2)
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        checker = GstRtspServer.RTSPAuth()
        if method == "digest":
            checker.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            checker.add_digest(user, password, token)
        else:
            checker.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(checker)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
    for mount in mounts:
        path, _, source = mount.partition("=")
        file, _, codec = source.rpartition(":")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(_launch_line(file, codec))
        factory.set_shared(True)  # one pipeline for every client, as a camera has
        if permissions is not None:
            factory.set_permissions(permissions)
        points.add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, 15, loop.quit)  # SIGTERM
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", default=[], help="PATH=FILE:CODEC")
    parser.add_argument("--auth", help="METHOD:USER:PASSWORD (basic or digest)")
    arguments = parser.parse_args()
    _serve(arguments.port, arguments.mount, arguments.auth)
