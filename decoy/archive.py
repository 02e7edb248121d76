"""An append-only archive of Kafka records: rotating segments, an index, checksums.

Layout of an archive directory::

    00000000000000000000.log   records 0.. of the first segment
    00000000000000000000.idx   one 36-byte entry per record: seq, position, timestamp, partition, offset
    00000000000000051234.log   the next segment starts at sequence number 51234
    ...
    checkpoint.json            last synced sequence number; per partition the last offset archived,
                               which log of it that was, and how many re-deliveries were skipped

Each record in a ``.log`` is a 16-byte header (body length, CRC-32 of the body,
sequence number) and a msgpack body holding the record exactly as consumed:
topic, partition, offset, timestamp, key, value and headers, as raw bytes.

A crash can leave a torn record at the end of the last segment; opening the
archive for writing truncates it (it was never synced, so never committed to
Kafka either, and will be consumed again).

Offsets alone cannot tell a re-delivery from a new log: a broker that lost its data
(or a topic deleted and made again) numbers records from 0 again. Each record says
which *log* of its partition it came from (0, then one more per :meth:`ArchiveWriter.new_log`),
and :meth:`ArchiveReader.verify` checks that each log's offsets have no gaps.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with ArchiveWriter(d) as w:
...     w.append(ArchivedRecord("t", 0, 7, 1000, b"k", b"v", []))
...     w.sync()
0
>>> [(seq, r.value) for seq, r in ArchiveReader(d).read()]
[(0, b'v')]
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from rendezvous.kernel.errors import RendezvousError

__all__ = [
    "HEADER", "ENTRY", "DEFAULT_SEGMENT_BYTES", "ArchivedRecord", "ArchiveError", "ArchiveWriter", "VerifyReport",
    "ArchiveReader",
]

HEADER = struct.Struct(">IIQ")  # body length, crc32(body), sequence number
ENTRY = struct.Struct(">QQqiq")  # sequence, position in .log, timestamp ms, partition, offset
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class ArchivedRecord(msgspec.Struct, array_like=True, frozen=True):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None
    log: int = 0  # which log of the partition (see ArchiveWriter.new_log); absent in older archives


class ArchiveError(RendezvousError):
    """The archive is damaged or cannot be used as asked."""


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(ArchivedRecord).decode


def _segment_starts(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob("*.log") if p.stem.isdigit())


def _paths(directory: Path, first_seq: int) -> tuple[Path, Path]:
    return directory / f"{first_seq:020d}.log", directory / f"{first_seq:020d}.idx"


def _read_entries(idx_path: Path) -> list[tuple[int, int, int, int, int]]:
    data = idx_path.read_bytes() if idx_path.exists() else b""
    usable = len(data) - len(data) % ENTRY.size
    return [ENTRY.unpack_from(data, i) for i in range(0, usable, ENTRY.size)]


def _read_record(log, position: int) -> tuple[int, ArchivedRecord] | None:
    """The record at ``position``, or None if it is torn or fails its checksum."""
    log.seek(position)
    header = log.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    length, crc, seq = HEADER.unpack(header)
    body = log.read(length)
    if len(body) < length or zlib.crc32(body) != crc:
        return None
    try:
        return seq, _decode(body)
    except msgspec.DecodeError:
        return None


class ArchiveWriter:
    """Appends records; :meth:`sync` makes everything appended so far durable."""

    def __init__(self, directory: str | Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.segment_bytes, self.fsync = segment_bytes, fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        #: (topic, partition) -> last offset archived; lets a restarted decoy skip re-deliveries.
        self.last_offsets: dict[tuple[str, int], int] = {}
        #: (topic, partition) -> which log of it is being archived (see :meth:`new_log`)
        self.logs: dict[tuple[str, int], int] = {}
        self.topic_ids: dict[str, str] = {}  # topic -> the broker's id for it, where the broker has ids
        self.skipped: dict[tuple[str, int], int] = {}  # re-deliveries skipped, per partition
        self.next_seq = 0
        self.records_written = self.bytes_written = 0
        self._log = self._idx = None
        self._segment_start = 0
        self._recover()

    def _recover(self) -> None:
        checkpoint = self.directory / "checkpoint.json"
        synced_seq = -1
        if checkpoint.exists():
            state = json.loads(checkpoint.read_text())
            synced_seq = state["seq"]
            self.last_offsets = _per_partition(state["offsets"])
            self.logs = _per_partition(state.get("logs", {}))
            self.skipped = _per_partition(state.get("skipped", {}))
            self.topic_ids = dict(state.get("topic_ids", {}))
        starts = _segment_starts(self.directory)
        if not starts:
            self._open_segment(0)
            return
        self._segment_start = starts[-1]
        log_path, idx_path = _paths(self.directory, self._segment_start)
        entries = _read_entries(idx_path)
        kept: list[tuple[int, int, int, int, int]] = []
        good_end, seq = 0, self._segment_start
        with open(log_path, "rb") as log:
            # Trust index entries whose records read back intact; then pick up records the
            # index missed; stop at the first torn or corrupt one.
            for entry in entries:
                found = _read_record(log, entry[1])
                if found is None or found[0] != entry[0]:
                    break
                kept.append(entry)
                good_end, seq = log.tell(), entry[0] + 1
                self._note_if_unsynced(found, synced_seq)
            while (found := _read_record(log, good_end)) is not None:
                record = found[1]
                kept.append((found[0], good_end, record.timestamp, record.partition, record.offset))
                good_end, seq = log.tell(), found[0] + 1
                self._note_if_unsynced(found, synced_seq)
        with open(log_path, "r+b") as log:
            log.truncate(good_end)
        idx_path.write_bytes(b"".join(ENTRY.pack(*e) for e in kept))
        self.next_seq = seq
        self._log = open(log_path, "ab")
        self._idx = open(idx_path, "ab")

    def _note_if_unsynced(self, found: tuple[int, ArchivedRecord], synced_seq: int) -> None:
        """Records after the checkpoint were archived, but their offsets are not in it yet."""
        seq, record = found
        if seq > synced_seq:
            key = (record.topic, record.partition)
            if record.log > self.logs.get(key, 0):  # a new log began after the checkpoint
                self.logs[key], self.last_offsets[key] = record.log, record.offset
            else:
                self.last_offsets[key] = max(self.last_offsets.get(key, -1), record.offset)

    def _open_segment(self, first_seq: int) -> None:
        if self._log is not None:
            self.sync()
            self._log.close()
            self._idx.close()
        log_path, idx_path = _paths(self.directory, first_seq)
        self._segment_start = first_seq
        self._log, self._idx = open(log_path, "ab"), open(idx_path, "ab")

    def append(self, record: ArchivedRecord) -> int:
        """Append ``record``; returns its sequence number."""
        if self._log.tell() >= self.segment_bytes:
            self._open_segment(self.next_seq)
        body = _encode(record)
        seq = self.next_seq
        position = self._log.tell()
        self._log.write(HEADER.pack(len(body), zlib.crc32(body), seq) + body)
        self._idx.write(ENTRY.pack(seq, position, record.timestamp, record.partition, record.offset))
        self.next_seq += 1
        key = (record.topic, record.partition)
        self.last_offsets[key] = max(self.last_offsets.get(key, -1), record.offset)
        self.records_written += 1
        self.bytes_written += len(record.value or b"") + len(record.key or b"")
        return seq

    def already_archived(self, topic: str, partition: int, offset: int) -> bool:
        return offset <= self.last_offsets.get((topic, partition), -1)

    def last_offset(self, topic: str, partition: int) -> int:
        return self.last_offsets.get((topic, partition), -1)

    def log_of(self, topic: str, partition: int) -> int:
        """Which log of the partition the records appended now come from."""
        return self.logs.get((topic, partition), 0)

    def new_log(self, topic: str, partition: int) -> int:
        """The partition's log is a new one (offsets start again): what comes next is archived, not skipped."""
        key = (topic, partition)
        self.logs[key] = self.logs.get(key, 0) + 1
        self.last_offsets.pop(key, None)
        self.sync()
        return self.logs[key]

    def note_skipped(self, topic: str, partition: int, count: int = 1) -> None:
        """Re-delivered records the archive already held (counted in the checkpoint, reported by verify)."""
        self.skipped[(topic, partition)] = self.skipped.get((topic, partition), 0) + count

    def sync(self) -> None:
        """Make every appended record durable, then record the checkpoint."""
        for f in (self._log, self._idx):
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        tmp = self.directory / "checkpoint.json.tmp"
        tmp.write_text(json.dumps({"seq": self.next_seq - 1, "offsets": _by_topic(self.last_offsets),
                                   "logs": _by_topic(self.logs), "skipped": _by_topic(self.skipped),
                                   "topic_ids": self.topic_ids}))
        os.replace(tmp, self.directory / "checkpoint.json")

    def close(self) -> None:
        if self._log is not None:
            self.sync()
            self._log.close()
            self._idx.close()
            self._log = self._idx = None

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _per_partition(state: dict[str, dict[str, int]]) -> dict[tuple[str, int], int]:
    return {(t, int(p)): n for t, parts in state.items() for p, n in parts.items()}


def _by_topic(values: dict[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), n in values.items():
        out.setdefault(topic, {})[str(partition)] = n
    return out


@dataclass
class VerifyReport:
    records: int = 0
    segments: int = 0
    problems: list[str] = field(default_factory=list)
    logs: int = 0  # partition logs archived (a partition whose broker lost its log counts twice)
    never_archived: int = 0  # offsets missing inside a log: records the archive never got
    archived_twice: int = 0
    skipped_duplicates: int = 0  # re-deliveries the decoy skipped because it held them already

    @property
    def ok(self) -> bool:
        return not self.problems


class ArchiveReader:
    """Reads an archive (also while a decoy is appending to it)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ArchiveError(f"no archive at {self.directory}")

    def __len__(self) -> int:
        return sum(len(_read_entries(_paths(self.directory, s)[1])) for s in _segment_starts(self.directory))

    def read(self, from_seq: int = 0, to_seq: int | None = None) -> Iterator[tuple[int, ArchivedRecord]]:
        """Records with ``from_seq <= seq <= to_seq``, in order, each checked against its checksum."""
        starts = _segment_starts(self.directory)
        for i, start in enumerate(starts):
            end = starts[i + 1] - 1 if i + 1 < len(starts) else None
            if (end is not None and end < from_seq) or (to_seq is not None and start > to_seq):
                continue
            log_path, idx_path = _paths(self.directory, start)
            with open(log_path, "rb") as log:
                for seq, position, *_ in _read_entries(idx_path)[max(from_seq - start, 0):]:
                    if to_seq is not None and seq > to_seq:
                        return
                    found = _read_record(log, position)
                    if found is None or found[0] != seq:
                        raise ArchiveError(f"record {seq} in {log_path.name} is corrupt (checksum or length)")
                    yield found

    def seqs_between(self, since_ms: int | None, until_ms: int | None) -> list[int]:
        """Sequence numbers of records whose Kafka timestamp lies in [since_ms, until_ms]."""
        lo, hi = since_ms if since_ms is not None else -(2**63), until_ms if until_ms is not None else 2**63 - 1
        return [e[0] for s in _segment_starts(self.directory)
                for e in _read_entries(_paths(self.directory, s)[1]) if lo <= e[2] <= hi]

    def verify(self) -> VerifyReport:
        """Checksums, the index, and every log's offsets: none missing, none twice."""
        report = VerifyReport()
        offsets: dict[tuple[str, int, int], list[int]] = {}
        expected = None
        for start in _segment_starts(self.directory):
            report.segments += 1
            log_path, idx_path = _paths(self.directory, start)
            with open(log_path, "rb") as log:
                for seq, position, timestamp, partition, offset in _read_entries(idx_path):
                    if expected is not None and seq != expected:
                        report.problems.append(f"{idx_path.name}: sequence jumps from {expected - 1} to {seq}")
                    expected = seq + 1
                    found = _read_record(log, position)
                    if found is None:
                        report.problems.append(f"{log_path.name}: record {seq} at byte {position} fails its checksum")
                    elif (found[1].partition, found[1].offset, found[1].timestamp) != (partition, offset, timestamp):
                        report.problems.append(f"{idx_path.name}: entry for record {seq} disagrees with the log")
                    else:
                        report.records += 1
                        record = found[1]
                        offsets.setdefault((record.topic, record.partition, record.log), []).append(record.offset)
        self._check_offsets(offsets, report)
        checkpoint = self.directory / "checkpoint.json"
        if checkpoint.exists():
            report.skipped_duplicates = sum(_per_partition(json.loads(checkpoint.read_text()).get("skipped", {})).values())
        return report

    @staticmethod
    def _check_offsets(offsets: dict[tuple[str, int, int], list[int]], report: VerifyReport) -> None:
        # A log's offsets are consecutive (no transactions write to the requests topic): a gap is
        # records the archive never got; the first offset may be past 0 (retention came first).
        report.logs = len(offsets)
        for (topic, partition, log), seen in sorted(offsets.items()):
            unique = sorted(set(seen))
            twice, missing = len(seen) - len(unique), unique[-1] - unique[0] + 1 - len(unique)
            where = f"{topic}[{partition}] log {log}"
            if twice:
                report.archived_twice += twice
                report.problems.append(f"{where}: {twice} record(s) archived twice")
            if missing:
                report.never_archived += missing
                gaps = [(a + 1, b - 1) for a, b in zip(unique, unique[1:], strict=False) if b - a > 1]
                shown = ", ".join(f"{lo}..{hi}" if lo < hi else str(lo) for lo, hi in gaps[:5])
                report.problems.append(f"{where}: {missing} record(s) never archived (offsets {shown}"
                                       f"{', ...' if len(gaps) > 5 else ''})")
