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

import json
import re

import pytest
from parliament import get_resource_type_matches_from_arn
from parliament.statement import get_privilege_info

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


def statements(name: str) -> list[dict]:
    document = json.loads((ROOT / "docs" / "iam" / name).read_text())
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


def checked(name: str) -> list[tuple[str, dict]]:
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


def findings(name: str, named_by_the_tool: dict[str, set[str]]) -> list[str]:
    """What the reference says is wrong with a shipped policy."""
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
