"""The one AWS session every sink's clients come from, and with it one credentials object.

Every AWS sink of the process (Kinesis, Firehose, S3, and the KVS sink's control plane
and PutMedia connections) takes its clients and credentials from the ``SharedSession`` of
its ``[aws]`` identity and profile: credentials are fetched once and renewed once
(not once per sink), and a service model loaded for one sink serves the others.

How the credentials get onto the session, the supported way: a botocore session finds
credentials through its ``credential_provider`` component, a ``CredentialResolver``
holding a list of ``CredentialProvider`` objects. For ``credentials = "iot"`` the
session's resolver is replaced (``register_component``, public botocore API) with one
holding only the device certificate's provider (iot.py), whose ``load()`` returns its one
``RefreshableCredentials``; boto3's ``Session(botocore_session=...)`` wraps it. For
``"default"`` the session keeps botocore's own chain (environment, profile, container
credentials incl. Greengrass's token exchange service, instance role), so a sink's
``profile`` gets a session of its own.

botocore's default chain reads the environment (AWS_*) when it first resolves, so a
session is kept per environment as well: in a running agent that is one session; tests
that change the environment between agents run in one process get fresh ones.

The session keeps botocore's endpoint data of the agent's services only
(``keep_endpoints_of``), and parses it only when it makes a client: the whole of it is
about 7 MiB of Python objects held for the life of the process.

A boto3 session is not thread-safe while it makes clients (clients are): ``client``
makes them one at a time.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from botocore.credentials import CredentialResolver, ReadOnlyCredentials

from edge_agent.config.aws import AwsIdentity
from edge_agent.credentials.iot import CertificateProvider
from edge_agent.errors import SinkPaused

_Key = tuple[AwsIdentity, str | None, frozenset[tuple[str, str]]]
#: The services the agent makes clients for, and those botocore's credential chain may
#: (assumed roles, SSO).
AGENT_SERVICES = frozenset({"kinesis", "firehose", "kinesisvideo", "s3", "sts", "sso", "sso-oidc"})
_sessions: dict[_Key, SharedSession] = {}
_sessions_lock = threading.Lock()


class SharedSession:
    """A boto3 session shared by the sinks of one identity and profile."""

    def __init__(self, identity: AwsIdentity, profile: str | None) -> None:
        import boto3
        import botocore.session

        self.identity = identity
        self.profile = profile
        core = botocore.session.Session()
        keep_endpoints_of(core, AGENT_SERVICES)
        self.provider: CertificateProvider | None = None
        if identity.credentials == "iot":
            self.provider = CertificateProvider(identity)
            core.register_component("credential_provider", CredentialResolver([self.provider]))
        self.session = boto3.session.Session(botocore_session=core, profile_name=profile)
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        """Where the credentials come from, for messages."""
        identity = self.identity
        if self.provider is not None:
            return (
                f"the IoT certificate {identity.cert} (thing {identity.thing_name!r}, "
                f"role alias {identity.role_alias!r}, endpoint {self.provider.endpoint.where})"
            )
        if self.profile is not None:
            return f"profile {self.profile!r}"
        return "the default chain (environment, profile, container credentials, instance role)"

    @property
    def region_name(self) -> str | None:
        region = self.session.region_name
        return None if region is None else str(region)

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client signed with the shared credentials (made one at a time)."""
        with self._lock:
            return self.session.client(service, **kwargs)

    def credentials(self) -> ReadOnlyCredentials:
        """The credentials to sign with now (fetched or renewed first if due). Raises
        SinkPaused when the chain finds none, the agent's error when the certificate's
        provider fails, and botocore's when another provider of the chain does."""
        with self._lock:
            credentials = self.session.get_credentials()
        if credentials is None:
            raise SinkPaused("NoCredentials", f"no AWS credentials from {self.source}")
        return credentials.get_frozen_credentials()

    def renew_at(self) -> float | None:
        """When (epoch seconds) the current credentials are due for renewal, if known:
        a connection signed once (PutMedia) is replaced by then."""
        return None if self.provider is None else self.provider.renew_at


def keep_endpoints_of(core: Any, services: frozenset[str]) -> None:
    """Have botocore session ``core`` cut its endpoint data down to ``services`` when it
    loads it.

    A session parses botocore's endpoints.json (each of some 300 services in every
    partition) into about 7 MiB of Python objects and keeps them for as long as it
    lives, to find the signing region and name of each client it makes. It does so when
    it makes its first client (the agent's, or the credential chain's): an agent that
    makes none (a Kinesis Video sink signs its one control-plane call itself) never
    parses it, where cutting it at once left some 6 MiB resident after the cut. The
    loader caches what it loaded, so the data cut here is what the session's endpoint
    resolver gets. A partition keeps its regions and defaults: a service not listed
    still resolves, from its partition's defaults, as any service botocore has no entry
    for.
    """
    loader = core.get_component("data_loader")
    load = loader.load_data_with_path

    def load_cut(name: str, *args: Any, **kwargs: Any) -> Any:
        loaded = load(name, *args, **kwargs)
        if name == "endpoints":
            data, _ = loaded
            for partition in data.get("partitions", []):
                known = partition.get("services")
                if isinstance(known, dict):
                    for service in [listed for listed in known if listed not in services]:
                        del known[service]
        return loaded

    loader.load_data_with_path = load_cut


def shared_session(identity: AwsIdentity, profile: str | None = None) -> SharedSession:
    """The session of this identity and profile, made the first time it is asked for."""
    environment = frozenset(
        (name, value) for name, value in os.environ.items() if name.startswith("AWS_")
    )
    key = (identity, profile, environment if identity.credentials == "default" else frozenset())
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = SharedSession(identity, profile)
        return session
