"""``write_private``: atomic, 0600, safe under concurrent writers (CI once caught two threads
of one process racing on a shared temp-file name: the second rename found nothing)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from model_packager.files import write_private


def test_writes_0600_in_a_0700_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / ".secret"
    write_private(target, "s3cret\n")
    assert target.read_text() == "s3cret\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in target.parent.iterdir()) == [".secret"]


def test_concurrent_writers_never_fail_and_leave_one_whole_file(tmp_path: Path) -> None:
    target = tmp_path / ".hub_hash"
    texts = [f"{i:04d}" * 200 + "\n" for i in range(16)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts))

    def writer(text: str) -> None:
        start.wait()
        try:
            for _ in range(20):
                write_private(target, text)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == [".hub_hash"]  # no temp files left


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "acl"
    write_private(target, "old\n")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("model_packager.files.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_private(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acl"]
