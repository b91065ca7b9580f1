"""The launch attributes are declared once (ec2ami.attributes): each recorded key has its
declaration, and the record, the plan, RunInstances and the read-back agree on it."""

from __future__ import annotations

import pytest

from ec2ami.attributes import ATTRIBUTES, LAUNCH_DATA_KEYS, launch_arguments, read_all
from ec2ami.contract import LAUNCH_DEFAULTS
from ec2ami.facts import BURSTABLE_RE

STRUCTURED = {"interfaces", "elastic_ips", "target_groups", "classic_load_balancers", "unknown"}


def test_every_scalar_key_the_backup_records_is_declared_once():
    keys = [a.key for a in ATTRIBUTES]
    assert len(keys) == len(set(keys)) and len({a.label for a in ATTRIBUTES}) == len(keys)
    assert set(keys) == set(LAUNCH_DEFAULTS) - STRUCTURED


def test_an_instance_at_ec2s_defaults_records_nothing():
    """DescribeInstances and GetLaunchTemplateData of an ordinary t3 instance."""
    instance = {"InstanceType": "t3.micro", "Placement": {"Tenancy": "default"},
                "MetadataOptions": {"HttpTokens": "optional", "HttpPutResponseHopLimit": 1,
                                    "HttpEndpoint": "enabled", "HttpProtocolIpv6": "disabled",
                                    "InstanceMetadataTags": "disabled"},
                "PrivateDnsNameOptions": {"HostnameType": "ip-name"},
                "Monitoring": {"State": "disabled"},
                "MaintenanceOptions": {"AutoRecovery": "default"}}  # fmt: skip
    data = {"DisableApiTermination": False, "DisableApiStop": False,
            "InstanceInitiatedShutdownBehavior": "stop"}  # fmt: skip
    values = read_all(instance, data)
    assert {k: v for k, v in values.items() if v is not None and v != LAUNCH_DEFAULTS[k]} == {}


def test_the_protections_come_from_one_getlaunchtemplatedata():
    assert set(LAUNCH_DATA_KEYS.values()) == {
        "termination_protection", "stop_protection", "shutdown_behavior"
    }  # fmt: skip


@pytest.mark.parametrize("attribute", ATTRIBUTES, ids=lambda a: a.key)
def test_each_attribute_sends_what_it_reads(attribute):
    """Sending a value and reading it back off an instance that EC2 described with exactly
    those arguments gives the value again: the record, RunInstances and the twin agree."""
    value = SAMPLES.get(attribute.key, attribute.default)
    arguments = attribute.send(value)
    instance = {"InstanceType": "t3.micro", **arguments}
    data = {k: v for k, v in arguments.items() if k in LAUNCH_DATA_KEYS}
    data["CreditSpecification"] = arguments.get("CreditSpecification", {})
    described = describe_like_ec2(instance)
    assert attribute.read(described, data) == value


SAMPLES = {
    "tenancy": "dedicated", "placement_group": "pg-web", "partition": 2, "host_id": "h-0abc",
    "host_resource_group": "arn:aws:resource-groups:eu-west-1:123456789012:group/hosts",
    "affinity": "host", "cpu_options": {"CoreCount": 2, "ThreadsPerCore": 1},
    "credits": "unlimited", "ebs_optimized": True, "hibernation": True, "nitro_enclave": True,
    "capacity_reservation": "none", "http_tokens": "required", "http_hop_limit": 2,
    "http_endpoint": "disabled", "http_ipv6": "enabled", "metadata_tags": "enabled",
    "hostname_type": "resource-name", "dns_a_record": True, "dns_aaaa_record": True,
    "termination_protection": True, "stop_protection": True, "shutdown_behavior": "terminate",
    "monitoring": True, "auto_recovery": "disabled",
}  # fmt: skip


def describe_like_ec2(arguments: dict) -> dict:
    """How DescribeInstances reports what RunInstances was given, where the names differ."""
    described = dict(arguments)
    if "Monitoring" in arguments:
        enabled = arguments["Monitoring"]["Enabled"]
        described["Monitoring"] = {"State": "enabled" if enabled else "disabled"}
    return described


def test_launch_arguments_merge_each_attributes_part():
    chosen = {a.label: SAMPLES[a.key] for a in ATTRIBUTES}
    arguments = launch_arguments(chosen)
    assert arguments["Placement"] == {
        "Tenancy": "dedicated", "GroupName": "pg-web", "PartitionNumber": 2, "HostId": "h-0abc",
        "HostResourceGroupArn": SAMPLES["host_resource_group"], "Affinity": "host",
    }  # fmt: skip
    assert len(arguments["MetadataOptions"]) == 5 and len(arguments["PrivateDnsNameOptions"]) == 3
    assert BURSTABLE_RE.match("t3.micro") and arguments["CreditSpecification"]["CpuCredits"]
