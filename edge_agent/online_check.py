"""``edge-agent check-config --online``: the config against the AWS account it names.

With the credentials the agent would use (the ``[aws]`` identity, or a sink's profile),
it resolves them once per source, naming the problem if there are none, then asks each
AWS sink's destination the one read-only question that proves it exists and may be
used by those credentials::

    kinesis    DescribeStreamSummary       the stream exists (and its status)
    firehose   DescribeDeliveryStream      the delivery stream exists
    kvs        DescribeStream              the stream exists; its retention (0 h: none,
                                           so PERSISTED never comes)
               GetDataEndpoint             where PutMedia would go

One line per sink, "ok" or the problem: AccessDenied names the action the policy lacks,
ResourceNotFound the stream. Nothing is written: whether the policy allows the puts
themselves shows only when the agent sends.
"""

from __future__ import annotations

import threading
from typing import Any, TextIO

from edge_agent.config.loading import Config
from edge_agent.config.sink_kinds import AwsEndpoint
from edge_agent.config.sinks import SinkConfig

#: Per sink type: the service, the read-only operation, and its IAM action.
QUESTIONS = {
    "kinesis": ("kinesis", "DescribeStreamSummary", "kinesis:DescribeStreamSummary"),
    "firehose": ("firehose", "DescribeDeliveryStream", "firehose:DescribeDeliveryStream"),
}
KVS_ACTIONS = {
    "DescribeStream": "kinesisvideo:DescribeStream",
    "GetDataEndpoint": "kinesisvideo:GetDataEndpoint",
}


def check_online(config: Config, out: TextIO) -> int:
    """Print a line for each source of credentials and each AWS sink; the number of
    problems found."""
    from edge_agent.credentials.shared import shared_session

    problems = 0
    checked: dict[tuple[object, str | None], str | None] = {}  # source -> problem
    for name, sink in config.sinks.items():
        aws = sink.aws
        if aws is None:
            continue
        key = (aws.identity, aws.profile)
        if key not in checked:
            source = f"profile {aws.profile}" if aws.profile else aws.identity.credentials
            try:  # a profile that does not exist fails when the session is made
                session = shared_session(aws.identity, aws.profile)
                source = session.source
                session.credentials()
            except Exception as err:
                problem = _describe(err)
                checked[key] = problem
                problems += 1
                print(f"credentials from {source}: {problem}", file=out)
            else:
                checked[key] = None
                print(f"credentials from {source}: ok", file=out)
        if checked[key] is not None:
            print(f"sink {name}: not checked (no credentials)", file=out)
            continue
        line = _check_sink(sink, aws)
        if not line.startswith("ok"):
            problems += 1
        print(f"sink {name} ({sink.type} {_target(sink)}): {line}", file=out)
    return problems


def _target(sink: SinkConfig) -> str:
    if sink.kinesis is not None:
        return sink.kinesis.stream
    if sink.firehose is not None:
        return sink.firehose.delivery_stream
    if sink.kvs is not None:
        return sink.kvs.stream
    return ""


def _check_sink(sink: SinkConfig, aws: AwsEndpoint) -> str:
    """'ok ...' or the problem."""
    try:
        if sink.kvs is not None:
            return _check_kvs(sink.kvs.stream, aws)
        service, operation, action = QUESTIONS[sink.type]
        return _ask(service, operation, action, _target(sink), aws)
    except Exception as err:  # making the client: the region, the endpoint
        return _describe(err, "", _target(sink), aws)


def _describe(
    err: Exception, action: str = "", target: str = "", aws: AwsEndpoint | None = None
) -> str:
    """What went wrong, in the agent's words (``sink_error``'s classification)."""
    from edge_agent.sinks.aws import sink_error

    if isinstance(err, OSError):  # the control plane's own connections
        return f"unreachable: {type(err).__name__}: {err}"
    try:
        error = sink_error(err)
    except Exception:
        return f"{type(err).__name__}: {err}"
    if aws is None:
        return str(error)
    code = error.code
    if "AccessDenied" in code or code in ("NotAuthorized", "UnauthorizedOperation"):
        missing = f"not allowed {action}" if action else "not allowed"
        return f"AccessDenied: {missing} on {target!r}: {error.message}"
    if code.startswith("ResourceNotFound"):
        return f"ResourceNotFound: {target!r} does not exist (region {aws.region or 'default'})"
    return str(error)


def _client(service: str, aws: AwsEndpoint) -> Any:
    from botocore.config import Config as BotoConfig

    from edge_agent.credentials.shared import shared_session

    return shared_session(aws.identity, aws.profile).client(
        service,
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=BotoConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=aws.connect_timeout,
            read_timeout=aws.request_timeout,
        ),
    )


def _ask(service: str, operation: str, action: str, target: str, aws: AwsEndpoint) -> str:
    client = _client(service, aws)
    try:
        if operation == "DescribeStreamSummary":
            answer = client.describe_stream_summary(StreamName=target)
            status = answer["StreamDescriptionSummary"]["StreamStatus"]
            shards = answer["StreamDescriptionSummary"].get("OpenShardCount")
            return f"ok, {status}, {shards} open shards"
        answer = client.describe_delivery_stream(DeliveryStreamName=target)
        return f"ok, {answer['DeliveryStreamDescription']['DeliveryStreamStatus']}"
    except Exception as err:
        return _describe(err, action, target, aws)
    finally:
        client.close()


def _check_kvs(stream: str, aws: AwsEndpoint) -> str:
    from edge_agent.credentials.shared import shared_session
    from edge_agent.delivery.budget import UploadBudget
    from edge_agent.sinks.kvs.control import control_endpoint, describe_stream, get_data_endpoint

    session = shared_session(aws.identity, aws.profile)
    region = aws.region or session.region_name
    if not region:
        return "NoRegion: set region in the sink's config"
    answers: dict[str, Any] = {}
    for operation, call in (
        ("DescribeStream", describe_stream),
        ("GetDataEndpoint", get_data_endpoint),
    ):
        try:
            answers[operation] = call(
                control_endpoint(region, aws.endpoint_url),
                stream,
                session.credentials(),
                region=region,
                timeout=aws.connect_timeout,
                budget=UploadBudget(None, 1024),  # unlimited: two small requests
                stop=threading.Event(),
            )
        except Exception as err:
            return _describe(err, KVS_ACTIONS[operation], stream, aws)
    hours = answers["DescribeStream"].get("DataRetentionInHours")
    retention = "no retention (0 h)" if hours == 0 else f"retention {hours} h"
    return f"ok, {retention}, data endpoint {answers['GetDataEndpoint']}"
