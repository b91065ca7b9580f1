"""Back up a small fleet three times, drill a restore of both servers, lose a server,
restore it, compare, and say what the kept backups cost.

No AWS account is needed: the demo starts the tests' local EC2 endpoint (moto's
server with the harness patches) as its own process on 127.0.0.1, and stops it
by its process id at the end. Run it with `make demo`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from localaws.endpoint import CONTROL_PATH, WINDOWS_AMI
from localaws.fleet import (
    REGION,
    ROOT,
    add_elastic_ip,
    aws_env,
    build_network,
    drill_network,
    launch,
)


def start_endpoint() -> tuple[subprocess.Popen, str]:
    """Start the patched endpoint process; return it and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localaws.endpoint", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    url = process.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        process.kill()
        raise SystemExit(f"the local endpoint did not start (said {url!r})")
    return process, url


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(env: dict, script: str, *args: str) -> None:
    """Run one of the project's scripts, showing its command and output."""
    print(f"$ python {script} {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, str(ROOT / script), *args], env=env, text=True)
    if result.returncode:
        raise SystemExit(f"{script} exited {result.returncode}")


def make_fleet(ec2: Any, iam: Any) -> Any:
    """One Linux and one Windows server, tagged for backup, web01 with an Elastic IP."""
    fleet = build_network(ec2, iam)
    backup = {"Key": "Backup", "Value": "daily"}
    launch(ec2, fleet, "web01", tags=[backup, {"Key": "Env", "Value": "prod"}])
    launch(ec2, fleet, "win01", WINDOWS_AMI, InstanceType="m5.large", tags=[backup])
    waiter = ec2.get_waiter("instance_running")
    waiter.wait(InstanceIds=list(fleet.instances.values()), WaiterConfig={"Delay": 1})
    add_elastic_ip(ec2, fleet, "web01")
    return fleet


def describe(ec2: Any, instance_id: str) -> dict[str, str]:
    """The points a restore must carry over, for the before/after table."""
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    instance = instance["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    return {
        "instance id": instance["InstanceId"],
        "state": instance["State"]["Name"],
        "instance type": instance["InstanceType"],
        "subnet": instance["SubnetId"],
        "security groups": ",".join(sorted(g["GroupId"] for g in instance["SecurityGroups"])),
        "key pair": instance.get("KeyName", "-"),
        "instance profile": instance.get("IamInstanceProfile", {}).get("Arn", "-").split("/")[-1],
        "IMDSv2": instance["MetadataOptions"]["HttpTokens"],
        "Elastic IP": instance.get("PublicIpAddress", "-"),
        "tags": ", ".join(f"{k}={v}" for k, v in sorted(tags.items()) if ":" not in k),
    }


def compare(before: dict[str, str], after: dict[str, str]) -> None:
    """Print the original and the restored instance side by side."""
    width = max(len(v) for v in [*before.values(), *after.values()])
    print(f"{'':17}{'original':{width}}  {'restored':{width}}")
    for key in before:
        same = "" if key in ("instance id", "state") else (
            "  same" if before[key] == after[key] else "  DIFFERENT"
        )  # fmt: skip
        print(f"{key:17}{before[key]:{width}}  {after[key]:{width}}{same}")


def main() -> int:
    process, url = start_endpoint()
    try:
        demo(url)
    finally:
        process.terminate()  # the endpoint we started, by its own process id
        process.wait(timeout=10)
    print(f"\nStopped the local endpoint (pid {process.pid}).")
    print("Nothing outside this machine was touched.")
    return 0


def demo(url: str) -> None:
    env = {**os.environ, **aws_env(url)}
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url, **credentials(env))
    iam = boto3.client("iam", region_name=REGION, endpoint_url=url, **credentials(env))
    step(f"A local EC2 endpoint at {url}, with a Linux and a Windows server")
    fleet = make_fleet(ec2, iam)
    for name, instance_id in fleet.instances.items():
        print(f"{name}: {instance_id}")
    with tempfile.TemporaryDirectory() as workdir:
        backup_config = Path(workdir) / "daily.py"
        shipped = (ROOT / "ec2_to_ami_config.py").read_text(encoding="utf-8")
        backup_config.write_text(
            shipped
            + '\n# Pointed at the demo fleet:\nSELECT_TAGS = {"Backup": "daily"}\nKEEP = 2\n',
            encoding="utf-8",
        )
        disks = [root_volume(ec2, instance) for instance in fleet.instances.values()]
        for volume in disks:
            write(url, volume, range(6000))  # 3 GiB of the 8 GiB root volume in use
        for number in (1, 2, 3):
            if number > 1:  # a day of use: 2 % of each volume's blocks change
                for volume in disks:
                    write(url, volume, random.Random(number).sample(range(16384), 327))
            step(f"Backup run {number} of 3 (the shipped example config, KEEP = 2)")
            run(env, "ec2_to_ami.py", "--config", str(backup_config))
        step("Restore drill: both servers restored in an isolated subnet, checked, removed")
        drill_config = Path(workdir) / "drill.py"
        subnet, group = drill_network(ec2, fleet)
        log = Path(workdir) / "drills.jsonl"
        drill_config.write_text(
            f"DRILL_SUBNET_ID = {subnet!r}\nDRILL_SECURITY_GROUP_IDS = [{group!r}]\n"
            'DRILL_CHECK = {"linux": "systemctl is-active nginx", "windows": "Get-Service W3SVC"}\n'
            f"DRILL_LOG = {str(log)!r}\n",
            encoding="utf-8",
        )
        run(env, "ami_to_ec2.py", "--config", str(drill_config), "--drill", "--all")
        print("DRILL_LOG is the drill's own record: one JSON line per server and drill, with "
              "the result and the seconds each step took.")  # fmt: skip
        for line in log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in entry["timings"].items())
            print(f"DRILL_LOG: {entry['server']} {entry['result']}: {steps}")
        step("Managed backups: two per server are kept, and each newest one is verified")
        run(env, "ec2_to_ami.py", "--config", str(backup_config), "--list")
        before = describe(ec2, fleet.instances["web01"])
        step("Disaster: web01 is terminated")
        ec2.terminate_instances(InstanceIds=[fleet.instances["web01"]])
        restore_config = Path(workdir) / "restore.py"
        restore_config.write_text('SERVER = "web01"\n', encoding="utf-8")
        step("Restore web01 from a config holding only SERVER")
        run(env, "ami_to_ec2.py", "--config", str(restore_config))
        print("The client token above makes a retry safe: rerun with --client-token and EC2 "
              "returns the same instance instead of launching a second one.")  # fmt: skip
        after = describe(ec2, newest_named(ec2, "web01"))
        step("Before and after")
        compare(before, after)
        step("What the kept backups store, and cost a month")
        run(env, "ec2_to_ami.py", "--config", str(backup_config), "--cost")


def root_volume(ec2: Any, instance_id: str) -> str:
    """The instance's root volume."""
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]


def write(url: str, volume_id: str, blocks: Any) -> None:
    """Write to a volume's 512 KiB blocks on the local endpoint, as a server's use does."""
    document = json.dumps({"volume_id": volume_id, "blocks": list(blocks)}).encode()
    request = urllib.request.Request(url + CONTROL_PATH, data=document, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def credentials(env: dict) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def newest_named(ec2: Any, name: str) -> str:
    """The running instance named name."""
    filters = [
        {"Name": "tag:Name", "Values": [name]},
        {"Name": "instance-state-name", "Values": ["running"]},
    ]
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i for r in reservations for i in r["Instances"]][-1]["InstanceId"]


if __name__ == "__main__":
    sys.exit(main())
