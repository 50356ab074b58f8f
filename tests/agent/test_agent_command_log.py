"""The agent's command log: which last event a repeated command is answered with, in memory
and after a restart (only received / activated / final kinds are written to disk)."""

from __future__ import annotations

from pathlib import Path

from edge_agent._deploy import CommandLog
from proto import messages_pb2 as pb

K = pb.EventKind


def test_in_memory_it_answers_with_the_latest_event(tmp_path: Path) -> None:
    log = CommandLog(tmp_path / "commands.json")
    for kind in (K.EVENT_KIND_RECEIVED, K.EVENT_KIND_DOWNLOADED, K.EVENT_KIND_VERIFIED):
        log.record("c1", kind)
    assert log.last("c1") == K.EVENT_KIND_VERIFIED
    assert log.last("unknown") is None


def test_after_a_restart_it_answers_with_the_last_persisted_kind(tmp_path: Path) -> None:
    path = tmp_path / "commands.json"
    log = CommandLog(path)
    log.record("c1", K.EVENT_KIND_RECEIVED)
    log.record("c1", K.EVENT_KIND_DOWNLOADED)  # in between: not written
    log.record("c1", K.EVENT_KIND_VERIFIED)
    assert CommandLog(path).last("c1") == K.EVENT_KIND_RECEIVED
    log.record("c1", K.EVENT_KIND_ACTIVATED)
    assert CommandLog(path).last("c1") == K.EVENT_KIND_ACTIVATED
    log.record("c1", K.EVENT_KIND_HEALTHY)
    assert CommandLog(path).last("c1") == K.EVENT_KIND_HEALTHY


def test_a_command_first_seen_at_any_kind_is_persisted(tmp_path: Path) -> None:
    """A repeat of a command must never be acted on twice, whatever its first event was."""
    path = tmp_path / "commands.json"
    CommandLog(path).record("c2", K.EVENT_KIND_FAILED)
    log = CommandLog(path)
    log.record("c3", K.EVENT_KIND_VERIFIED)
    again = CommandLog(path)
    assert again.last("c2") == K.EVENT_KIND_FAILED
    assert again.last("c3") == K.EVENT_KIND_VERIFIED


def test_a_damaged_log_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "commands.json"
    path.write_text("{not json")
    assert CommandLog(path).last("c1") is None
