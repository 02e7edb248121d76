"""``rendezvous replay`` and ``rendezvous archive``: the decoy's archive."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from decoy.archive import ArchiveReader
from decoy.replay import replay as replay_records
from rendezvous.kernel.options import (
    broker_option,
    kafka_settings,
    stderr_console,
    topic_prefix_option,
    topics_for,
)
from rendezvous.operations.broker import resolve_broker

__all__ = ["replay", "archive", "verify", "info"]


def _time_ms(value: str | None) -> int | None:
    """Epoch milliseconds, or an ISO 8601 time (2026-11-23T10:00:00+00:00)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither epoch milliseconds nor an ISO 8601 time") from None


@click.command()
@click.option("--archive", "archive_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The decoy's archive directory.")
@broker_option()
@topic_prefix_option
@click.option("--topic", default=None, help="Topic to send to. Default: the requests topic.")
@click.option("--from-seq", type=click.IntRange(0), default=0, show_default=True, help="First record (archive sequence number).")
@click.option("--to-seq", type=click.IntRange(0), default=None, help="Last record, inclusive. Default: the end.")
@click.option("--since", default=None, help="Only records with a Kafka timestamp at or after this (epoch ms or ISO time).")
@click.option("--until", default=None, help="Only records with a Kafka timestamp at or before this.")
@click.option("--rate", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Records per second (0: as fast as possible).")
@click.option("--keep-timestamps", is_flag=True, help="Keep the original timestamps (default: now, so they are answered as new).")
def replay(archive_dir: Path, broker: str | None, topic_prefix: str, topic: str | None, from_seq: int,
           to_seq: int | None, since: str | None, until: str | None, rate: float, keep_timestamps: bool) -> None:
    """Send a range of the decoy's archive back onto a topic, byte for byte."""
    kafka = kafka_settings(resolve_broker(broker))
    reader = ArchiveReader(archive_dir)
    target = topic or topics_for(topic_prefix).requests
    total = None  # a time range: how many records it holds is known only once read
    if since is None and until is None:  # sequence numbers run from 0 to len - 1
        last = len(reader) - 1 if to_seq is None else min(to_seq, len(reader) - 1)
        total = max(last - from_seq + 1, 0)
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=stderr_console()) as bars:
        task = bars.add_task("replay", total=total)
        sent = replay_records(reader, kafka, target, from_seq=from_seq, to_seq=to_seq,
                              since_ms=_time_ms(since), until_ms=_time_ms(until), rate=rate,
                              keep_timestamps=keep_timestamps,
                              on_progress=lambda n: bars.update(task, completed=n))
    click.echo(f"replayed {sent} records from {archive_dir} to {target}")


@click.group()
def archive() -> None:
    """Inspect the decoy's archive."""


@archive.command("verify")
@click.argument("archive_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(archive_dir: Path) -> None:
    """Check every record against its checksum and the index, and every partition's offsets for gaps.

    Re-deliveries the decoy skipped (it held them already) are counted apart from records it
    never got; a partition whose broker lost its log (offsets starting again) counts as two logs."""
    report = ArchiveReader(archive_dir).verify()
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{report.records} records of {report.logs} partition log(s) in {report.segments} segments; "
               f"{report.never_archived} never archived, {report.archived_twice} archived twice, "
               f"{report.skipped_duplicates} re-deliveries skipped: {'ok' if report.ok else 'DAMAGED'}")
    if not report.ok:
        raise SystemExit(1)


@archive.command("info")
@click.argument("archive_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
def info(archive_dir: Path) -> None:
    """How many records, from when to when."""
    reader = ArchiveReader(archive_dir)
    stamps = [r.timestamp for _, r in reader.read()]
    click.echo(f"{len(stamps)} records")
    if stamps:
        first, last = (datetime.fromtimestamp(t / 1000).isoformat(timespec="milliseconds") for t in (min(stamps), max(stamps)))
        click.echo(f"timestamps {first} .. {last}")
