"""The ``[aws]`` section: how the device proves who it is to AWS, for every AWS sink.

Two ways. ``credentials = "default"`` is botocore's chain (environment, a profile,
container credentials, which is how Greengrass's token exchange service hands them
over, then the instance role); a sink may still name its own ``profile``.
``credentials = "iot"`` trades the device's X.509 certificate for temporary
credentials at the account's AWS IoT credentials endpoint (credentials/iot.py); every
sink signs with them, so a sink ``profile`` is a problem. The certificate files are
loaded now: a key that does not match its certificate, or a file the agent cannot
read, is a config error rather than a sink that pauses at its first request.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edge_agent.config.agent import AgentConfig
from edge_agent.config.options import (
    DURATION,
    PATH,
    STRING,
    Check,
    Table,
    choice,
    option,
    read_section,
    section,
    within,
)
from edge_agent.errors import ConfigProblem

if TYPE_CHECKING:  # config.sinks imports this module (through sink_kinds)
    from edge_agent.config.sinks import SinkConfig

CredentialSource = Literal["default", "iot"]

#: What AWS IoT takes as a role alias and as a thing name.
_ROLE_ALIAS = re.compile(r"[\w=,@-]{1,128}")
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?")
#: The keys that only ``credentials = "iot"`` reads.
IOT_KEYS = ("endpoint", "role_alias", "thing_name", "cert", "key", "ca")


def _endpoint(value: str) -> str | None:
    if _URL.fullmatch(value) or _HOST.fullmatch(value):
        if ".amazonaws.com" in value and ".credentials.iot." not in value:
            return (
                "is not a credentials endpoint (<id>.credentials.iot.<region>.amazonaws.com: "
                "aws iot describe-endpoint --endpoint-type iot:CredentialProvider; the "
                "-ats.iot. endpoint is MQTT's)"
            )
        return None
    return "must be a host name (<id>.credentials.iot.<region>.amazonaws.com) or an https:// URL"


def _role_alias(value: str) -> str | None:
    return None if _ROLE_ALIAS.fullmatch(value) else "1-128 of letters, digits and =,@-_"


@section
class AwsIdentity:
    """How the device proves who it is to AWS: the credentials every AWS sink signs its
    requests with (docs/CREDENTIALS.md)."""

    credentials: CredentialSource = option(
        kind=choice("default", "iot"),
        default="default",
        doc='"default": botocore\'s chain (environment, a profile, container credentials '
        'such as Greengrass\'s token exchange service, the instance role); "iot": the '
        "device's X.509 certificate, exchanged for temporary credentials at the AWS IoT "
        "credentials endpoint (the keys below).",
    )
    endpoint: str | None = option(
        kind=STRING,
        default=None,
        default_doc='required with "iot"',
        check=Check("a host name or an https:// URL", _endpoint),
        doc="The account's credentials endpoint, <id>.credentials.iot.<region>.amazonaws.com "
        "(aws iot describe-endpoint --endpoint-type iot:CredentialProvider).",
    )
    role_alias: str | None = option(
        kind=STRING,
        default=None,
        default_doc='required with "iot"',
        check=Check("an IoT role alias name", _role_alias),
        doc="The role alias (aws iot create-role-alias) naming the IAM role the sinks act as.",
    )
    thing_name: str = option(
        kind=STRING,
        default="",
        default_doc="agent.device_name",
        doc="The IoT thing the certificate is attached to (sent as x-amzn-iot-thingname).",
    )
    cert: Path | None = option(
        kind=PATH,
        default=None,
        default_doc='required with "iot"',
        doc="The device certificate (PEM).",
    )
    key: Path | None = option(
        kind=PATH, default=None, default_doc='required with "iot"', doc="Its private key (PEM)."
    )
    ca: Path | None = option(
        kind=PATH,
        default=None,
        default_doc="the system's CA certificates",
        doc="CA certificates the endpoint's certificate is checked against (AmazonRootCA1.pem).",
    )
    timeout: float = option(
        kind=DURATION,
        default=10.0,
        check=within(0.1, 600, "must be between 100ms and 10m"),
        doc="Connecting to the credentials endpoint, and each wait for its answer.",
    )


def read_identity(table: Table | None, agent: AgentConfig) -> AwsIdentity:
    """``[aws]`` (all defaults when the table is left out)."""
    if table is None:
        return AwsIdentity(thing_name=agent.device_name)
    identity = read_section(AwsIdentity, table, defaults={"thing_name": agent.device_name})
    if identity.credentials == "iot":
        for name in ("endpoint", "role_alias", "cert", "key"):
            if getattr(identity, name) is None:
                table.problem(name, 'is required with credentials = "iot"')
        if not _THING_NAME.fullmatch(identity.thing_name):
            table.problem(
                "thing_name",
                f"{identity.thing_name!r} is not an IoT thing name (1-128 of letters, digits "
                "and :_-); set thing_name (the default is agent.device_name)",
            )
        _check_files(table, identity)
    else:
        for name in IOT_KEYS:
            if name != "thing_name" and getattr(identity, name) is not None:
                table.problem(name, 'is used only with credentials = "iot"')
    table.finish()
    return identity


def _check_files(table: Table, identity: AwsIdentity) -> None:
    """Read and load the files now: a certificate that cannot be used would otherwise
    pause every sink, found only when the agent runs."""
    unreadable = False
    for name, path in (("cert", identity.cert), ("key", identity.key), ("ca", identity.ca)):
        if path is None:
            continue
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except OSError as err:
            table.problem(name, f"cannot read {path}: {err.strerror or err}")
            unreadable = True
    if unreadable:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if identity.cert is not None and identity.key is not None:
        try:
            context.load_cert_chain(str(identity.cert), str(identity.key))
        except (ssl.SSLError, OSError) as err:
            table.problem(
                "cert", f"{identity.cert} and key {identity.key} do not load together: {err}"
            )
    if identity.ca is not None:
        try:
            context.load_verify_locations(cafile=str(identity.ca))
        except (ssl.SSLError, OSError) as err:
            table.problem("ca", f"{identity.ca} is not a usable CA certificate file: {err}")


def with_identity(
    sinks: Mapping[str, SinkConfig],
    identity: AwsIdentity,
    file: str,
    problems: list[ConfigProblem],
) -> dict[str, SinkConfig]:
    """Each AWS sink with the ``[aws]`` identity it signs with; with "iot", a sink's own
    ``profile`` is a problem (it would not be used)."""
    out: dict[str, SinkConfig] = {}
    for name, sink in sinks.items():
        if sink.aws is None:
            out[name] = sink
            continue
        if identity.credentials == "iot" and sink.aws.profile is not None:
            problems.append(
                ConfigProblem(
                    file,
                    f"sinks.{name}.profile",
                    'not with [aws] credentials = "iot": every AWS sink signs with the '
                    "device certificate's credentials",
                )
            )
        out[name] = replace(sink, aws=replace(sink.aws, identity=identity))
    return out
