"""Volumes as EC2 handles them, for the in-place restore (moto has no root volume
replacement, and attaches and detaches anything):

  P40 AttachVolume refuses a volume that is not available (VolumeInUse), one in another
      Availability Zone than the instance (InvalidVolume.ZoneMismatch) and a device the
      instance already uses (InvalidParameterValue); DetachVolume refuses the root volume
      of an instance that is not stopped (IncorrectState), as EC2 does (Amazon EBS User
      Guide, "Attach an Amazon EBS volume to an instance" and "Detach an Amazon EBS
      volume"; EC2 does not document the refusal's error code for the root volume).
  P41 CreateReplaceRootVolumeTask (moto has none) for a running instance, from an image
      (its root device's snapshot) or a snapshot: the task is "pending", then
      "in-progress", then "succeeded" after `root_task_seconds` (or "failed", with the
      original root still attached, for an instance in `fail_root_tasks_of`); on success
      the instance keeps its id, interfaces and addresses, and its root device holds a new
      volume from the snapshot, with the old one detached and kept, or deleted with
      DeleteReplacedRootVolume. A repeated ClientToken returns the same task.
      DescribeReplaceRootVolumeTasks by id or by the instance-id filter.
  P42 CreateVolume with a ClientToken it has seen returns that volume again (moto makes
      another).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.instances import InstanceResponse


class VolumeSettings:
    """The knobs tests turn (reset with the endpoint's SETTINGS)."""

    def __init__(self) -> None:
        self.root_task_seconds = 0.1
        self.fail_root_tasks_of: set[str] = set()

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


VOLUMES = VolumeSettings()


def _tasks(backend: Any) -> dict[str, dict]:
    if not hasattr(backend, "harness_root_tasks"):
        backend.harness_root_tasks = {}
    return backend.harness_root_tasks


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _root_snapshot(backend: Any, instance: Any, image_id: str | None, snapshot_id: str | None):
    """The snapshot the new root comes from: the image's root device's, or the one given."""
    if snapshot_id:
        return backend.get_snapshot(snapshot_id)
    image = backend.describe_images(ami_ids=[image_id])[0]
    for mapping in image.block_device_mappings:  # the harness's mapping (P25)
        if mapping["DeviceName"] == instance.root_device_name and "Ebs" in mapping:
            return backend.get_snapshot(mapping["Ebs"]["SnapshotId"])
    return image.ebs_snapshot


def _create_replace_root_volume_task(self) -> ActionResult:
    """CreateReplaceRootVolumeTask (P41)."""
    backend, instance_id = self.ec2_backend, self._get_param("InstanceId")
    token = self._get_param("ClientToken")
    for task in _tasks(backend).values():
        if token and task["token"] == token:
            return ActionResult({"ReplaceRootVolumeTask": task["shown"]})
    instance = backend.get_instance(instance_id)
    if instance.state != "running":
        raise EC2ClientError(
            "IncorrectInstanceState", f"The instance '{instance_id}' is not in the 'running' state."
        )
    image_id, snapshot_id = self._get_param("ImageId"), self._get_param("SnapshotId")
    snapshot = _root_snapshot(backend, instance, image_id, snapshot_id)
    task_id = f"replacevol-{len(_tasks(backend)) + 1:017x}"
    shown = {"ReplaceRootVolumeTaskId": task_id, "InstanceId": instance_id,
             "TaskState": "pending", "StartTime": _now(), "ImageId": image_id,
             "SnapshotId": snapshot_id or snapshot.id,
             "DeleteReplacedRootVolume": self._get_bool_param("DeleteReplacedRootVolume", False),
             "Tags": [t for s in self._get_param("TagSpecifications", []) or []
                      for t in s.get("Tags", [])]}  # fmt: skip
    _tasks(backend)[task_id] = {"token": token, "shown": shown, "snapshot": snapshot.id,
                                "started": time.monotonic()}  # fmt: skip
    return ActionResult({"ReplaceRootVolumeTask": shown})


def _describe_replace_root_volume_tasks(self) -> ActionResult:
    """DescribeReplaceRootVolumeTasks by ids, or by the instance-id filter (P41)."""
    tasks = list(_tasks(self.ec2_backend).values())
    ids = self._get_param("ReplaceRootVolumeTaskIds", []) or []
    filters = {f["Name"]: f["Values"] for f in self._get_param("Filters", []) or []}
    shown = [
        t["shown"]
        for t in tasks
        if (not ids or t["shown"]["ReplaceRootVolumeTaskId"] in ids)
        and t["shown"]["InstanceId"] in filters.get("instance-id", [t["shown"]["InstanceId"]])
    ]
    return ActionResult({"ReplaceRootVolumeTasks": shown})


def advance(backend: Any) -> None:
    """Move root volume replacement tasks along their states (P41)."""
    for task in _tasks(backend).values():
        shown = task["shown"]
        if shown["TaskState"] in ("succeeded", "failed"):
            continue
        elapsed = time.monotonic() - task["started"]
        if elapsed < VOLUMES.root_task_seconds / 2:
            continue
        shown["TaskState"] = "in-progress"
        if elapsed < VOLUMES.root_task_seconds:
            continue
        if shown["InstanceId"] in VOLUMES.fail_root_tasks_of:
            shown["TaskState"], shown["CompleteTime"] = "failed", _now()
            continue
        _replace_root(backend, shown, task["snapshot"])
        shown["TaskState"], shown["CompleteTime"] = "succeeded", _now()


def _replace_root(backend: Any, shown: dict, snapshot_id: str) -> None:
    """The instance's root device gets a new volume from the snapshot; the old is kept
    detached, or deleted (P41)."""
    instance = backend.get_instance(shown["InstanceId"])
    device = instance.root_device_name
    old = instance.block_device_mapping.get(device)
    snapshot = backend.get_snapshot(snapshot_id)
    zone = instance._placement.zone
    new = backend.create_volume(size=snapshot.volume_size, zone_name=zone,
                                snapshot_id=snapshot_id, encrypted=bool(snapshot.encrypted),
                                kms_key_id=snapshot.kms_key_id or None)  # fmt: skip
    keep_on_termination = bool(old.delete_on_termination) if old else True
    if old is not None:
        backend.detach_volume(old.volume_id, instance.id, device)
        if shown["DeleteReplacedRootVolume"]:
            backend.delete_volume(old.volume_id)
    backend.attach_volume(new.id, instance.id, device, keep_on_termination)


_original_attach = ElasticBlockStore.attach_volume
_original_detach = ElasticBlockStore.detach_volume
_original_create_volume = ElasticBlockStore.create_volume


def _attach_volume(self) -> Any:
    """AttachVolume as EC2 refuses it (P40)."""
    backend = self.ec2_backend
    volume = backend.get_volume(self._get_param("VolumeId"))
    instance = backend.get_instance(self._get_param("InstanceId"))
    device = self._get_param("Device")
    if volume.attachment is not None:
        raise EC2ClientError("VolumeInUse", f"{volume.id} is already attached to an instance")
    if volume.zone.name != instance._placement.zone:
        raise EC2ClientError("InvalidVolume.ZoneMismatch",
                             f"The volume '{volume.id}' is not in the same availability zone "
                             f"as instance '{instance.id}'")  # fmt: skip
    if device in instance.block_device_mapping:
        raise EC2ClientError("InvalidParameterValue",
                             f"Invalid value '{device}' for unixDevice. Attachment point "
                             f"{device} is already in use")  # fmt: skip
    return _original_attach(self)


def _detach_volume(self) -> Any:
    """DetachVolume as EC2 refuses it, and by VolumeId alone as EC2 takes it (P40; moto
    needs the instance)."""
    backend = self.ec2_backend
    volume = backend.get_volume(self._get_param("VolumeId"))
    attachment = volume.attachment
    if attachment is None:
        return _original_detach(self)
    instance = attachment.instance
    if attachment.device == instance.root_device_name and instance.state != "stopped":
        raise EC2ClientError("IncorrectState",
                             f"Unable to detach root volume '{volume.id}' from instance "
                             f"'{instance.id}' while it is {instance.state}")  # fmt: skip
    done = backend.detach_volume(volume.id, instance.id, self._get_param("Device"))
    return ActionResult({"VolumeId": volume.id, "InstanceId": instance.id,
                         "Device": done.device, "State": "detaching",
                         "AttachTime": done.attach_time})  # fmt: skip


def _create_volume(self) -> Any:
    """CreateVolume with EC2's ClientToken idempotency (P42)."""
    token = self._get_param("ClientToken")
    backend = self.ec2_backend
    if token:
        for volume in backend.volumes.values():
            if getattr(volume, "harness_token", None) == token:
                return ActionResult(volume)
    result = _original_create_volume(self)
    if token:
        result.result.harness_token = token
    return result


def apply() -> None:
    """Install P40-P42 on moto's EC2 responses."""
    InstanceResponse.create_replace_root_volume_task = _create_replace_root_volume_task
    InstanceResponse.describe_replace_root_volume_tasks = _describe_replace_root_volume_tasks
    ElasticBlockStore.attach_volume = _attach_volume
    ElasticBlockStore.detach_volume = _detach_volume
    ElasticBlockStore.create_volume = _create_volume
