"""Benchmark: restoring a server in place against restoring it as a new instance.

For web01 with one volume (the root) and with three (root and two data volumes): a backup,
then a new-instance restore (the original terminated first) and, on a fresh copy of the
server, an in-place restore, each with WAIT = "running". Against the local endpoint, where
an instance runs at once and a root volume task takes `root_task_seconds`, what remains is
the tool's own calls and waits. On EC2 add, for a new instance, its boot (a minute or more
to running); in place, the root volume replacement task (it reboots the instance), and for
data volumes a stop and a start.

    .venv/bin/python -m bench.in_place
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import boto3

from bench.restore_calls import keys, retire, script
from localaws.endpoint import SETTINGS, Endpoint
from localaws.fleet import REGION, build_network, launch, write_config
from localaws.volumes import VOLUMES

DATA = {"/dev/sdf": 20, "/dev/sdg": 30}


def server_with(ec2, fleet, name: str, data: bool) -> str:
    """A server with its root volume, and with DATA's volumes if data."""
    instance_id = launch(ec2, fleet, name)
    zone = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
        "Placement"]["AvailabilityZone"]  # fmt: skip
    for device, size in DATA.items() if data else ():
        volume = ec2.create_volume(AvailabilityZone=zone, Size=size)["VolumeId"]
        ec2.attach_volume(VolumeId=volume, InstanceId=instance_id, Device=device)
    return instance_id


def main() -> int:
    endpoint = Endpoint().start()
    SETTINGS.instance_pending_seconds, VOLUMES.root_task_seconds = 0.5, 1.0
    make = lambda service: boto3.client(  # noqa: E731
        service, region_name=REGION, endpoint_url=endpoint.url, **keys()
    )
    ec2 = make("ec2")
    fleet = build_network(ec2, make("iam"))
    print(f"An instance is pending {SETTINGS.instance_pending_seconds} s and a root volume "
          f"task takes {VOLUMES.root_task_seconds} s on the endpoint.\n")  # fmt: skip
    print("| server | volumes | restore | wall s | calls | by action |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for n, data in enumerate((False, True)):
            for how in ("new instance", "in place"):
                name = f"srv{n}{'n' if how == 'new instance' else 'i'}"
                instance_id = server_with(ec2, fleet, name, data)
                backup = write_config(Path(workdir) / "b.py", SELECT_TAGS={"Name": name})
                script(endpoint, "ec2_to_ami.py", backup)
                config = write_config(Path(workdir) / "r.py", SERVER=name, WAIT="running")
                if how == "new instance":
                    retire(ec2, instance_id)
                    wall, calls = script(endpoint, "ami_to_ec2.py", config)
                else:
                    wall, calls = script(endpoint, "ami_to_ec2.py", config, "--in-place", "--yes")
                detail = ", ".join(f"{a} {c}" for a, c in sorted(calls.items()))
                print(f"| {name} | {3 if data else 1} | {how} | {wall:.2f} | "
                      f"{sum(calls.values())} | {detail} |")  # fmt: skip
    endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
