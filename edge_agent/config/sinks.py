"""The ``[sinks.NAME]`` tables, and the registry of sink types.

Each sink is a queue in the spool with a type that says where its records go. The keys
every sink has are declared on :class:`SinkConfig` and on
:class:`~edge_agent.config.budget.ShareConfig` (its part of the upload budget); a type
adds its own options, declared in its folder under ``edge_agent/sinks/``, and the
option groups its :class:`~edge_agent.config.sink_kinds.SinkKind` asks for.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar, get_args

from edge_agent.config.budget import ShareConfig, read_share
from edge_agent.config.options import (
    DURATION,
    SIZE,
    Table,
    choice,
    declared,
    off,
    option,
    read_option,
    read_section,
    section,
)
from edge_agent.config.sink_kinds import (
    AwsEndpoint,
    DeliveryConfig,
    SinkKind,
    read_aws,
    read_delivery,
)
from edge_agent.config.units import format_size
from edge_agent.records import Overflow
from edge_agent.sinks.firehose.options import FIREHOSE, FirehoseOptions
from edge_agent.sinks.kinesis.options import KINESIS, KinesisOptions
from edge_agent.sinks.kvs.options import KVS, KvsOptions
from edge_agent.sinks.s3.options import S3, S3Options

HOLD: SinkKind[Any] = SinkKind(
    doc="Keeps records in the spool; nothing forwards them.", sends=False
)

#: The sink types, by the name ``type`` gives. A new type is a folder under
#: edge_agent/sinks/ whose options.py declares its options and its SinkKind, plus one
#: line here.
SINK_KINDS: dict[str, SinkKind[Any]] = {
    "hold": HOLD,
    "kinesis": KINESIS,
    "firehose": FIREHOSE,
    "kvs": KVS,
    "s3": S3,
}

#: Names of sinks and cameras.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
O = TypeVar("O")  # noqa: E741


def _record_bytes_by_type() -> str:
    return "by type: " + ", ".join(
        f"{name} {format_size(kind.max_record_bytes)}" for name, kind in SINK_KINDS.items()
    )


@section
class SinkConfig:
    """One sink: a queue in the spool, and where its records go."""

    name: str
    type: str = option(
        kind=choice(*SINK_KINDS),
        doc="Where its records go: "
        + "; ".join(f'"{name}": {kind.doc.rstrip(".")}' for name, kind in SINK_KINDS.items())
        + ".",
    )
    max_bytes: int | None = option(
        kind=off(SIZE),
        default=None,
        default_doc='"off": only the overall cap (spool.max_bytes) applies',
        doc='Cap on this queue\'s bytes ("off" or 0: none of its own).',
    )
    max_age: float | None = option(
        kind=off(DURATION),
        default=None,
        default_doc='"off": spool.max_age applies',
        doc="Cap on the age of this queue's records.",
    )
    overflow: Overflow = option(
        kind=choice(*get_args(Overflow)),
        default="drop_oldest",
        doc='When max_bytes is reached: "drop_oldest" evicts the oldest records (counted), '
        '"reject_new" refuses new ones (counted; MQTT messages are still acked).',
    )
    max_record_bytes: int = option(
        kind=SIZE,
        default=1024 * 1024,
        default_doc=_record_bytes_by_type(),
        doc="Largest record the destination takes; larger ones go to the dead-letter "
        "table with the reason.",
    )
    aws: AwsEndpoint | None = None
    delivery: DeliveryConfig | None = None
    #: The options of its type (KinesisOptions, ...), or None.
    options: object | None = None
    upload: ShareConfig = ShareConfig()

    def options_as(self, cls: builtins.type[O]) -> O | None:
        """Its type's options, if they are a ``cls``."""
        return self.options if isinstance(self.options, cls) else None

    @property
    def kinesis(self) -> KinesisOptions | None:
        return self.options_as(KinesisOptions)

    @property
    def firehose(self) -> FirehoseOptions | None:
        return self.options_as(FirehoseOptions)

    @property
    def kvs(self) -> KvsOptions | None:
        return self.options_as(KvsOptions)

    @property
    def s3(self) -> S3Options | None:
        return self.options_as(S3Options)


def _keys_of_every_kind() -> set[str]:
    """The keys a sink's table may hold, whatever its type."""
    sections: list[builtins.type[Any]] = [AwsEndpoint, DeliveryConfig]
    sections += [kind.options for kind in SINK_KINDS.values() if kind.options is not None]
    return {declared_option.key for cls in sections for _, declared_option in declared(cls)}


def named_tables(table: Table | None, what: str) -> Iterator[tuple[str, Table]]:
    """The tables of a section of named parts ([sinks.NAME], [cameras.NAME], ...), each
    name checked; ``what``: "sink", "camera", ... for the problem."""
    if table is None:
        return
    for name in table.names():
        sub = table.subtable(name)
        assert sub is not None
        if not NAME.match(name):
            sub.problem("", f"{what} names use letters, digits, '_', '.', '-' (at most 64)")
        yield name, sub


def read_sinks(table: Table | None) -> dict[str, SinkConfig]:
    sinks: dict[str, SinkConfig] = {}
    for name, sub in named_tables(table, "sink"):
        sinks[name] = _read_sink(name, sub)
        sub.finish()
    return sinks


def _read_sink(name: str, table: Table) -> SinkConfig:
    sink_type = str(read_option(SinkConfig, "type", table))
    kind = SINK_KINDS[sink_type]
    sink = read_section(
        SinkConfig,
        table,
        given={"name": name, "type": sink_type},
        defaults={"max_record_bytes": kind.max_record_bytes},
    )
    upload = read_share(table, kind.priority)
    options = kind.read_options(table, sink.max_record_bytes)
    delivery = None
    if kind.max_request_bytes is not None:
        delivery = read_delivery(table, kind, sink.max_record_bytes, options)
    kind.check_options(table, options, sink.max_record_bytes, delivery)
    aws = read_aws(table) if kind.aws else None
    if not table.ok("type"):
        # A mistyped type is one problem: the keys of the type meant are not unknown.
        table.skip(_keys_of_every_kind())
    if not kind.has_live_traffic(options) and any(
        window.traffic == "backlog" for window in upload.schedule
    ):
        table.problem(
            "schedule",
            'traffic = "backlog" is for kvs sinks with replay = "live-first"'
            " (other sinks have no live traffic apart from their backlog)",
        )
    return replace(sink, aws=aws, delivery=delivery, options=options, upload=upload)
