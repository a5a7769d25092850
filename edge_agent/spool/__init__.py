"""The spool: one SQLite file that holds everything between capture and confirmed delivery.

Sources append; uploaders lease, then ack, retry, release or dead-letter. Nothing else in
the agent runs SQL. docs/SPOOL.md documents the file format. This package exports no
names: import each from the module that defines it (``Spool`` from ``store``).

Invariants
----------

1. **Ack after commit.** ``append`` takes a whole batch in one transaction and returns
   only once it committed; a source acknowledges its input (an MQTT PUBACK) after that,
   never before. With ``durability = "full"`` (synchronous=FULL) a committed batch
   survives power loss; with ``"normal"`` a crash of the process but maybe not of the
   machine.
2. **Delete after confirm.** A record leaves ``records`` only when its destination
   confirmed it (ack), when it is moved to ``dead_letters``, or when a cap drops it
   (counted). A lease changes nothing in the file.
3. **Restart is replay.** Whatever a process held when it stopped is pending at the next
   open, due at once; a record may be sent twice, never lost.
4. **Oldest first per queue.** A record's id is its arrival order; a queue drains by
   id (a live-first video sink leases its newest record first, then the older ones by
   id). New rows always get ids above every lease floor.
5. **Leases live in memory.** Which records an uploader holds, and which it handed back
   for a retry (with their due time), is kept in the writing process, not in the file:
   a lease costs one read and no write.
6. **Held records are never expired; eviction goes in capture order** through them
   too (taken back from their request: a failing request never makes younger records
   go first).
7. **Caps with a declared policy.** A queue over its byte cap either evicts its oldest
   records (``drop_oldest``) or refuses the new ones (``reject_new``); the overall cap
   evicts from ``drop_oldest`` queues, oldest first; age caps expire old records on
   ``expire()``. A queue nearing its cap is warned about before anything is dropped.
   Every drop is counted.
8. **Counters in the same transaction as the rows.** Per-queue pending/acked/dropped/...
   counts change in the transaction that changes the rows they count, and the pending
   ones are recomputed from the rows at open, so ``edge-agent status`` reads them from
   another process without scanning. The in-memory copy follows only after the commit.
9. **Bad files never crash-loop, and lose only what cannot be read.** A file that is
   not a database or fails its integrity check is moved aside (``<name>.corrupt-<UTC
   time>``, with its -wal/-shm), a fresh spool is created, every record still readable
   in the moved file is copied into it in order (``salvage``), and the event, with the
   counts, is recorded in the new spool where status shows it.
10. **One writer.** A writing spool holds ``<name>.lock``; a second writer is refused
    with the holder's pid. Readers (status, the CLI) open read-only without the lock.
11. **A newer schema is refused,** not guessed at; older ones are migrated at open.
12. **Acknowledged means in the file on disk.** After every append, before its caller
    acknowledges anything, the spool checks that its path still names the file it
    wrote; if not (deleted, replaced, moved), it rebuilds the file there from the open
    connection first (``file_watch``).
13. **The spool's growth never fills its filesystem.** A batch that would take the free
    space below the reserve is refused (intake pauses); space the spool holds is reused
    first; a ballast file keeps room for deletes when something else fills the disk
    (``storage``).
14. **What went out and was not confirmed is remembered** (``sent_marks``), so that a
    restart counts what it sends again.

Modules
-------

``store``
    ``Spool``, what callers use: open/close, the lock and the connection (``_read``,
    ``_write``: closed check, SQLite's errors as the agent's), and thin methods that
    hand each call to the part below that owns it.
``writer``
    ``Writer``: append of a batch (limits, ``reject_new``, rows 256 to a statement) and
    the append generation idle uploaders wait on.
``leases``
    ``QueueLeases``: one queue's held ids, lease floor and handed-back ids with their due
    times; lease, lease_newest, newest_is_after. The ``LeasedRecord`` field getters.
``settle``
    ack, retry, release and dead-letter of leased records.
``caps``
    ``QueuePolicy`` and ``Caps``: byte caps and eviction, age caps and expiry, pressure
    warnings.
``queues``
    ``Queues``: the queues by name and id with their committed pending counts;
    ``Delta``, the counter changes written with the rows; the recount at open.
``dead_letters``
    ``DeadLetter``: listing, purging and requeueing dead letters, and the SQL that moves
    records there.
``stats``
    ``SpoolStats``/``QueueStats``/``SpoolEvent``: what status shows; the events table.
``recovery``
    Opening safely: the writer lock, what a crash left in the WAL and -shm
    (``check_wal``, read before SQLite opens the file), the integrity check, quarantine
    and the salvage into the fresh spool, the suspect marker (``mark_suspect``), the
    leases an older agent left in the file, ``salvage_file`` (``edge-agent spool
    salvage``), and ``translate_sqlite_error``.
``damaged``
    Reading what is still readable out of a damaged spool file, table by table (key
    order, past damaged pages, with bounded work): ``read_rows``, ``read_queues``.
``salvage``
    Writing what ``damaged`` reads into a spool: the records, the dead letters, the
    recording ring, the events and the requests done (``salvage_into``, ``Salvaged``).
``storage``
    ``Storage``: free space, the reserve, the ballast and the intake pause.
``file_watch``
    ``FileWatch``: whether the path still names the open spool, and the rebuild.
``sent_marks``
    The marks of what was handed to the network, and their count at open.
``schema``
    The tables and their migrations.
"""
