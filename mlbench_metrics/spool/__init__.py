"""The on-disk spool: what cannot be delivered yet, kept until it is.

* ``files.py``: spool directories (one per run and writing process) and the frame format
  every appended file uses;
* ``batches.py``: the batch spool (batches that failed or overflowed) and its store;
* ``durable/``: the durable log (every record, memory-mapped, before ``log()``
  returns), durable mode's store (the buffer is the log), its reader and its marks, and
  what a delivery agent in another process reads it with (the tail, the status area);
* ``raw.py``: raw copies of what went to a server without the batch endpoint, for an
  exact upload elsewhere (``sync --to``) when that server got aggregates;
* ``sync.py``: delivering what dead processes left (``mlbench-metrics sync``), and the
  raw copies (``sync --to``).

Each file format has one owner module, which alone writes and reads it. No threads are
started here: the dispatcher thread does the spool's I/O, and the training thread only
writes durable slots (and puts overflow on disk when the dispatcher falls behind).
"""

from __future__ import annotations

from .batches import BatchSpool, SpoolStore, read_spool_file
from .durable import DurableLog, DurableStore, read_durable
from .files import SpoolDir, default_spool_root, writer_dirs
from .raw import KeepRaw, RawCopies
from .sync import SyncReport, records_waiting, sync_raw, sync_writer

__all__ = [
    "BatchSpool",
    "DurableLog",
    "DurableStore",
    "KeepRaw",
    "RawCopies",
    "SpoolDir",
    "SpoolStore",
    "SyncReport",
    "default_spool_root",
    "read_durable",
    "read_spool_file",
    "records_waiting",
    "sync_raw",
    "sync_writer",
    "writer_dirs",
]
