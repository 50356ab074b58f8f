"""edge_agent._slots: A/B model slots with real signed bundles, crash-safety by SIGKILL."""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent._slots import SlotError, SlotInfo, SlotStore
from model_packager.bundle import (
    BundleCorrupt,
    BundleError,
    BundleInfo,
    BundleSignatureError,
    file_digest,
    write_bundle,
)
from model_packager.signing import Ed25519PrivateKey, generate_private_key, public_key_bytes

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
KEY = generate_private_key()
PUB = public_key_bytes(KEY)


def make_bundle(
    directory: Path, version: int, *, size: int = 2048, key: Ed25519PrivateKey = KEY
) -> BundleInfo:
    files = {
        "model.int8.onnx": os.urandom(size),
        "labels.txt": f"zero\none\nv{version}\n".encode(),
    }
    return write_bundle(
        directory / f"digits-v{version}.bundle",
        manifest={"name": "digits", "version": version, "created_at": "2026-01-02T03:04:05Z"},
        files=files,
        signing_key=key,
    )


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its bytes (files) or link target (symlinks)."""
    state: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_file() and path.name != ".lock":
            state[rel] = path.read_bytes()
    return state


def assert_verified(info: SlotInfo) -> None:
    files = info.manifest["files"]
    assert files, "a slot without files"
    for name, entry in files.items():
        path = info.path / name
        assert path.stat().st_size == entry["size"]
        assert file_digest(path) == entry["digest"]


def assert_clean(root: Path) -> None:
    assert not list((root / "slots").glob(".incoming-*"))
    assert not list((root / "slots").glob(".old-*"))
    assert not (root / "active.tmp").is_symlink()


def test_install_activate_install_activate_rollback(tmp_path: Path) -> None:
    v1, v2 = make_bundle(tmp_path, 1), make_bundle(tmp_path, 2)
    store = SlotStore(tmp_path / "dev")
    assert store.active() is None and store.standby() is None

    first = store.install(v1.path, public_key=PUB)
    assert (first.name, first.version, first.status) == ("a", 1, "ready")
    assert first.digest == v1.digest and first.model == "digits"
    assert_verified(first)
    assert store.active() is None  # installing never activates

    active = store.activate("a")
    assert (active.name, active.status) == ("a", "serving")
    assert os.readlink(tmp_path / "dev" / "active") == "slots/a"
    before = snapshot(tmp_path / "dev" / "slots" / "a")

    second = store.install(v2.path, public_key=PUB)
    assert (second.name, second.version, second.status) == ("b", 2, "ready")
    assert snapshot(tmp_path / "dev" / "slots" / "a") == before  # the active slot untouched
    assert store.active() == active
    assert store.standby() == second

    now = store.activate("b", status="probation")
    assert (now.name, now.status) == ("b", "probation")
    standby = store.standby()
    assert standby is not None and (standby.name, standby.version, standby.status) == (
        "a",
        1,
        "ready",
    )
    assert (tmp_path / "dev" / "active" / "labels.txt").read_bytes().endswith(b"v2\n")

    back = store.rollback()
    assert (back.name, back.version, back.status) == ("a", 1, "serving")
    assert (tmp_path / "dev" / "active" / "labels.txt").read_bytes().endswith(b"v1\n")
    standby = store.standby()
    assert standby is not None and (standby.name, standby.status) == ("b", "ready")
    assert_clean(tmp_path / "dev")


def test_a_new_install_replaces_the_standby_and_keeps_the_active(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "dev")
    store.activate(store.install(make_bundle(tmp_path, 1).path, public_key=PUB).name)
    store.install(make_bundle(tmp_path, 2).path, public_key=PUB)
    third = store.install(make_bundle(tmp_path, 3).path, public_key=PUB)
    assert (third.name, third.version) == ("b", 3)
    assert sorted(p.name for p in (tmp_path / "dev" / "slots").iterdir()) == ["a", "b"]
    active = store.active()
    assert active is not None and active.version == 1


def test_installing_the_same_bundle_again_is_a_no_op(tmp_path: Path) -> None:
    v1 = make_bundle(tmp_path, 1)
    store = SlotStore(tmp_path / "dev")
    first = store.install(v1.path, public_key=PUB)
    assert store.install(v1.path, public_key=PUB) == first
    store.activate("a")
    v2 = make_bundle(tmp_path, 2)
    second = store.install(v2.path, public_key=PUB)
    assert store.install(v2.path, public_key=PUB) == second


def test_failed_slots_and_misuse(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "dev")
    with pytest.raises(SlotError, match="nothing is active"):
        store.rollback()
    with pytest.raises(SlotError, match="unknown slot"):
        store.activate("c")
    with pytest.raises(SlotError, match="holds no install"):
        store.activate("b")
    with pytest.raises(SlotError, match="holds no install"):
        store.mark("a", "failed")
    store.activate(store.install(make_bundle(tmp_path, 1).path, public_key=PUB).name)
    with pytest.raises(SlotError, match="standby slot b holds no install"):
        store.rollback()
    with pytest.raises(SlotError, match="unknown status"):
        store.mark("a", "broken")
    with pytest.raises(SlotError, match="'serving' or 'probation'"):
        store.activate("a", status="ready")
    store.install(make_bundle(tmp_path, 2).path, public_key=PUB)
    store.activate("b", status="probation")
    with pytest.raises(SlotError, match="on probation"):  # a would be the only fallback
        store.install(make_bundle(tmp_path, 3).path, public_key=PUB)
    # Probation fails: mark it failed and roll back; the failed one stays failed.
    assert store.mark("b", "failed").status == "failed"
    assert store.rollback().name == "a"
    assert store.slot("b") is not None and store.slot("b").status == "failed"  # type: ignore[union-attr]
    with pytest.raises(SlotError, match="marked failed"):
        store.rollback()
    with pytest.raises(SlotError, match="marked failed"):
        store.activate("b")


def test_a_damaged_standby_is_not_activated(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "dev")
    store.activate(store.install(make_bundle(tmp_path, 1).path, public_key=PUB).name)
    standby = store.install(make_bundle(tmp_path, 2).path, public_key=PUB)
    model = standby.path / "model.int8.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(SlotError, match="does not match its digest"):
        store.rollback()
    model.write_bytes(b"short")
    assert store.standby() is None  # its size is wrong: not a complete install
    active = store.active()
    assert active is not None and active.name == "a"


@pytest.mark.parametrize("attack", ["tampered", "other_key"])
def test_an_unverified_bundle_never_lands_in_a_slot(tmp_path: Path, attack: str) -> None:
    store = SlotStore(tmp_path / "dev")
    store.activate(store.install(make_bundle(tmp_path, 1).path, public_key=PUB).name)
    store.install(make_bundle(tmp_path, 2).path, public_key=PUB)
    before = snapshot(tmp_path / "dev")
    bad = make_bundle(tmp_path, 3, key=generate_private_key() if attack == "other_key" else KEY)
    expected: type[BundleError] = BundleSignatureError
    if attack == "tampered":
        data = bytearray(bad.path.read_bytes())
        data[len(data) // 2] ^= 0x40
        bad.path.write_bytes(bytes(data))
        expected = BundleCorrupt
    with pytest.raises(expected):
        store.install(bad.path, public_key=PUB)
    assert snapshot(tmp_path / "dev") == before


@pytest.mark.parametrize("damage", ["flipped_byte", "missing_file", "no_slot_json"])
def test_recover_switches_from_a_damaged_active_to_the_good_standby(
    tmp_path: Path, damage: str
) -> None:
    store = SlotStore(tmp_path / "dev")
    store.install(make_bundle(tmp_path, 1).path, public_key=PUB)
    store.activate(store.install(make_bundle(tmp_path, 2).path, public_key=PUB).name)
    slot_b = tmp_path / "dev" / "slots" / "b"
    if damage == "flipped_byte":
        data = bytearray((slot_b / "model.int8.onnx").read_bytes())
        data[7] ^= 0xFF
        (slot_b / "model.int8.onnx").write_bytes(bytes(data))
    elif damage == "missing_file":
        (slot_b / "labels.txt").unlink()
    else:
        (slot_b / "slot.json").unlink()

    SlotStore(tmp_path / "dev").recover()

    active = store.active()
    assert active is not None and (active.name, active.version, active.status) == (
        "a",
        1,
        "serving",
    )
    assert_verified(active)
    if damage != "no_slot_json":
        assert store.slot("b").status == "failed"  # type: ignore[union-attr]


def test_recover_without_a_good_standby_removes_active(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "dev")
    info = store.activate(store.install(make_bundle(tmp_path, 1).path, public_key=PUB).name)
    (info.path / "labels.txt").write_bytes(b"zero\none\nvX\n")  # same size, other bytes
    store.recover()
    assert store.active() is None
    assert store.slot("a").status == "failed"  # type: ignore[union-attr]


def test_recover_removes_leftovers_and_keeps_a_good_active(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    store = SlotStore(root)
    store.activate(store.install(make_bundle(tmp_path, 1).path, public_key=PUB).name)
    (root / "slots" / ".incoming-x1y2").mkdir()
    (root / "slots" / ".incoming-x1y2" / "model.int8.onnx").write_bytes(b"half")
    (root / "slots" / ".old-b-1234").mkdir()
    os.symlink("slots/b", root / "active.tmp")
    before = snapshot(root / "slots" / "a")
    store.recover()
    assert_clean(root)
    assert os.readlink(root / "active") == "slots/a"
    assert snapshot(root / "slots" / "a") == before


# -- crash safety: SIGKILL during install and activate ----------------------------------

KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from edge_agent._slots import SlotStore

root, bundle, public_hex, kill_at = sys.argv[1:5]

def on_step(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

store = SlotStore(Path(root), on_step=on_step)
print("READY", flush=True)
info = store.install(Path(bundle), public_key=bytes.fromhex(public_hex))
store.activate(info.name)
print("DONE", flush=True)
"""

INSTALL_STEPS = ["verified", "extracted", "prepared", "old_moved", "swapped"]
ACTIVATE_STEPS = ["status_written", "link_prepared", "switched"]


@pytest.fixture(scope="module")
def crash_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A device with v1 in the standby slot a and v2 active in b; v3 (16 MB) to install."""
    base = tmp_path_factory.mktemp("crash")
    store = SlotStore(base / "dev")
    store.install(make_bundle(base, 1).path, public_key=PUB)
    store.activate(store.install(make_bundle(base, 2).path, public_key=PUB).name)
    script = base / "kill_script.py"
    script.write_text(KILL_SCRIPT)
    return base / "dev", make_bundle(base, 3, size=16 * 1024 * 1024).path, script


def run_and_kill(
    world: tuple[Path, Path, Path], root: Path, *, kill_at: str = "", delay: float | None = None
) -> int:
    base_root, bundle, script = world
    shutil.copytree(base_root, root, symlinks=True)
    argv = [sys.executable, str(script), str(root), str(bundle), PUB.hex(), kill_at]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == b"READY\n"
        if delay is not None:
            time.sleep(delay)  # a random instant during install/activate, on purpose
            proc.send_signal(signal.SIGKILL)
        return proc.wait(30)


def check_after_crash(root: Path) -> int | str:
    store = SlotStore(root)
    store.recover()
    assert_clean(root)
    active = store.active()
    assert active is not None, "recover left no active slot"
    assert os.readlink(root / "active") == f"slots/{active.name}"
    assert active.status == "serving"
    assert_verified(active)
    other = store.slot("a" if active.name == "b" else "b")
    if other is not None:
        assert other.status == "ready"
    # The device keeps working: the next deploy installs and activates.
    store.activate(store.install(make_bundle(root.parent, 4).path, public_key=PUB).name)
    assert store.rollback().version == active.version
    return active.version


@pytest.mark.parametrize("kill_at", INSTALL_STEPS + ACTIVATE_STEPS)
def test_sigkill_at_each_step_leaves_a_complete_active_slot(
    crash_world: tuple[Path, Path, Path], tmp_path: Path, kill_at: str
) -> None:
    code = run_and_kill(crash_world, tmp_path / "dev", kill_at=kill_at)
    assert code == -signal.SIGKILL
    version = check_after_crash(tmp_path / "dev")
    assert version == (3 if kill_at == "switched" else 2)


def test_sigkill_at_random_instants(crash_world: tuple[Path, Path, Path], tmp_path: Path) -> None:
    rng = random.Random(os.getpid())
    seen: set[int | str] = set()
    for i in range(10):
        root = tmp_path / f"run{i}" / "dev"
        root.parent.mkdir()
        run_and_kill(crash_world, root, delay=rng.uniform(0.0, 0.08))
        seen.add(check_after_crash(root))
    assert seen <= {2, 3}


def test_an_uninterrupted_run_switches(
    crash_world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    assert run_and_kill(crash_world, tmp_path / "dev") == 0
    assert check_after_crash(tmp_path / "dev") == 3
