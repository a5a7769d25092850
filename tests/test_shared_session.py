"""The shared AWS session (edge_agent/credentials/shared.py) keeps botocore's endpoint
data of the agent's services only, and its clients resolve exactly as a plain boto3
session's do, in every kind of partition."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.loaders
import botocore.session
import pytest

from edge_agent.config.aws import AwsIdentity
from edge_agent.credentials.shared import AGENT_SERVICES, SharedSession

REGIONS = ("us-east-1", "eu-central-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1")
KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "not-a-secret"}


def _resolved(client: Any) -> tuple[str, str, str]:
    signer = client._request_signer  # where botocore keeps what it signs with
    return client.meta.endpoint_url, signer.region_name, signer.signing_name


@pytest.mark.parametrize("region", REGIONS)
def test_clients_resolve_as_a_plain_session_does(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEYS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["aws_secret_access_key"])
    shared = SharedSession(AwsIdentity(), None)
    plain = boto3.session.Session(**KEYS)
    for service in [*sorted(AGENT_SERVICES - {"sso-oidc"}), "iot"]:  # and one not kept
        ours = shared.client(service, region_name=region)
        theirs = plain.client(service, region_name=region)
        assert _resolved(ours) == _resolved(theirs), (service, region)


def test_the_session_keeps_the_endpoint_data_of_the_agents_services_only() -> None:
    shared = SharedSession(AwsIdentity(), None)
    core = shared.session._session
    data, _ = core.get_component("data_loader").load_data_with_path("endpoints")
    plain = botocore.session.Session().get_component("data_loader")
    full, _ = plain.load_data_with_path("endpoints")
    assert [p["partition"] for p in data["partitions"]] == [
        p["partition"] for p in full["partitions"]
    ]
    for kept, every in zip(data["partitions"], full["partitions"], strict=True):
        assert set(kept["services"]) == set(every["services"]) & AGENT_SERVICES
        assert kept["regions"] == every["regions"] and kept["defaults"] == every["defaults"]
    assert sum(len(p["services"]) for p in full["partitions"]) > 10 * sum(
        len(p["services"]) for p in data["partitions"]
    )


def test_a_session_that_makes_no_client_parses_no_endpoint_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Kinesis Video sink signs its one control-plane call itself and makes no client:
    its session never parses botocore's endpoints.json (cut at once, the parse left some
    6 MiB resident). The first client parses it, cut to the agent's services."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEYS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["aws_secret_access_key"])
    loaded: list[str] = []
    load_file = botocore.loaders.JSONFileLoader.load_file

    def counted(self: Any, file_path: str) -> Any:
        loaded.append(file_path)
        return load_file(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counted)
    shared = SharedSession(AwsIdentity(), None)
    assert shared.credentials().access_key == KEYS["aws_access_key_id"]
    assert not [path for path in loaded if path.endswith("endpoints")]
    shared.client("kinesis", region_name="eu-central-1")
    assert [path for path in loaded if path.endswith("endpoints")]
    core = shared.session._session
    data, _ = core.get_component("data_loader").load_data_with_path("endpoints")
    assert all(set(p["services"]) <= AGENT_SERVICES for p in data["partitions"])
