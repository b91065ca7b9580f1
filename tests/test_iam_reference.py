"""Every shipped policy against the Service Authorization Reference (the copy bundled with
parliament): what moto's IAM cannot see, since it treats every Resource as "*" and drops
every Condition.

For each Allow statement and each action in it:
- each resource names a resource type of the action;
- each condition key is one the action takes for every resource type the statement
  names (or a global key): a key that is absent makes the condition false on AWS;
- each resource type the action requires is allowed in every region where the action is
  allowed at all, and the optional ones the tool's own call names are allowed too.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from parliament import get_resource_type_matches_from_arn
from parliament.statement import get_privilege_info

from ec2ami.backup.config import load_config
from ec2ami.iam import backup as iam_backup
from ec2ami.iam import restore as iam_restore
from ec2ami.restore.config import DEFAULTS
from ec2ami.restore.config import validate_config as validate_restore_config
from tests.conftest import write_config
from tests.test_iam import NEWER_THAN_PARLIAMENT, ROOT
from tools.make_policies import SHIPPED

# Condition keys every request has, whatever the action and resource (IAM's global keys).
GLOBAL = re.compile(r"aws:(PrincipalTag|PrincipalArn|SourceIp|SecureTransport|CalledVia|"
                    r"ViaAWSService|RequestedRegion|PrincipalAccount)")  # fmt: skip
# Optional resource types the tool's own calls name: a restore's RunInstances from a twin's
# record (its key pair, placement group and host resource group); a drill leaves them out.
NAMED_BY_THE_TOOL = {
    "restore-policy.json": {"ec2:RunInstances": {"key-pair", "placement-group", "group"}},
    "drill-policy.json": {"ec2:RunInstances": {"key-pair"}},
}


def statements(name: str | dict) -> list[dict]:
    """A shipped policy's Allow statements (by file name), or a policy document's."""
    document = json.loads((ROOT / "docs" / "iam" / name).read_text()) if isinstance(
        name, str) else name  # fmt: skip
    return [s for s in document["Statement"] if s["Effect"] == "Allow"]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def privilege(action: str) -> dict:
    service, verb = action.split(":")
    return get_privilege_info(service, verb)


def types_of(arn: str) -> set[str]:
    """The resource types an ARN names (RunInstances' "group" is a Resource Groups ARN)."""
    return {m["resource"]["resource"] for m in get_resource_type_matches_from_arn(arn)}


def generic(key: str) -> str:
    """A condition key as the reference spells it: tag keys as ${TagKey}."""
    return re.sub(r"^([\w-]+:(?:Resource|Request)Tag|ssm:resourceTag)/.+$", r"\1/${TagKey}", key)


def region_of(arn: str) -> str:
    return arn.split(":")[3] if arn != "*" else "*"


def checked(name: str | dict) -> list[tuple[str, dict]]:
    """(action, statement) for every action the reference knows."""
    return [(action, statement) for statement in statements(name)
            for action in as_list(statement["Action"])
            if action not in NEWER_THAN_PARLIAMENT]  # fmt: skip


def declared_types(action: str) -> dict[str, dict]:
    """An action's resource types (name without the required mark) with their entries."""
    return {t["resource_type"].rstrip("*"): t for t in privilege(action)["resource_types"]}


def keys_for(action: str, kind: str) -> set[str]:
    """The condition keys an action takes for a resource type: its row of the actions
    table; where that row lists none (as Elastic Load Balancing's do), the resource
    type's own keys."""
    own = set(declared_types(action)[kind]["condition_keys"])
    if own:
        return own
    resources = privilege(action)["service_resources"]
    return {k for r in resources if r["resource"] == kind for k in r["condition_keys"]}


def findings(name: str | dict, named_by_the_tool: dict[str, set[str]]) -> list[str]:
    """What the reference says is wrong with a shipped policy (or a policy document)."""
    found = []
    allowed: dict[str, dict[str, set[str]]] = {}  # action -> resource type -> regions
    for statement in statements(name):
        actions = [a for a in as_list(statement["Action"]) if a not in NEWER_THAN_PARLIAMENT]
        named: dict[str, set[str]] = {a: set() for a in actions}
        for arn in as_list(statement["Resource"]):  # a resource of no action: a mistake
            hits = {a: types_of(arn) & set(declared_types(a)) for a in actions}
            if arn != "*" and actions and not any(hits.values()):
                found.append(f"{statement['Sid']}: {arn} is no resource type of "
                             f"{', '.join(actions)}")  # fmt: skip
            for action, types in hits.items():
                if arn == "*":
                    types = {t for t in declared_types(action) if t}
                named[action] |= types
                for kind in types:
                    allowed.setdefault(action, {}).setdefault(kind, set()).add(region_of(arn))
        for action in actions:
            general = set(declared_types(action).get("", {}).get("condition_keys", []))
            for keys in statement.get("Condition", {}).values():
                for key in keys:
                    wanted = generic(key)
                    if GLOBAL.match(key) or wanted in general:
                        continue
                    lacking = sorted(t for t in named[action] if wanted not in keys_for(action, t))
                    if lacking:
                        found.append(f"{statement['Sid']}: {action} has no {key} for "
                                     f"{', '.join(lacking)}")  # fmt: skip
    for action, kinds in allowed.items():
        required = {
            t for t, e in declared_types(action).items() if e["resource_type"].endswith("*")
        }
        regions = set().union(*kinds.values())
        for kind in sorted(required | named_by_the_tool.get(action, set())):
            have = kinds.get(kind, set())
            if "*" not in have and not regions <= have:
                found.append(f"{action}: {kind} is allowed in {sorted(have) or 'no region'}, "
                             f"the action in {sorted(regions)}")  # fmt: skip
    return found


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_policy_holds_by_the_service_authorization_reference(name):
    assert findings(name, NAMED_BY_THE_TOOL.get(name, {})) == []


# --- A wider matrix: configs that use what the shipped examples do not ----------------

KEY = "arn:aws:kms:eu-west-1:123456789012:key/0123abcd-12ab-34cd-56ef-1234567890ab"
ROLE = "arn:aws:iam::123456789012:role/ec2-backup"
BACKUPS = {
    "VSS and scripts by tags, own document": {
        "SELECT_TAGS": {"Backup": "yes"}, "CONSISTENCY": "scripts", "PRE_SCRIPT": "sync",
        "SSM_DOCUMENT": "ec2-backup-scripts",
        "SERVERS": [{"name": "dc01", "instance_id": "i-0123456789abcdef2",
                     "consistency": "vss", "platform": "windows"}]},
    "DR to two regions with keys, sharing, an account": {
        "SERVERS": [{"name": "web01", "instance_id": "i-0123456789abcdef0"}],
        "ROLE_ARN": ROLE, "BACKUP_KMS_KEYS": [KEY], "SHARE_WITH_ACCOUNTS": ["210987654321"],
        "DEPRECATE_AFTER_DAYS": 30, "COPY_TO_REGIONS": {
            "eu-central-1": {"keep": 3, "kms_key_id": "1234abcd-12ab-34cd-56ef-1234567890ab"},
            "us-east-1": {"keep": 3, "kms_key_id": None}}},
    "check, cost and metrics, protection, load balancers": {
        "SELECT_TAGS": {"Backup": "yes"}, "RPO_HOURS": 26, "METRICS_NAMESPACE": "EC2Backup",
        "DEREGISTRATION_PROTECTION": True, "BACKUP_KMS_KEYS": [KEY]},
}  # fmt: skip
RESTORES = {
    "a twin with everything": {
        "ELASTIC_IP": "same", "TARGET_GROUPS": "same", "CLASSIC_LOAD_BALANCERS": ["web"],
        "KMS_KEY_ID": KEY, "BACKUP_KMS_KEYS": [KEY], "ROLE_ARN": ROLE,
        "SUBNET_ID": "subnet-0123456789abcdef0",
        "DNS_RECORDS": [{"zone_id": "Z123", "name": "web.example.com", "type": "A",
                         "value": "private"}]},
    "listed balancers and address": {
        "ELASTIC_IP": "eipalloc-0123456789abcdef0", "CLASSIC_LOAD_BALANCERS": "same",
        "TARGET_GROUPS": ["arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                          "targetgroup/web/0123456789abcdef"]},
}  # fmt: skip
IN_PLACE = {"IN_PLACE": True, "INSTANCE_ID": "i-0123456789abcdef0", "BACKUP_KMS_KEYS": [KEY]}
DRILLS = {
    "a drill with its check and production's placement": {
        "DRILL_SUBNET_ID": "subnet-0123456789abcdef1", "DRILL_PLACEMENT": True,
        "DRILL_SECURITY_GROUP_IDS": ["sg-0123456789abcdef1"], "BACKUP_KMS_KEYS": [KEY],
        "DRILL_CHECK": {"linux": "systemctl is-system-running"}},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BACKUPS))
def test_a_wider_matrix_of_backup_policies_holds_by_the_reference(case, tmp_path):
    settings = {"REGION": "eu-west-1", **BACKUPS[case]}
    config = load_config(str(write_config(tmp_path / "b.py", **settings)))
    assert findings(iam_backup.iam_policy(config), {}) == []


def test_the_in_place_policy_holds_by_the_reference():
    config = validate_restore_config({**DEFAULTS, "REGION": "eu-west-1", "SERVER": "web01",
                                      **IN_PLACE})  # fmt: skip
    named = {"ec2:CreateReplaceRootVolumeTask": {"image", "snapshot"},
             "ec2:CreateVolume": {"snapshot"}}  # fmt: skip
    document = iam_restore.iam_policy(config)
    assert findings(document, named) == []
    instances = {r for s in document["Statement"] for r in as_list(s["Resource"])
                 if ":instance/" in r}  # fmt: skip
    assert instances == {"arn:aws:ec2:eu-west-1:*:instance/i-0123456789abcdef0"}


@pytest.mark.parametrize("case", sorted(RESTORES) + sorted(DRILLS))
def test_a_wider_matrix_of_restore_and_drill_policies_holds_by_the_reference(case):
    drill = case in DRILLS
    settings = {**DEFAULTS, "REGION": "eu-west-1", **(DRILLS if drill else RESTORES)[case]}
    config = dataclasses.replace(validate_restore_config(settings, listing=True), drill=drill)
    named = {"key-pair", "placement-group", "group"} if not drill or config.drill_placement else {
        "key-pair"}  # fmt: skip
    assert findings(iam_restore.iam_policy(config), {"ec2:RunInstances": named}) == []
