"""Fault injection for the "nothing lost, nothing twice" tests (``MODALITY_HUB_FAULT_EXIT_AFTER``).

``N`` makes the process (local engine) or one Ray actor die once, without any
cleanup, after it wrote N part files, in the middle of writing the next one: its
temporary file is on disk, not yet renamed.  ``N:after-rename`` dies right after
that rename instead, before the batch is reported done (a Ray retry then writes
the same part again, under the same name).  A marker file ``DEST/_fault_fired``,
created with ``O_EXCL``, makes it fire once per DEST even with several actors.

``MODALITY_HUB_FAULT_POISON=ID`` (Ray engine) makes every actor that is handed the row ``ID``
die before embedding it, every time: a poison item, which the engine must bound (the batch is
retried once, then each of its rows runs alone, and a row that still kills its actor is
recorded as an ``error`` row).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["Fault", "MARKER", "ENV_POISON", "poison_setting"]

MARKER = "_fault_fired"
ENV_POISON = "MODALITY_HUB_FAULT_POISON"


def poison_setting() -> str | None:
    """The id of the row that kills any Ray actor handed it (tests), or None."""
    return os.environ.get(ENV_POISON, "").strip() or None


class Fault:
    """Counts part files written by this process and dies once at the configured point."""

    def __init__(self, setting: tuple[int, str] | None, dest: Path, how: str = "sigkill") -> None:
        self.setting, self.marker, self.how = setting, dest / MARKER, how
        self.written = 0

    def _fire(self) -> None:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            self.setting = None  # another process fired already
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        if self.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)

    @staticmethod
    def poison(ids: list[str], poison: str | None) -> None:
        """Die at once, without cleanup, when ``poison`` is among ``ids`` (every time: a poison item)."""
        if poison is not None and poison in ids:
            os._exit(1)

    def before_rename(self, tmp: Path) -> None:
        if self.setting and self.setting[1] == "before-rename" and self.written == self.setting[0]:
            self._fire()

    def after_rename(self) -> None:
        self.written += 1
        if self.setting and self.setting[1] == "after-rename" and self.written == self.setting[0] + 1:
            self._fire()
