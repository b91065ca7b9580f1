"""The journal: the snapshots of each image this config deregisters, written down before
DeregisterImage, and struck off once they are deleted.

DeregisterImage with DeleteAssociatedSnapshots deletes an image's snapshots; a run killed
in between, or a snapshot EC2 refused to delete, leaves them orphaned. The sweep deletes
an orphan only when facts tie it to this pool: in the region backed up, the volume it was
taken from; anywhere (a copy's snapshots all report vol-ffffffff), this journal, which no
one but this config's runs writes. It lives beside STATE_FILE.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable

log = logging.getLogger(__name__)


class Journal:
    """Snapshots this config's deregistrations left, by region; thread-safe."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def beside(cls, state_file: str | None) -> Journal:
        """The journal of the config whose STATE_FILE this is (none without one)."""
        return cls(os.path.splitext(state_file)[0] + ".journal" if state_file else None)

    def held(self, region: str) -> set[str]:
        """The snapshot ids written down in a region and not yet struck off."""
        with self._lock:
            return set(self._read().get(region, {}))

    def record(self, region: str, image_id: str, snapshot_ids: Iterable[str]) -> None:
        """Write down an image's snapshots before it is deregistered."""
        self._change(region, {s: image_id for s in snapshot_ids}, ())

    def strike(self, region: str, snapshot_ids: Iterable[str]) -> None:
        """Strike off snapshots that are deleted (or were never orphaned)."""
        self._change(region, {}, snapshot_ids)

    def _change(self, region: str, add: dict[str, str], remove: Iterable[str]) -> None:
        if self.path is None:
            return
        with self._lock:
            entries = self._read()
            held = entries.setdefault(region, {})
            held.update(add)
            for snapshot_id in remove:
                held.pop(snapshot_id, None)
            if not held:
                del entries[region]
            try:
                write_atomically(self.path, entries)
            except OSError as err:  # the run goes on: the sweep then ties fewer orphans
                log.warning("journal %s cannot be written: %s", self.path, err)

    def _read(self) -> dict[str, dict[str, str]]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                entries = json.load(handle)
        except (OSError, ValueError) as err:
            log.warning("journal %s cannot be read (%s): its orphans stay until swept by hand",
                        self.path, err)  # fmt: skip
            return {}
        return entries if isinstance(entries, dict) else {}


def write_atomically(path: str, entries: dict[str, dict[str, str]]) -> None:
    """Replace the file at once, so a killed run leaves the old or the new journal."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".journal-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(entries, out, sort_keys=True)
    os.replace(temporary, path)
