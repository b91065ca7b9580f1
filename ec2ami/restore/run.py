"""The story of a restore: find each server's backup, plan, check, launch, report."""

from __future__ import annotations

import argparse
import logging
import shlex
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.contract import TOOL
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import AVAILABLE, IN_RECYCLE_BIN
from ec2ami.live import progress
from ec2ami.output import print_json
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.images import (
    bin_time,
    find_image,
    live_originals,
    pick_images,
    restore_from_recycle_bin,
    restored_earlier,
)
from ec2ami.restore.launch import progress_rows, run_restores
from ec2ami.restore.listing import dry_run
from ec2ami.restore.model import Restore, Run, one_server, server_token
from ec2ami.restore.plan import plan_launch
from ec2ami.restore.prelaunch import check_before_launch, gather_facts
from ec2ami.restore.recorded import read_recorded
from ec2ami.restore.report import report

if TYPE_CHECKING:
    from ec2ami.aws import Clients

log = logging.getLogger(__name__)


def restore(clients: Clients, config: RestoreConfig, args: argparse.Namespace) -> int:
    """Find each server's backup, plan and check its launch, launch at EC2's pace, finish
    and check each twin as it comes up, and report. Exit 1 if any server failed."""
    run = Run(config.fleet)
    try:
        restores = prepare(clients, config, args, run)
    except AWS_ERRORS as err:
        raise RestoreError(f"AWS error: {error_text(err)}") from None
    if restores is None or args.dry_run:
        return EXIT_OK if restores is None else dry_run(clients.ec2, restores, config, args.json)
    try:
        with progress("restore", partial(progress_rows, restores, config.wait, run), args.quiet):
            run_restores(clients, config, restores, run)
    except KeyboardInterrupt:
        return interrupted(restores, run, args)
    report(clients.ec2, restores, config, args.json, run)
    return EXIT_FAILED if any(r.error for r in restores) else EXIT_OK


def interrupted(restores: list[Restore], run: Run, args: argparse.Namespace) -> int:
    """Ctrl-C after launching began: what was launched and how far each got, and the exact
    command that finishes the job (this run's client token: EC2 returns the same instances
    instead of launching more, and the rest of each setup is done)."""
    log.error("interrupted: nothing more was done")
    for r in restores:
        if r.ids:
            log.error("%s: launched %s, stopped at %s (Elastic IPs, load balancers and DNS "
                      "may not be set yet)", r.server, ", ".join(r.ids), r.stage)  # fmt: skip
        elif r.plan and not r.problems:
            log.error("%s: not launched", r.server)
    command = [c for c in getattr(args, "command", []) if c]
    if "--client-token" not in command:
        command += ["--client-token", run.token]
    if any(r.ids for r in restores):  # what a rerun without the token would meet
        log.error("run it with this client token: EC2 returns the instances above instead of "
                  "launching more. Without --client-token, a rerun would stop at them as "
                  "already restored, and --replace would launch second ones")  # fmt: skip
    log.error("to finish it, run: %s", shlex.join(command))
    return EXIT_FAILED


def prepare(
    clients: Clients, config: RestoreConfig, args: argparse.Namespace, run: Run
) -> list[Restore] | None:
    """Find each server's backup (an AMI_ID from the Recycle Bin if need be), plan its
    launch and check it; None when a dry run can plan no further. Launches nothing.

    The describes are made once for all servers. In a fleet a server that cannot be
    restored is marked failed and the others go on; a single restore stops instead.
    """
    ec2, fleet = clients.ec2, config.fleet
    if config.ami_id:
        image = find_image(ec2, config)
        if config.drill and image["State"] != AVAILABLE:
            raise RestoreError(
                f"image {image['ImageId']} is {image['State']}: a drill tests available "
                "images only, and changes nothing to reach one"
            )
        if image["State"] == IN_RECYCLE_BIN:
            if args.dry_run and args.json:
                print_json({"dry_run": True, "servers": [], "recycle_bin_image": {
                    "image_id": image["ImageId"], "name": image.get("Name", ""),
                    "leaves_bin": bin_time(image.get("RecycleBinExitTime"))}})  # fmt: skip
                return None
            if args.dry_run:
                print(
                    f"Would restore {image['ImageId']} ({image.get('Name', '')}) from the "
                    f"Recycle Bin, where it stays until {bin_time(image.get('RecycleBinExitTime'))}"
                    ", with its snapshots, then launch from it. Its recorded configuration is on "
                    "its tags, which EC2 shows only once it is restored: nothing more can be "
                    "planned before."
                )
                return None
            image = restore_from_recycle_bin(ec2, image)
        restores = [Restore(read_recorded(image).server or image["ImageId"], image)]
    else:
        restores = pick_images(ec2, config)
    token = run.token = run.token or args.client_token or f"{TOOL}-{uuid.uuid4().hex}"
    if not config.drill:
        guard_against_doubles(ec2, config, restores, token, args.replace)
    alive = live_originals(ec2, [read_recorded(r.image) for r in restores if r.image])
    for r in restores:
        if r.image and not r.already:
            with one_server(r, fleet):
                recorded = read_recorded(r.image)
                r.plan = plan_launch(
                    config, r.image, recorded, recorded.instance_id in alive,
                    server_token(token, r.server) if fleet else token, ec2.meta.region_name,
                )  # fmt: skip
    facts = gather_facts(clients, [r.plan for r in restores if r.plan], config)
    for r in restores:
        if r.plan:
            with one_server(r, fleet):
                check_before_launch(clients, r.plan, facts)
            for warning in r.plan.warnings:
                log.warning("%s%s", f"{r.server}: " if fleet else "", warning)
        r.at["image_resolved"] = run.since()
    return restores


def guard_against_doubles(
    ec2: Any, config: RestoreConfig, restores: list[Restore], token: str, replace: bool
) -> None:
    """Never a second production server by accident: where an earlier restore's instance of
    a server still runs, a single restore stops before launch and a fleet leaves that server
    as it is (reported as already restored). The instance this run's client token launched
    is not another: a rerun with the token finishes it. --replace launches another anyway."""
    earlier = restored_earlier(ec2, restores)
    for restore in restores:
        mine = server_token(token, restore.server) if config.fleet else token
        others = [i for i in earlier.get(restore.server, []) if i.get("ClientToken") != mine]
        if not others:
            continue
        running = ", ".join(f"{i['InstanceId']} ({i['State']['Name']})" for i in others)
        if replace:
            log.warning("%s: an earlier restore's %s still runs; --replace launches another",
                        restore.server, running)  # fmt: skip
            continue
        tokens = sorted({i.get("ClientToken") or "" for i in others} - {""})
        finish = (  # a single restore's token is the run's; a fleet's is derived from it
            f"If that restore was interrupted, finish it with --client-token {tokens[0]}. "
            if len(tokens) == 1 and not config.fleet else
            "If that restore was interrupted, finish it with the --client-token it printed. "
        )  # fmt: skip
        message = (
            f"{restore.server} was restored already and that instance still runs: {running}. "
            f"{finish}Otherwise terminate it first, or launch another on purpose with --replace"
        )
        if not config.fleet:
            raise RestoreError(message)
        log.warning("%s", message)
        restore.already = [i["InstanceId"] for i in others]
        restore.stage = "done"
