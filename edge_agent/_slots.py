"""Two model slots (A/B) on the device, switched atomically.

Layout under ``root``::

    slots/a/            extracted bundle files + slot.json
    slots/b/
    active -> slots/a   relative symlink, replaced atomically (active.tmp + os.replace)

An install verifies the bundle (:func:`~model_packager.bundle.open_bundle`) first,
extracts it into a fresh ``slots/.incoming-*``, writes ``slot.json`` last and only then
renames it into the *standby* slot's place: a ``slots/<x>`` directory is always complete,
the active slot is never written, and ``active`` names a complete slot (or does not exist
yet) whenever the process dies. :meth:`SlotStore.recover` (call it at start) cleans up and
checks the active slot's files against their digests, falling back to the standby.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from edge_agent._slotmeta import (
    META_NAME,
    STATUSES,
    SlotInfo,
    file_problem,
    fresh_meta,
    parse_slot,
    usable,
    write_json,
)
from edge_agent.errors import SlotError
from model_packager.bundle import PublicKeyLike, open_bundle
from model_packager.files import fsync_dir

log = logging.getLogger(__name__)

__all__ = ["META_NAME", "SLOT_NAMES", "STATUSES", "SlotError", "SlotInfo", "SlotStore"]

SLOT_NAMES = ("a", "b")
_LINK_TARGET = {f"slots/{name}": name for name in SLOT_NAMES}


def _other(name: str) -> str:
    return "b" if name == "a" else "a"


def _check_name(name: str) -> None:
    if name not in SLOT_NAMES:
        raise SlotError(f"unknown slot {name!r}; slots are {', '.join(SLOT_NAMES)}")


class SlotStore:
    """Slots ``a`` and ``b`` under ``root/slots`` and the ``root/active`` symlink.

    Mutating calls hold an exclusive ``flock`` on ``root/.lock`` (between threads and
    processes). ``on_step(name)`` is called at each step of an install or a switch; tests
    use it to kill the process at exact points.
    """

    def __init__(self, root: Path, *, on_step: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.slots_dir = self.root / "slots"
        self.link = self.root / "active"
        self._on_step = on_step
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        # slot name -> (identity of its slot.json when parsed, what it said): a deploy
        # reads the slots a dozen times; parse each version of the file once.
        self._parsed: dict[str, tuple[tuple[int, ...], SlotInfo | None]] = {}

    def _step(self, name: str) -> None:
        if self._on_step:
            self._on_step(name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield

    def _active_name(self) -> str | None:
        try:
            target = os.readlink(self.link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SlotError(f"{self.link} is not a symlink: {exc.strerror}") from exc
        name = _LINK_TARGET.get(target)
        if name is None:
            raise SlotError(f"{self.link} points to {target!r}, not to a slot")
        return name

    def slot(self, name: str) -> SlotInfo | None:
        """Slot ``name`` as recorded, or ``None`` when it holds no (readable) install."""
        _check_name(name)
        path = self.slots_dir / name
        try:
            st = os.stat(path / META_NAME)
        except OSError:
            self._parsed.pop(name, None)
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        info = parse_slot(name, path)
        self._parsed[name] = (key, info)
        return info

    def active(self) -> SlotInfo | None:
        """The slot ``active`` points to; ``None`` before the first activation."""
        if (name := self._active_name()) is None:
            return None
        if (info := self.slot(name)) is None:
            raise SlotError(f"active slot {name} has no readable {META_NAME}; run recover()")
        return info

    def standby(self) -> SlotInfo | None:
        """The other slot when there is an active one and it holds a complete install.

        Its files are checked by size here; :meth:`rollback` checks their digests.
        """
        if (name := self._active_name()) is None:
            return None
        info = self.slot(_other(name))
        return info if info is not None and file_problem(info, deep=False) is None else None

    def _target(self, digest: str) -> tuple[str, SlotInfo | None]:
        """The slot to install into, and the slot already holding ``digest`` if any."""
        current = self._active_name()
        held = {name: self.slot(name) for name in SLOT_NAMES}
        if current is None:  # nothing active yet: an empty slot, else the older install
            ages = {n: info.installed_at if info else -1 for n, info in held.items()}
            target = min(SLOT_NAMES, key=ages.__getitem__)
            same = [info for info in held.values() if usable(info, digest)]
            return target, same[0] if same else None
        target = _other(current)
        if usable(held[target], digest):
            return target, held[target]
        active, fallback = held[current], held[target]
        on_probation = active is not None and active.status == "probation"
        if on_probation and fallback is not None and fallback.status != "failed":
            raise SlotError(
                f"slot {current} is on probation and slot {target} holds the last good"
                " model: mark it serving or roll back before installing another"
            )
        return target, None

    def install(self, bundle_path: Path, *, public_key: PublicKeyLike) -> SlotInfo:
        """Verify ``bundle_path`` and install it into the standby slot (status ``ready``).

        Raises the bundle's :class:`~model_packager.bundle.BundleError` (nothing written)
        when it does not verify. The active slot is never touched; the standby's previous
        content is replaced only once the new one is complete. Refused (:class:`SlotError`)
        while the active slot is on ``probation`` and the standby holds a not-failed model:
        that one is the last good model, the fallback.
        """
        bundle = open_bundle(Path(bundle_path), public_key=public_key)
        if META_NAME in bundle.files:
            raise SlotError(f"bundle {bundle.digest} has a payload file named {META_NAME}")
        self._step("verified")
        with self._locked():
            target, same = self._target(bundle.digest)
            if same is not None:  # idempotent: already installed, not failed, intact
                log.info("slot %s already holds %s", same.name, bundle.digest)
                return same
            dest = self.slots_dir / target
            incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.slots_dir))
            old: Path | None = None
            try:
                bundle.extract_to(incoming)
                self._step("extracted")
                write_json(incoming / META_NAME, fresh_meta(bundle))
                (incoming / "manifest.json").write_bytes(bundle.manifest_bytes)  # as signed
                self._step("prepared")
                if dest.exists() or dest.is_symlink():
                    old = self.slots_dir / f".old-{target}-{uuid.uuid4().hex[:8]}"
                    os.replace(dest, old)
                    self._step("old_moved")
                os.replace(incoming, dest)
                fsync_dir(self.slots_dir)
                self._step("swapped")
            except BaseException:
                if old is not None and not dest.exists():
                    os.replace(old, dest)  # put the previous standby back
                    old = None
                shutil.rmtree(incoming, ignore_errors=True)
                raise
            finally:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        log.info("installed %r into slot %s", bundle, target)
        if (info := self.slot(target)) is None:
            raise SlotError(f"slot {target} vanished during its install")
        return info

    def _set_status(self, info: SlotInfo, status: str) -> SlotInfo:
        if info.status == status:
            return info
        # ``info`` is what the file says (parsed under its stat identity): written back with
        # the new status, not read and parsed again
        meta = {
            "model": info.model,
            "version": info.version,
            "digest": info.digest,
            "status": status,
            "installed_at": info.installed_at,
            "manifest": info.manifest,
        }
        write_json(info.path / META_NAME, meta)
        updated = dataclasses.replace(info, status=status)
        self._remember(updated)
        return updated

    def _remember(self, info: SlotInfo) -> None:
        """Cache ``info`` as what the slot.json just written says (saves a re-parse)."""
        try:
            st = os.stat(info.path / META_NAME)
        except OSError:
            self._parsed.pop(info.name, None)
            return
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self._parsed[info.name] = (key, info)

    def _switch(self, name: str) -> None:
        tmp = self.root / "active.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"slots/{name}", tmp)
        self._step("link_prepared")
        os.replace(tmp, self.link)
        fsync_dir(self.root)
        self._step("switched")

    def _activate(self, name: str, *, status: str) -> SlotInfo:
        if (info := self.slot(name)) is None:
            raise SlotError(f"slot {name} holds no install")
        if info.status == "failed":
            raise SlotError(f"slot {name} ({info.model} {info.version}) is marked failed")
        if (problem := file_problem(info, deep=True)) is not None:
            raise SlotError(f"slot {name} is damaged: {problem}")
        current = self._active_name()
        info = self._set_status(info, status)
        self._step("status_written")
        if current == name:
            return info
        self._switch(name)
        previous = self.slot(current) if current is not None else None
        if previous is not None and previous.status != "failed":
            self._set_status(previous, "ready")
        log.info("slot %s (%s %s) is active, %s", name, info.model, info.version, status)
        return info

    def activate(self, name: str, *, status: str = "serving") -> SlotInfo:
        """Point ``active`` at slot ``name`` (atomically) and give it ``status``.

        The slot's files are checked against their digests first. The previously active
        slot becomes the standby with status ``ready`` (a ``failed`` one stays failed).
        """
        _check_name(name)
        if status not in {"serving", "probation"}:
            raise SlotError(f"an active slot is 'serving' or 'probation', not {status!r}")
        with self._locked():
            return self._activate(name, status=status)

    def rollback(self) -> SlotInfo:
        """Switch back to the standby slot, when it holds a verified, not failed model."""
        with self._locked():
            current = self._active_name()
            if current is None:
                raise SlotError("nothing is active: there is nothing to roll back")
            other = _other(current)
            if self.slot(other) is None:
                raise SlotError(f"cannot roll back: standby slot {other} holds no install")
            return self._activate(other, status="serving")

    def mark(self, name: str, status: str) -> SlotInfo:
        """Record ``status`` (one of :data:`STATUSES`) in slot ``name``'s ``slot.json``."""
        _check_name(name)
        if status not in STATUSES:
            raise SlotError(f"unknown status {status!r}; statuses are {sorted(STATUSES)}")
        with self._locked():
            if (info := self.slot(name)) is None:
                raise SlotError(f"slot {name} holds no install")
            return self._set_status(info, status)

    def _clean_leftovers(self) -> None:
        for path in sorted([*self.slots_dir.glob(".incoming-*"), *self.slots_dir.glob(".old-*")]):
            log.warning("recover: removing leftover %s", path)
            shutil.rmtree(path, ignore_errors=True)
        for name in SLOT_NAMES:
            for path in (self.slots_dir / name).glob(f".{META_NAME}.*.tmp"):
                path.unlink(missing_ok=True)
        tmp = self.root / "active.tmp"
        if tmp.is_symlink() or tmp.exists():
            log.warning("recover: removing unfinished switch %s", tmp)
            tmp.unlink()

    def _current_or_broken(self) -> str | None:
        try:
            return self._active_name()
        except SlotError as exc:  # a plain file, or a link to elsewhere: never a slot
            log.error("recover: %s; removing it", exc)
            self.link.unlink()
            return None

    def recover(self) -> None:
        """Repair what an interrupted install or switch left; call it when the agent starts.

        Removes leftovers and checks the active slot's file digests. A damaged active slot
        is marked ``failed`` and a verified standby takes over; without one, ``active`` is
        removed (never serve a damaged model). An inactive ``serving``/``probation`` slot
        goes back to ``ready``.
        """
        with self._locked():
            self._clean_leftovers()
            current = self._current_or_broken()
            if current is not None:
                current = self._repair_active(current)
            for info in (self.slot(name) for name in SLOT_NAMES if name != current):
                if info is not None and info.status in {"serving", "probation"}:
                    log.warning("recover: inactive slot %s was %s: ready", info.name, info.status)
                    self._set_status(info, "ready")

    def _repair_active(self, current: str) -> str | None:
        info = self.slot(current)
        problem = f"no readable {META_NAME}" if info is None else file_problem(info, deep=True)
        if problem is None:
            return current
        log.error("recover: active slot %s is damaged: %s", current, problem)
        if info is not None:
            with contextlib.suppress(OSError, ValueError):
                self._set_status(info, "failed")
        other = self.slot(_other(current))
        if (
            other is not None
            and other.status != "failed"
            and file_problem(other, deep=True) is None
        ):
            self._set_status(other, "serving")
            self._switch(other.name)
            log.warning("recover: switched to slot %s (%s)", other.name, other.version)
            return other.name
        log.error("recover: no verified standby either; %s removed", self.link)
        self.link.unlink()
        fsync_dir(self.root)
        return None
