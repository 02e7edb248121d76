"""The decoy's archive: lossless, rotating, checksummed, and recoverable after a crash."""

import os
from pathlib import Path

import msgspec
import pytest

from decoy.archive import ArchivedRecord, ArchiveError, ArchiveReader, ArchiveWriter


def record(i: int, partition: int = 0, value: bytes | None = None, offset: int | None = None) -> ArchivedRecord:
    return ArchivedRecord("requests", partition, i if offset is None else offset, 1_000_000 + i, f"k{i}".encode(),
                          value if value is not None else os.urandom(50 + i % 200),
                          [("trace", b"t%d" % i), ("empty", None)] if i % 3 == 0 else None)


def test_records_come_back_byte_for_byte_across_segments(tmp_path: Path):
    written = [record(i, partition=i % 4, offset=i // 4) for i in range(500)]
    with ArchiveWriter(tmp_path, segment_bytes=4096) as w:
        assert [w.append(r) for r in written] == list(range(500))
    assert len(list(tmp_path.glob("*.log"))) > 5  # it rotated
    reader = ArchiveReader(tmp_path)
    assert len(reader) == 500
    assert [r for _, r in reader.read()] == written
    assert [seq for seq, _ in reader.read(120, 130)] == list(range(120, 131))
    assert reader.verify().ok and reader.verify().records == 500


def test_time_ranges_select_by_kafka_timestamp(tmp_path: Path):
    with ArchiveWriter(tmp_path) as w:
        for i in range(10):
            w.append(record(i))
    assert ArchiveReader(tmp_path).seqs_between(1_000_003, 1_000_005) == [3, 4, 5]


def test_a_torn_tail_is_truncated_and_appending_resumes(tmp_path: Path):
    w = ArchiveWriter(tmp_path)
    for i in range(10):
        w.append(record(i))
    w.sync()
    w._log.write(b"\x00\x00\x01\x00half a record")  # the process dies mid-write
    w._log.flush()
    w._idx.flush()
    w2 = ArchiveWriter(tmp_path)
    assert w2.next_seq == 10
    w2.append(record(10))
    w2.close()
    reader = ArchiveReader(tmp_path)
    assert [seq for seq, _ in reader.read()] == list(range(11)) and reader.verify().ok


def test_records_written_but_not_indexed_are_recovered(tmp_path: Path):
    w = ArchiveWriter(tmp_path)
    for i in range(5):
        w.append(record(i))
    w.sync()
    idx = next(tmp_path.glob("*.idx"))
    idx.write_bytes(idx.read_bytes()[: 36 * 2 + 10])  # the index lost its tail (and half an entry)
    w2 = ArchiveWriter(tmp_path)
    assert w2.next_seq == 5
    w2.close()
    assert [r.offset for _, r in ArchiveReader(tmp_path).read()] == [0, 1, 2, 3, 4]


def test_a_restarted_decoy_knows_what_it_already_archived(tmp_path: Path):
    w = ArchiveWriter(tmp_path)
    w.append(record(7, partition=2))
    w.sync()
    w.append(record(8, partition=2))  # archived but not yet in the checkpoint
    w._log.flush()
    w._idx.flush()
    w2 = ArchiveWriter(tmp_path)
    assert w2.already_archived("requests", 2, 8)
    assert not w2.already_archived("requests", 2, 9)
    assert not w2.already_archived("requests", 1, 0)


def test_a_new_log_is_archived_after_the_old_and_verify_tells_gaps_from_skipped_redeliveries(tmp_path: Path):
    w = ArchiveWriter(tmp_path)
    for i in range(5):
        w.append(record(i))
    w.note_skipped("requests", 0, 3)  # re-delivered after a crash: held already
    assert w.already_archived("requests", 0, 2)
    assert w.new_log("requests", 0) == 1  # the broker's log starts again at offset 0
    assert not w.already_archived("requests", 0, 2)
    for i in (0, 1, 2, 5):  # offsets 3 and 4 of the new log never reach the archive
        w.append(msgspec.structs.replace(record(i), log=w.log_of("requests", 0)))
    w.close()
    report = ArchiveReader(tmp_path).verify()
    assert (report.logs, report.never_archived, report.archived_twice, report.skipped_duplicates) == (2, 2, 0, 3)
    assert report.problems == ["requests[0] log 1: 2 record(s) never archived (offsets 3..4)"]
    again = ArchiveWriter(tmp_path)  # the log and the skips are in the checkpoint
    assert again.log_of("requests", 0) == 1 and again.already_archived("requests", 0, 5)


def test_corruption_is_detected(tmp_path: Path):
    with ArchiveWriter(tmp_path) as w:
        for i in range(5):
            w.append(record(i, value=b"A" * 100))
    log = next(tmp_path.glob("*.log"))
    data = bytearray(log.read_bytes())
    data[data.index(b"A" * 100) + 50] ^= 0xFF  # one flipped bit in the first record's value
    log.write_bytes(bytes(data))
    report = ArchiveReader(tmp_path).verify()
    assert not report.ok and "record 0" in report.problems[0] and report.records == 4
    with pytest.raises(ArchiveError, match="record 0 .* corrupt"):
        list(ArchiveReader(tmp_path).read())


def test_reading_a_missing_archive_says_so(tmp_path: Path):
    with pytest.raises(ArchiveError, match="no archive"):
        ArchiveReader(tmp_path / "nope")
