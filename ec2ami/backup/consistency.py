"""Consistency through SSM: VSS on Windows (AWSEC2-CreateVssSnapshot makes the image),
or a pre-script, CreateImage with NoReboot, and a post-script that thaws at once.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami import polling
from ec2ami.aws import AWS_ERRORS, chunked, error_text, paginate
from ec2ami.backup.images import create_backup, description
from ec2ami.backup.look import to_image
from ec2ami.backup.ssm_document import script_id
from ec2ami.backup.tags import identity_tags
from ec2ami.contract import TAG_MANAGED, TOOL
from ec2ami.facts import (
    DOC_POWERSHELL,
    DOC_SHELL,
    DOC_VSS,
    ERR_NO_INVOCATION,
    SSM_IDS_MAX,
    SSM_NEEDS,
    SSM_ONLINE,
    SSM_RUNNING,
    SSM_SUCCESS,
    VSS_NEEDS,
)

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.look import Outcome, Server
    from ec2ami.backup.plan import ServerPlan


def back_up(
    clients: Clients, planned: ServerPlan, config: BackupConfig, now: datetime, out: Outcome
) -> None:
    """Make one server's planned image the way its consistency asks."""
    mode = planned.spec.consistency
    if mode == "scripts":
        backup_with_scripts(clients, planned, config, now, out)
    elif mode == "vss":
        backup_with_vss(clients, planned, config, now, out)
    else:
        create_backup(clients.ec2, planned, config, out, no_reboot=mode == "crash")


def platform_of(server: Server) -> str:
    """windows or linux: from SERVERS if given, else from the instance."""
    return server.spec.platform or (
        "windows" if server.instance.get("Platform") == "windows" else "linux"
    )


def ssm_offline(ssm: Any, servers: list[Server]) -> dict[str, str]:
    """For each server SSM cannot reach now, the reason; one call per 50 servers."""
    online: set[str] = set()
    ids = [s.spec.instance_id for s in servers]
    try:
        for batch in chunked(ids, SSM_IDS_MAX):
            filters = [{"Key": "InstanceIds", "Values": batch}]
            for info in paginate(
                ssm, "describe_instance_information", "InstanceInformationList",
                Filters=filters, MaxResults=SSM_IDS_MAX,
            ):  # fmt: skip
                if info.get("PingStatus") == SSM_ONLINE:
                    online.add(info["InstanceId"])
    except AWS_ERRORS as err:
        return {i: f"could not ask SSM about the instance: {error_text(err)}" for i in ids}
    return {
        s.spec.instance_id: (
            f"SSM cannot reach {s.spec.instance_id} (not a managed instance, or not online); "
            f"it needs {SSM_NEEDS}{VSS_NEEDS if s.spec.consistency == 'vss' else ''}"
        )
        for s in servers
        if s.spec.instance_id not in online
    }


def send(ssm: Any, instance_id: str, document: str, parameters: dict, timeout: int) -> str:
    """SendCommand to one instance; return the command id."""
    response = ssm.send_command(
        InstanceIds=[instance_id], DocumentName=document, Parameters=parameters,
        Comment=f"{TOOL} backup", TimeoutSeconds=max(30, timeout),
    )  # fmt: skip
    return response["Command"]["CommandId"]


def send_script(ssm: Any, server: Server, script: str, config: BackupConfig) -> str:
    """Run a shell (Linux) or PowerShell (Windows) script through SSM Run Command: by its
    id through SSM_DOCUMENT, else as the commands of the platform's AWS document."""
    timeout = config.script_timeout_seconds
    if config.ssm_document:
        document, parameters = config.ssm_document, {"script": [script_id(script)]}
    else:
        document = DOC_POWERSHELL if platform_of(server) == "windows" else DOC_SHELL
        parameters = {"commands": [script]}
    parameters["executionTimeout"] = [str(timeout)]
    return send(ssm, server.spec.instance_id, document, parameters, timeout)


def wait_command(ssm: Any, command_id: str, instance_id: str, timeout: int) -> str:
    """Poll one command until it ends; return its status ("TimedOut" if it outlasts timeout)."""
    deadline, delay = (
        time.monotonic() + timeout + polling.POLL_MAX_SECONDS,
        polling.POLL_FIRST_SECONDS / 2,
    )
    while time.monotonic() < deadline:
        try:
            status = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)[
                "Status"
            ]
        except ClientError as err:
            if err.response["Error"]["Code"] != ERR_NO_INVOCATION:
                raise
            status = "Pending"
        if status not in SSM_RUNNING:
            return status
        time.sleep(delay)
        delay = min(delay * polling.POLL_FACTOR, 5.0)
    return "TimedOut"


def backup_with_scripts(
    clients: Clients, planned: ServerPlan, config: BackupConfig, now: datetime, out: Outcome
) -> None:
    """Pre-script, then a no-reboot image, then the post-script, which runs whatever happened."""
    server, spec, timeout = planned.server, planned.spec, config.script_timeout_seconds
    pre_sent = False
    try:
        if spec.pre_script:
            command_id = send_script(clients.ssm, server, spec.pre_script, config)
            pre_sent = True
            status = wait_command(clients.ssm, command_id, spec.instance_id, timeout)
            failure = f"pre-script command {command_id} {status}"
            if status != SSM_SUCCESS and not script_failed(out, failure, config):
                return
        create_backup(clients.ec2, planned, config, out, no_reboot=True)
    finally:
        if spec.post_script and (pre_sent or not spec.pre_script):
            out.post_command = send_script(clients.ssm, server, spec.post_script, config)


def script_failed(out: Outcome, message: str, config: BackupConfig) -> bool:
    """Record a failed script; return whether to go on with a crash-consistent image."""
    if config.on_script_failure == "crash":
        out.warn(f"{message}; made a crash-consistent image instead")
        return True
    out.fail(message)
    return False


def backup_with_vss(
    clients: Clients, planned: ServerPlan, config: BackupConfig, now: datetime, out: Outcome
) -> None:
    """AWSEC2-CreateVssSnapshot makes the image; then the rest of the tool's tags go on it."""
    server, spec, timeout = planned.server, planned.spec, config.script_timeout_seconds
    if platform_of(server) != "windows":
        out.fail("consistency 'vss' needs a Windows instance; this one is linux")
        return
    name = planned.name
    identity = identity_tags(spec, config, now, out.run_id)
    if any(c in v for _, v in identity for c in ",;="):
        out.fail(f"server name {spec.name!r} has ',', ';' or '=', which VSS tags cannot carry")
        return
    parameters = {
        "CreateAmi": ["True"], "AmiName": [name], "executionTimeout": [str(timeout)],
        "description": [description(f"{TOOL} {config.schedule} VSS backup of {spec.name}")],
        "tags": [";".join(f"Key={k},Value={v}" for k, v in identity)],
    }  # fmt: skip
    command_id = send(clients.ssm, spec.instance_id, DOC_VSS, parameters, timeout)
    status = wait_command(clients.ssm, command_id, spec.instance_id, timeout)
    if status != SSM_SUCCESS:
        if script_failed(out, f"VSS command {command_id} {status}", config):
            create_backup(clients.ec2, planned, config, out, no_reboot=True)
        return
    tag_vss_image(clients.ec2, planned, out)


def tag_vss_image(ec2: Any, planned: ServerPlan, out: Outcome) -> None:
    """Find the image the VSS document made and give it and its snapshots the planned tags.

    The document tags the image and its snapshots at creation with its `tags` parameter,
    the marker among them: AWSEC2VssSnapshotPolicy, the instance role it runs under,
    allows CreateImage on snapshots only with the request tag AwsVssConfig, and CreateTags
    on them only as part of CreateImage (or, after, only AppConsistent and Device). The
    backup role may tag only marked snapshots, so a snapshot that came without the marker
    could never be tagged, nor pruned: the server fails, naming it, rather than count it."""
    name = planned.name
    found = list(paginate(ec2, "describe_images", "Images", Owners=["self"],
                          Filters=[{"Name": "name", "Values": [name]}]))  # fmt: skip
    if not found:
        out.fail(f"the VSS command succeeded, but no image named {name} exists")
        return
    image = to_image(found[0])
    unmarked = unmarked_snapshots(ec2, image.snapshot_ids)
    if unmarked:
        out.fail(f"VSS image {image.image_id}: snapshot(s) {', '.join(unmarked)} came without "
                 f"the {TAG_MANAGED} tag the document was given, so this tool may never tag "
                 "or prune them; tag them by hand (or delete the image and its snapshots) and "
                 "check the AwsVssComponents version")  # fmt: skip
        return
    ec2.create_tags(Resources=[image.image_id, *image.snapshot_ids], Tags=planned.tags)
    out.made(image.image_id)


def unmarked_snapshots(ec2: Any, snapshot_ids: list[str]) -> list[str]:
    """The snapshots, of those named, that do not carry the tool's marker."""
    if not snapshot_ids:
        return []  # DescribeSnapshots without ids would list the whole account
    found = ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
    return sorted(s["SnapshotId"] for s in found
                  if {"Key": TAG_MANAGED, "Value": TOOL} not in s.get("Tags", []))  # fmt: skip


def check_post_scripts(
    ssm: Any, outcomes: list[Outcome], config: BackupConfig, since: datetime
) -> None:
    """Wait for every post-script at once, with one ListCommands a poll; record failures."""
    invoked_after = [{"key": "InvokedAfter", "value": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]
    pending = {o.post_command: o for o in outcomes if o.post_command}
    deadline, delay = (
        time.monotonic() + config.script_timeout_seconds + polling.POLL_MAX_SECONDS,
        0.5,
    )
    while pending and time.monotonic() < deadline:
        for command in paginate(ssm, "list_commands", "Commands", Filters=invoked_after):
            out = pending.get(command["CommandId"])
            if out and command["Status"] not in SSM_RUNNING:
                if command["Status"] != SSM_SUCCESS:
                    out.fail_late(f"post-script command {command['CommandId']} {command['Status']}")
                del pending[command["CommandId"]]
        if pending:
            time.sleep(delay)
            delay = min(delay * polling.POLL_FACTOR, 5.0)
    for command_id, out in pending.items():
        out.fail_late(f"post-script command {command_id} did not finish in time")
