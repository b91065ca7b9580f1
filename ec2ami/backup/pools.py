"""Pools: whose images a run may count and prune (POOL, and the instance each server name
resolves to), and the clashes that make a run refuse a server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ec2ami.aws import chunked
from ec2ami.backup.look import Outcome, describe_instances
from ec2ami.facts import LIVE_INSTANCE_STATES

if TYPE_CHECKING:
    from ec2ami.backup.look import Server
    from ec2ami.backup.plan import Image


def in_pool(image: Image, pool: str, instance_of: dict[str, str]) -> bool:
    """Whether an image counts in this config's retention pool.

    An image tagged with a pool belongs to that pool. One made before pools were
    recorded belongs to the pool of the config that backs up its very instance now,
    under the same server name: its first run with pools adopts it.
    """
    if image.pool:
        return image.pool == pool
    return bool(image.instance_id) and instance_of.get(image.server) == image.instance_id


def pool_clashes(ec2: Any, servers: list[Server], images: list[Image], pool: str) -> dict:
    """For each server, the other live instances whose backups its pool already holds.

    Two instances backed up into one pool under one name would prune each other's
    backups: that happens when two configs share a POOL (or a config file name).
    """
    current = {s.spec.name: s.spec.instance_id for s in servers}
    others: dict[str, set[str]] = {}
    for image in images:
        theirs, mine = image.instance_id, current.get(image.server)
        if image.pool == pool and mine and theirs and theirs != mine:
            others.setdefault(image.server, set()).add(theirs)
    ids = sorted(set().union(*others.values())) if others else []
    live: set[str] = set()
    for batch in chunked(ids):
        filters = [
            {"Name": "instance-id", "Values": batch},
            {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES},
        ]
        live |= {i["InstanceId"] for i in describe_instances(ec2, filters)}
    return {name: sorted(ids & live) for name, ids in others.items() if ids & live}


def split_pool_clashes(
    ec2: Any, servers: list[Server], failures: list[Outcome], images: list[Image], pool: str
) -> list[Server]:
    """Fail each server whose pool holds backups of another live instance of its name."""
    clashes = pool_clashes(ec2, servers, images, pool)
    for server in servers:
        spec, rivals = server.spec, clashes.get(server.spec.name)
        if rivals:
            error = (
                f"pool {pool!r} already holds backups of {spec.name!r} made from "
                f"{', '.join(rivals)}, a live instance other than {spec.instance_id}; two "
                "configs that share a pool would prune each other's backups: give them "
                "different POOL settings or server names (nothing backed up or pruned)"
            )
            failures.append(Outcome(spec.name, spec.instance_id, error=error))
    return [s for s in servers if s.spec.name not in clashes]
