"""Benchmarks against the local endpoint; each prints a Markdown table for bench/RESULTS.md."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import boto3

from localaws.endpoint import LINUX_AMI, Endpoint
from localaws.fleet import REGION, build_network

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def budget(count: int) -> int:
    """The calls a backup run of count servers may make: per server CreateImage,
    DeregisterImage and GetLaunchTemplateData; one DescribeImageReferences per 10 images
    pruned (CHECK_IMAGE_REFERENCES); and 14 for the run."""
    return 3 * count + math.ceil(count / 10) + 14


def launch_servers(endpoint: Endpoint, count: int) -> list[dict]:
    """Launch count instances on the endpoint; return them as SERVERS entries."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url, **KEYS)
    iam = boto3.client("iam", region_name=REGION, endpoint_url=endpoint.url, **KEYS)
    fleet = build_network(ec2, iam, cidr="10.20.16.0/20")
    reservation = ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=count, MaxCount=count, SubnetId=fleet.subnet_id
    )
    return [
        {"name": f"srv{n:04d}", "instance_id": i["InstanceId"]}
        for n, i in enumerate(reservation["Instances"])
    ]


def print_table(header: list[str], counts: list[int], bench: Callable) -> None:
    """Run bench(endpoint, count, workdir) for each count; print its rows under header."""
    endpoint = Endpoint().start()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory() as workdir:
        for count in counts:
            for row in bench(endpoint, count, Path(workdir)):
                print(row, flush=True)
    endpoint.stop()
