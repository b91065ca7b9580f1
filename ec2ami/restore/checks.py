"""A drill's check: DRILL_CHECK sent through SSM Run Command once the instance is
status-ok, one SendCommand per platform per poll, and its result read back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.contract import TOOL
from ec2ami.facts import CHECK_DOCUMENTS, SSM_IDS_MAX, SSM_ONLINE, SSM_RUNNING, SSM_SUCCESS
from ec2ami.restore.config import RestoreConfig

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.restore.model import Restore, Run


def drill_check(config: RestoreConfig, restore: Restore) -> str | None:
    """The DRILL_CHECK command for this server's platform, or None."""
    return (config.drill_check or {}).get(restore.planned.recorded.platform or "linux")


def advance_checks(
    clients: Clients, config: RestoreConfig, checking: list[Restore], run: Run
) -> None:
    """DRILL_CHECK on each instance that passed its status checks: once SSM has it online
    (one DescribeInstanceInformation for them all), one SendCommand per platform, then one
    ListCommandInvocations per command for the results."""
    ssm = clients.ssm
    unsent = [r for r in checking if "command_id" not in r.check]
    try:
        online = ssm_online(ssm, [r.ids[0] for r in unsent]) if unsent else set()
    except AWS_ERRORS as err:
        for restore in unsent:
            restore.fail(f"could not ask SSM about {restore.ids[0]}: {error_text(err)}")
        return
    groups: dict[tuple[str, str | None], list[Restore]] = {}
    for restore in unsent:
        if restore.ids[0] in online:
            platform = restore.planned.recorded.platform or "linux"
            key = (CHECK_DOCUMENTS[platform], drill_check(config, restore))
            groups.setdefault(key, []).append(restore)
    seconds = int(config.drill_timeout_minutes * 60)
    for (document, command), group in groups.items():
        for start in range(0, len(group), SSM_IDS_MAX):
            batch = group[start : start + SSM_IDS_MAX]
            try:
                command_id = ssm.send_command(
                    InstanceIds=[r.ids[0] for r in batch], DocumentName=document,
                    Parameters={"commands": [command], "executionTimeout": [str(seconds)]},
                    TimeoutSeconds=max(30, seconds), Comment=f"{TOOL} drill",
                )["Command"]["CommandId"]  # fmt: skip
            except AWS_ERRORS as err:
                for restore in batch:
                    restore.fail(f"DRILL_CHECK could not be sent: {error_text(err)}")
                continue
            for restore in batch:
                restore.check = {"command_id": command_id, "document": document,
                                 "status": "Pending"}  # fmt: skip
    read_checks(ssm, [r for r in checking if "command_id" in r.check and r.stage != "done"], run)


def ssm_online(ssm: Any, ids: list[str]) -> set[str]:
    """The instances SSM reaches now (SSM_IDS_MAX a call)."""
    online = set()
    for start in range(0, len(ids), SSM_IDS_MAX):
        filters = [{"Key": "InstanceIds", "Values": ids[start : start + SSM_IDS_MAX]}]
        pages = ssm.get_paginator("describe_instance_information").paginate(
            Filters=filters, MaxResults=SSM_IDS_MAX
        )
        for page in pages:
            online |= {i["InstanceId"] for i in page.get("InstanceInformationList", [])
                       if i.get("PingStatus") == SSM_ONLINE}  # fmt: skip
    return online


def read_checks(ssm: Any, sent: list[Restore], run: Run) -> None:
    """Each sent check's status: success passes it; any other end fails it, with the
    command's exit code (never its output, which may hold secrets)."""
    by_command: dict[str, list[Restore]] = {}
    for restore in sent:
        by_command.setdefault(restore.check["command_id"], []).append(restore)
    for command_id, group in by_command.items():
        try:
            pages = ssm.get_paginator("list_command_invocations").paginate(
                CommandId=command_id, Details=True
            )
            invocations = {i["InstanceId"]: i for p in pages for i in p["CommandInvocations"]}
        except AWS_ERRORS as err:
            for restore in group:
                restore.fail(f"could not read DRILL_CHECK's result: {error_text(err)}")
            continue
        for restore in group:
            invocation = invocations.get(restore.ids[0], {})
            status = restore.check["status"] = invocation.get("Status", "Pending")
            if status == SSM_SUCCESS:
                restore.at["check_passed"], restore.stage = run.since(), "done"
            elif status not in SSM_RUNNING:
                plugins = invocation.get("CommandPlugins") or [{}]
                code = plugins[0].get("ResponseCode")
                exit_code = f", exit code {code}" if code is not None else ""
                restore.fail(f"DRILL_CHECK {status} on {restore.ids[0]} (command "
                             f"{command_id}{exit_code})")  # fmt: skip
