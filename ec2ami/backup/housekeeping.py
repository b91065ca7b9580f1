"""Housekeeping: prune each server as soon as its new image is available, on a thread of
its own, so deregistering overlaps with creating. Retention itself is decided by plan.py.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.backup.images import prune
from ec2ami.backup.plan import due
from ec2ami.facts import AVAILABLE, FAILED

if TYPE_CHECKING:
    from ec2ami.backup.copies import Finisher
    from ec2ami.backup.journal import Journal
    from ec2ami.backup.look import Outcome
    from ec2ami.backup.plan import Image, Prune

log = logging.getLogger(__name__)


def guarded(out: Outcome, what: str, func: Any, *args: Any) -> None:
    """Run one server's step; an AWS error fails that server only."""
    try:
        func(*args)
    except AWS_ERRORS as err:
        out.fail(f"{what}: {error_text(err)}")


class Housekeeping:
    """Shares, deprecates and prunes a server's images in one region, as each server settles."""

    def __init__(
        self, ec2: Any, finisher: Finisher, existing: list[Image],
        planned: dict[str, list[Prune]], prune: bool, journal: Journal,
    ) -> None:  # fmt: skip
        self.ec2, self.finisher, self.existing = ec2, finisher, existing
        self.planned, self.prune, self.journal = planned, prune, journal

    def apply(self, out: Outcome) -> None:
        """Carry out what the plan says of a server once its new image has settled, and
        finish the images it keeps. Retention is the plan's (plan.due); this adds only
        the run's own image when it failed, unless the plan prunes nothing (--no-prune)."""
        images = {i.image_id: i for i in self.existing if i.server == out.name}
        if out.image:
            images[out.image.image_id] = out.image
        verified = not out.error and out.image is not None and out.image.state == AVAILABLE
        doomed = [(p.image, p.reason) for p in due(self.planned.get(out.name, []), verified)]
        if self.prune and out.image is not None and out.image.state == FAILED:
            doomed.append((out.image, "state failed"))
        going = {image.image_id for image, _ in doomed}
        kept = [i for i in images.values() if i.state == AVAILABLE and i.image_id not in going]
        self.finisher.finish(kept, out)
        prune(self.ec2, doomed, out, self.journal, self.finisher.protect)


class HousekeepingThread:
    """Applies Housekeeping to each settled server in a thread of its own.

    So deregistrations, paced by their own EC2 bucket, run side by side with
    the creates and never hold up the polls.
    """

    def __init__(self, care: Housekeeping) -> None:
        self.care = care
        self.queue: queue.Queue[Outcome | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, out: Outcome) -> None:
        """Look after this server when the thread gets to it."""
        self.queue.put(out)

    def finish(self) -> None:
        """Wait until every submitted server is looked after."""
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        while (out := self.queue.get()) is not None:
            try:
                self.care.apply(out)
            except Exception as err:  # a bug must not hide a server: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                out.fail(f"pruning failed: unexpected {type(err).__name__}: {err}")
