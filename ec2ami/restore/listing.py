"""The dry run (every attribute, and where it comes from) and --list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.contract import TAG_VERIFIED
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import DISABLED, ERR_DRY_RUN_OK
from ec2ami.output import print_json, print_table, verified_summary
from ec2ami.restore.config import RestoreConfig
from ec2ami.restore.images import bin_time, image_tag, managed_images, paginate_bin
from ec2ami.restore.model import one_server
from ec2ami.restore.recorded import read_recorded
from ec2ami.restore.report import attribute_json
from ec2ami.restore.twin import shown

if TYPE_CHECKING:
    from ec2ami.restore.model import Plan, Restore


def describe_plan(plan: Plan, config: RestoreConfig) -> list[str]:
    """The plan in words, for --dry-run; user data is counted, never shown."""
    p, r = plan.params, plan.recorded
    volumes = ", ".join(
        f"{k}={v}" for k, v in (p.get("BlockDeviceMappings") or [{}])[0].get("Ebs", {}).items()
    )
    tags = ", ".join(f"{t['Key']}={t['Value']}" for t in p["TagSpecifications"][0]["Tags"])
    user_data = p.get("UserData")
    shown_data = f"{len(user_data)} bytes (not shown)" if user_data else "none"
    first = p["NetworkInterfaces"][0]
    subnet, groups = first["SubnetId"], first.get("Groups") or []
    address = first.get("PrivateIpAddress") or next(
        (a["PrivateIpAddress"] for a in first.get("PrivateIpAddresses", []) if a["Primary"]),
        "a new address")  # fmt: skip
    eip = plan.elastic_ip or "none"
    if plan.eip_holder:
        moved = "moved" if config.allow_reassociation else "left there (ALLOW_REASSOCIATION)"
        eip += f", now held by {plan.eip_holder}: would be {moved}"
    count = 1 + len(plan.others)
    names = f"{plan.name}" + (
        f", then {plan.name}-2 ... {plan.name}-{count}" if plan.others else ""
    )
    lines = [
        f"Would launch {count} x {p['InstanceType']} from {p['ImageId']} "
        f"(server {r.server or '-'}, backup {r.created or '-'}, schedule {r.schedule or '-'})",
        f"  name:                   {names}",
        f"  subnet:                 {subnet}",
        f"  security groups:        {', '.join(groups) or 'VPC default'}",
        f"  key pair:               {p.get('KeyName', 'none')}",
        f"  instance profile:       {profile_origin(p, config)}",
        f"  private IP:             {address}",
        f"  Elastic IP:             {eip}",
        f"  user data:              {shown_data}",
        f"  volumes:                {volumes or 'as the image has them'}",
        f"  tags:                   {tags}",
        f"  wait:                   {config.wait}",
        f"  client token:           {p['ClientToken']}",
        "  attributes (recorded: as the original ran; overridden: by a setting; default: EC2's; "
        "drill: production's, left out of a drill):",
    ]
    width = max(len(a.name) for a in plan.attributes)
    for a in plan.attributes:
        lines.append(f"    {a.name.ljust(width)}  {shown(a.planned):<24}  {a.origin}")
    for record in plan.dns_records:
        lines.append(f"  DNS: UPSERT {record['name']} {record['type']} -> the {record['value']} "
                     "address (TTL kept)")  # fmt: skip
    return lines


def profile_origin(params: dict, config: RestoreConfig) -> str:
    """The instance profile, and whence it came: it grants the new instance a role."""
    profile = next(iter(params.get("IamInstanceProfile", {}).values()), None)
    if not profile:
        return "none"
    if config.iam_instance_profile:
        return f"{profile} (IAM_INSTANCE_PROFILE)"
    if config.allowed_instance_profiles is None:
        return f"{profile} (from the image's tag; ALLOWED_INSTANCE_PROFILES is None: not checked)"
    return f"{profile} (from the image's tag; in ALLOWED_INSTANCE_PROFILES)"


def dry_run(ec2: Any, restores: list[Restore], config: RestoreConfig, as_json: bool) -> int:
    """Print each server's plan and let EC2 check it with DryRun=True; launch nothing.
    Exit 1 if any server could not be restored as planned."""
    if as_json:
        return dry_run_json(ec2, restores, config)
    for restore in restores:
        if config.fleet:
            print(f"== {restore.server}")
        if restore.plan:
            with one_server(restore, config.fleet):
                for line in describe_plan(restore.plan, config):
                    print(line)
                check_with_ec2(ec2, restore.plan)
        if restore.problems:
            print(f"Would not restore {restore.server}: {restore.error}")
    return EXIT_FAILED if any(r.problems for r in restores) else EXIT_OK


def dry_run_json(ec2: Any, restores: list[Restore], config: RestoreConfig) -> int:
    """--dry-run --json: each server's request (user data counted, never shown), where
    each attribute comes from, and what EC2's DryRun said."""
    servers = []
    for restore in restores:
        document: dict[str, Any] = {"server": restore.server, "error": restore.error}
        if restore.plan:
            with one_server(restore, config.fleet):
                accepted = ec2_accepts(ec2, restore.plan)
            params = dict(restore.plan.params)
            if params.get("UserData"):
                params["UserData"] = f"{len(params['UserData'])} bytes (not shown)"
            document.update(
                image_id=restore.plan.image["ImageId"], count=1 + len(restore.plan.others),
                run_instances=params, elastic_ip=restore.plan.elastic_ip,
                attributes=[attribute_json(a) for a in restore.plan.attributes],
                warnings=restore.plan.warnings, ec2_dry_run=accepted,
            )  # fmt: skip
        servers.append(document)
    print_json({"dry_run": True, "servers": servers})
    return EXIT_FAILED if any(r.problems for r in restores) else EXIT_OK


def check_with_ec2(ec2: Any, plan: Plan) -> None:
    """RunInstances with DryRun=True: EC2 checks permissions and parameters."""
    if ec2_accepts(ec2, plan) == "skipped":
        print(f"Would enable {plan.image['ImageId']} first: it is disabled, so EC2 cannot "
              "check this RunInstances request before that (DryRun skipped).")  # fmt: skip
        return
    print("DryRun: EC2 accepts this RunInstances request (permissions and parameters).")


def ec2_accepts(ec2: Any, plan: Plan) -> str:
    """RunInstances with DryRun=True: "accepted", or "skipped" for a disabled image, which
    EC2 cannot check before it is enabled; any refusal is raised."""
    if plan.image["State"] == DISABLED:
        return "skipped"
    params = {k: v for k, v in plan.params.items() if k != "ClientToken"}
    try:
        ec2.run_instances(DryRun=True, **params)
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DRY_RUN_OK:
            raise
    return "accepted"


def list_backups(
    ec2: Any, config: RestoreConfig, recycle_bin: bool = False, as_json: bool = False
) -> int:
    """Print the restorable backups of SERVER (or of every server), newest first; and
    with recycle_bin the images in the Recycle Bin, which `--ami` restores."""
    images = managed_images(ec2, config.server, config.schedule)
    rows: list[dict] = []
    newest_first = sorted(images, key=lambda i: str(i.get("CreationDate", "")), reverse=True)
    for image in sorted(newest_first, key=lambda i: read_recorded(i).server or ""):
        r = read_recorded(image)
        rows.append({"server": r.server, "image": image["ImageId"], "created": r.created,
                     "pool": r.pool, "schedule": r.schedule, "state": image["State"],
                     "type": r.instance_type, "subnet": r.subnet_id,
                     "record": r.completeness,
                     "verified": verified_summary(image_tag(image, TAG_VERIFIED))})  # fmt: skip
    binned = recycle_bin_images(ec2) if recycle_bin else None
    if as_json:
        print_json({"backups": rows, "recycle_bin": binned})
        return EXIT_OK
    columns = ["server", "image", "created", "pool", "schedule", "state", "type", "subnet",
               "record", "verified"]  # fmt: skip
    print_table([{c: c.upper() for c in columns}, *rows], columns)
    if not images:
        print("(no backups)")
    if binned is not None:
        print_recycle_bin(binned)
    return EXIT_OK


def recycle_bin_images(ec2: Any) -> list[dict]:
    """The images in this region's Recycle Bin, newest first. EC2 lists them without tags,
    so every image is shown, by name; a backup's name carries its server (NAME_FORMAT)."""
    binned = sorted(paginate_bin(ec2), key=lambda i: str(i.get("RecycleBinEnterTime", "")),
                    reverse=True)  # fmt: skip
    return [{"image": image["ImageId"], "name": image.get("Name", ""),
             "deleted": bin_time(image.get("RecycleBinEnterTime")),
             "leaves_bin": bin_time(image.get("RecycleBinExitTime"))}
            for image in binned]  # fmt: skip


def print_recycle_bin(binned: list[dict]) -> None:
    """The Recycle Bin's images as a table."""
    print()
    if not binned:
        print("(no images in the Recycle Bin)")
        return
    columns = ["image", "name", "deleted", "leaves_bin"]
    print("In the Recycle Bin (restore one with --ami):")
    header = {
        "image": "IMAGE",
        "name": "NAME",
        "deleted": "DELETED",
        "leaves_bin": "LEAVES THE BIN",
    }
    print_table([header, *binned], columns)
