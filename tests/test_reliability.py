"""The backup never loses, leaks or misreports a backup (issue 11), against the local endpoint."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

from bench import budget
from ec2ami import clock
from ec2ami.backup.cli import main, run_lock
from ec2ami.settings import lock_path
from localaws.endpoint import SETTINGS, finish_pending
from tests.conftest import (
    CLOCK,
    REGION,
    available_by_server,
    backup_config,
    launch,
    linux_servers,
    managed,
    orphaned_managed_snapshots,
    run,
    run_process,
    script_command,
    tags_of,
    wait_for,
    write_config,
)


def one_server(tmp_path, fleet, name: str, server: str, instance: str, **settings):
    """A config file called name that backs up one instance as server."""
    entry = {"name": server, "instance_id": fleet.instances[instance]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_config(tmp_path / name, SERVERS=[entry], **{"KEEP": 2, **settings})


def images_by_instance(ec2, server: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for image in managed(ec2, server):
        instance = tags_of(image)["ec2-to-ami:instance-id"]
        counts[instance] = counts.get(instance, 0) + 1
    return counts


def strip_pool_tags(ec2) -> None:
    """Make every managed image and snapshot look as the previous version left them."""
    images = managed(ec2)
    snapshots = [m["Ebs"]["SnapshotId"] for i in images for m in i["BlockDeviceMappings"]]
    ec2.delete_tags(
        Resources=[i["ImageId"] for i in images] + snapshots,
        Tags=[{"Key": "ec2-to-ami:pool"}, {"Key": "ec2-to-ami:run"}],
    )


# --- 1. Pools: two configs never prune each other ---------------------------------------


def test_two_configs_with_a_server_of_one_name_never_prune_each_other(ec2, fleet, tmp_path):
    prod = one_server(tmp_path, fleet, "prod.py", "web01", "web01")
    staging = one_server(tmp_path, fleet, "staging.py", "web01", "app01")
    for _ in range(5):
        for config in (prod, staging):
            result = run("ec2_to_ami.py", config)
            assert result.returncode == 0, result.stderr
            assert "WARNING" not in result.stderr
    counts = images_by_instance(ec2, "web01")
    assert counts == {fleet.instances["web01"]: 2, fleet.instances["app01"]: 2}
    pools = {tags_of(i)["ec2-to-ami:pool"] for i in managed(ec2, "web01")}
    assert pools == {"prod", "staging"}
    assert orphaned_managed_snapshots(ec2) == []


def test_two_configs_sharing_a_pool_each_keep_their_own_and_name_the_other(ec2, fleet, tmp_path):
    """Two configs that share a pool, each with its own web01, count and prune only the
    images EC2 says were made from their own instance; each names the other's as not its
    backup, and neither stops backing up (a stranger's look-alike would stop it forever)."""
    prod = one_server(tmp_path, fleet, "prod.py", "web01", "web01", POOL="shared", KEEP=1)
    staging = one_server(tmp_path, fleet, "staging.py", "web01", "app01", POOL="shared", KEEP=1)
    assert run("ec2_to_ami.py", prod).returncode == 0
    kept = managed(ec2, "web01")[0]["ImageId"]
    for _ in range(2):
        result = run("ec2_to_ami.py", staging)
        assert result.returncode == 0, result.stderr
    web, app = fleet.instances["web01"], fleet.instances["app01"]
    assert f"web01: image {kept}" in result.stderr
    assert f"made from {web}, which is not web01's instance ({app})" in result.stderr
    assert kept in {i["ImageId"] for i in managed(ec2, "web01")}
    assert images_by_instance(ec2, "web01") == {web: 1, app: 1}


def test_a_replaced_instance_hands_its_pool_to_the_new_one_once_adopted(ec2, fleet, tmp_path):
    old = one_server(tmp_path, fleet, "prod.py", "web01", "web01", KEEP=2)
    for _ in range(2):
        assert run("ec2_to_ami.py", old).returncode == 0
    ec2.terminate_instances(InstanceIds=[fleet.instances["web01"]])
    launch(ec2, fleet, "web01-new")
    new = one_server(tmp_path, fleet, "prod.py", "web01", "web01-new", KEEP=2)
    result = run("ec2_to_ami.py", new)
    assert result.returncode == 0
    assert "ADOPT_INSTANCES adopts it" in result.stderr  # the old backups: named, all kept
    assert images_by_instance(ec2, "web01") == {
        fleet.instances["web01"]: 2, fleet.instances["web01-new"]: 1
    }  # fmt: skip
    adopted = one_server(tmp_path, fleet, "prod.py", "web01", "web01-new", KEEP=2,
                         ADOPT_INSTANCES={"web01": [fleet.instances["web01"]]})  # fmt: skip
    for _ in range(2):
        result = run("ec2_to_ami.py", adopted)
        assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    assert images_by_instance(ec2, "web01") == {fleet.instances["web01-new"]: 2}
    assert orphaned_managed_snapshots(ec2) == []


def test_images_from_before_pools_are_adopted_by_the_config_of_their_instance(ec2, fleet, tmp_path):
    prod = one_server(tmp_path, fleet, "prod.py", "web01", "web01", KEEP=2)
    staging = one_server(tmp_path, fleet, "staging.py", "web01", "app01", KEEP=2)
    for _ in range(2):
        for config in (prod, staging):
            assert run("ec2_to_ami.py", config).returncode == 0
    strip_pool_tags(ec2)  # two images of each instance, as the previous version left them
    for config in (prod, staging):
        assert run("ec2_to_ami.py", config).returncode == 0
    counts = images_by_instance(ec2, "web01")
    assert counts == {fleet.instances["web01"]: 2, fleet.instances["app01"]: 2}
    untagged = [i for i in managed(ec2, "web01") if "ec2-to-ami:pool" not in tags_of(i)]
    assert len(untagged) == 2  # one old image each is still within KEEP, then goes
    for config in (prod, staging):
        assert run("ec2_to_ami.py", config).returncode == 0
    assert all("ec2-to-ami:pool" in tags_of(i) for i in managed(ec2, "web01"))
    assert orphaned_managed_snapshots(ec2) == []


# --- 2. A run never reports another run's image as its backup ------------------------------


def test_a_name_taken_by_an_earlier_run_fails_the_server_naming_name_format(
    ec2, fleet, tmp_path, monkeypatch
):
    first, second = (datetime(2026, 3, 1, 2, 0, s, tzinfo=timezone.utc) for s in (5, 40))
    times = iter([first, first, second, second])  # each run reads it as it starts and ends
    monkeypatch.setattr(clock, "utc_now", lambda: next(times))
    config = backup_config(tmp_path, fleet, KEEP=1, NAME_FORMAT="{server}-{time:%Y%m%d-%H%M}")
    assert run("ec2_to_ami.py", config).returncode == 0
    first = {i["ImageId"] for i in managed(ec2)}
    result = run("ec2_to_ami.py", config, "-q")
    assert result.returncode == 1
    assert "AMI name web01-20260301-0200 is taken by" in result.stderr
    assert "NAME_FORMAT must give each run its own name" in result.stderr
    assert "3 server(s): 0 backed up, 3 failed" in result.stderr
    assert {i["ImageId"] for i in managed(ec2)} == first


def test_an_image_whose_answer_was_lost_is_adopted_by_its_own_run(ec2, fleet, tmp_path, endpoint):
    app = fleet.instances["app01"]
    endpoint.inject("CreateImage", "InternalError", 500, lost=True, InstanceId=app)
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet))
    assert result.returncode == 0, result.stderr
    assert "this run's image" in result.stderr
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


# --- 3. Names found only at run time fail in the dry run too --------------------------------


def test_a_server_found_by_tag_with_too_long_a_name_fails_in_the_dry_run_and_the_run(
    ec2, fleet, tmp_path, endpoint
):
    launch(ec2, fleet, "x" * 120, tags=[{"Key": "Backup", "Value": "yes"}])
    config = backup_config(tmp_path, fleet)
    dry = run("ec2_to_ami.py", config, "--dry-run")
    assert dry.returncode == 1
    assert f"Would fail {'x' * 120}" in dry.stdout and "not 3-128" in dry.stdout
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1 and "not 3-128" in result.stderr
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


def test_servers_found_by_tag_whose_names_become_one_ami_name_both_fail(ec2, fleet, tmp_path):
    for name in ("db:01", "db*01"):
        launch(ec2, fleet, name, tags=[{"Key": "Backup", "Value": "yes"}])
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet))
    assert result.returncode == 1
    assert result.stderr.count("servers 'db:01' and 'db*01' would get the same AMI name") == 2
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


# --- 4 and 5. Leaked snapshots are swept; gone is not failed --------------------------------


def test_snapshots_another_tool_left_behind_are_swept(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=2)
    assert run("ec2_to_ami.py", config).returncode == 0
    for image in managed(ec2, "web01"):
        ec2.deregister_image(ImageId=image["ImageId"])  # keeps its snapshot
    assert len(orphaned_managed_snapshots(ec2)) == 1
    dry = run("ec2_to_ami.py", config, "--dry-run")
    [orphan] = orphaned_managed_snapshots(ec2)
    assert f"Would delete orphaned snapshot {orphan}" in dry.stdout
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert f"sweep: deleted 1 orphaned snapshot(s): {orphan}" in result.stderr
    assert orphaned_managed_snapshots(ec2) == []


def test_sweep_leaves_snapshots_of_other_pools_and_unmarked_ones(ec2, fleet, tmp_path):
    other = one_server(tmp_path, fleet, "other.py", "web01", "app01")
    assert run("ec2_to_ami.py", other).returncode == 0
    [image] = managed(ec2, "web01")
    ec2.deregister_image(ImageId=image["ImageId"])  # the other pool's orphan
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
    mine = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]  # not the tool's
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    assert len(orphaned_managed_snapshots(ec2)) == 1
    assert ec2.describe_snapshots(SnapshotIds=[mine])["Snapshots"]


def test_a_failed_snapshot_delete_says_the_image_is_gone_and_the_next_run_sweeps_it(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.deregister_snapshot_code = "internal-error"
    endpoint.inject("DeleteSnapshot", "InternalError", 500, times=100)
    result = run("ec2_to_ami.py", config, AWS_MAX_ATTEMPTS="2")
    assert result.returncode == 0, result.stderr
    assert "is deregistered, but its snapshot" in result.stderr and "stays" in result.stderr
    assert "could not deregister" not in result.stderr
    assert "sweep: could not delete orphaned snapshot(s)" in result.stderr
    assert len(orphaned_managed_snapshots(ec2)) == 3
    endpoint.faults.clear()
    SETTINGS.deregister_snapshot_code = "success"
    result = run("ec2_to_ami.py", config)
    assert "sweep: deleted 3 orphaned snapshot(s)" in result.stderr
    assert orphaned_managed_snapshots(ec2) == []
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}


@pytest.mark.parametrize("code", ["InvalidAMIID.Unavailable", "InvalidAMIID.NotFound"])
def test_an_image_already_gone_counts_as_pruned(ec2, fleet, tmp_path, endpoint, code):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.deregister_snapshot_code = "internal-error"  # EC2 kept the snapshots, too
    endpoint.inject("DeregisterImage", code, times=3, lost=True)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert "3 server(s): 3 backed up, 0 failed" in result.stderr
    assert "was already deregistered" in result.stderr
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}
    assert orphaned_managed_snapshots(ec2) == []


def test_a_steady_run_with_the_sweep_stays_within_the_call_budget(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    before = endpoint.count(ok=True)
    assert run("ec2_to_ami.py", config).returncode == 0
    assert endpoint.count(ok=True) - before <= budget(3)
    assert endpoint.count("DescribeSnapshots") == 2  # one sweep per run


# --- 6. A vanished image fails its server at once -------------------------------------------


def test_an_image_that_vanishes_before_it_is_seen_fails_its_server_at_once(
    ec2, fleet, tmp_path, endpoint
):
    SETTINGS.pending_seconds = 3600
    app = fleet.instances["app01"]
    deregistered = threading.Event()

    def vanish_at_first_poll(call) -> None:
        """At the first poll that follows app01's CreateImage (on a loaded machine the run
        may poll while it still creates), its image goes before the tool has seen it."""
        polling = call.action == "DescribeImages" and "tag:ec2-to-ami:run" in call.params.values()
        if polling and not deregistered.is_set():
            client = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url)
            images = [i for i in managed(client) if tags_of(i)["ec2-to-ami:instance-id"] == app]
            if images:
                deregistered.set()
                client.deregister_image(ImageId=images[0]["ImageId"])
                finish_pending()

    endpoint.hooks.append(vanish_at_first_poll)
    started = time.monotonic()
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet, WAIT_TIMEOUT_MINUTES=1))
    assert time.monotonic() - started < 30  # not WAIT_TIMEOUT_MINUTES, a minute
    assert result.returncode == 1
    assert f"app01 ({app}): FAILED: image" in result.stderr
    assert "disappeared before it was ever seen" in result.stderr
    assert "3 server(s): 2 backed up, 1 failed" in result.stderr


# --- 8 and 9. The lock, --list, SSM pages ---------------------------------------------------


def test_one_config_reached_through_a_link_is_one_lock(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    link = tmp_path / "link.py"
    link.symlink_to(config)
    with run_lock(str(config)) as locked:
        assert locked
        result = run("ec2_to_ami.py", link)
    assert result.returncode == 3 and "nothing done" in result.stderr
    assert managed(ec2) == []


def test_the_lock_holds_whatever_tmpdir_a_run_has(ec2, fleet, tmp_path):
    """cron, a login shell and a systemd unit with PrivateTmp each see another TMPDIR: one
    config is still one lock."""
    config = backup_config(tmp_path, fleet)
    other = tmp_path / "other-tmp"
    other.mkdir()
    with run_lock(str(config)) as locked:
        assert locked
        result = run_process("ec2_to_ami.py", config, TMPDIR=str(other))
    assert result.returncode == 3 and "nothing done" in result.stderr
    assert managed(ec2) == []


def test_list_reads_while_a_run_holds_the_lock(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    with run_lock(str(config)) as locked:
        assert locked
        result = run("ec2_to_ami.py", config, "--list")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 4  # header and three backups


def test_ssm_servers_are_asked_about_fifty_at_a_time(ec2, iam, tmp_path, endpoint):
    fleet = linux_servers(ec2, iam, 12)
    config = write_config(
        tmp_path / "c.py", SERVERS=fleet, CONSISTENCY="scripts", PRE_SCRIPT="sync", KEEP=1
    )
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert endpoint.count("DescribeInstanceInformation") == 1


def run_as_nobody(config: str, *args: str) -> tuple[int, str]:
    """Run the backup's main() in a forked process as the unprivileged user nobody.

    A fork, not a new interpreter: this one lives under root's home, which nobody
    cannot read. Returns the exit code and what the run wrote to stderr.
    """
    entry = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, run, exit without returning to pytest
        code = 70
        try:
            os.dup2(write_end, 2)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            with open(2, "w", closefd=False) as err, contextlib.redirect_stderr(err):
                code = main(["--config", config, *args])
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        stderr = stream.read()
    _, status = os.waitpid(pid, 0)
    CLOCK.before_subprocess()  # the child's run took a second of its own: step past it
    return os.waitstatus_to_exitcode(status), stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def readable_config(fleet):
    """A config in a folder every user can read, as /etc/ec2-backup is; and its lock's path."""
    folder = Path(tempfile.mkdtemp(prefix="ec2-backup-"))
    folder.chmod(0o755)
    path = backup_config(folder, fleet)
    path.chmod(0o644)
    lock = Path(lock_path(str(path)))
    yield str(path), lock
    shutil.rmtree(folder)
    lock.unlink(missing_ok=True)


@needs_root
def test_another_user_can_run_a_config_root_ran_first(ec2, readable_config):
    config, lock = readable_config
    lock.touch(mode=0o644)  # as root's run of the previous version left it
    assert run("ec2_to_ami.py", config).returncode == 0
    code, stderr = run_as_nobody(config)
    assert code == 0, stderr
    assert "3 server(s): 3 backed up, 0 failed" in stderr
    assert "Traceback" not in stderr


@needs_root
def test_a_new_lock_file_is_open_to_every_user(ec2, readable_config):
    config, lock = readable_config
    code, stderr = run_as_nobody(config)
    assert code == 0, stderr
    assert lock.stat().st_mode & 0o777 == 0o666
    assert run("ec2_to_ami.py", config).returncode == 0  # and root takes it after nobody


@needs_root
def test_a_lock_that_cannot_be_opened_is_named_without_a_traceback(ec2, readable_config):
    config, lock = readable_config
    lock.touch(mode=0o600)
    code, stderr = run_as_nobody(config)
    assert code == 1
    assert f"cannot open the run lock {lock}: Permission denied; nothing done" in stderr
    assert "Traceback" not in stderr
    assert managed(ec2) == []


# --- Kill -9 anywhere, then a normal run heals -----------------------------------------------

KILL_POINTS = [
    ("CreateImage", 1),  # the first image started
    ("CreateImage", 3),  # all started, none verified
    ("DeregisterImage", 1),  # pruning begun
    ("DeleteSnapshot", 1),  # between DeregisterImage and DeleteSnapshot
]


@pytest.mark.parametrize(("action", "nth"), KILL_POINTS)
def test_a_run_killed_anywhere_is_healed_by_the_next(ec2, fleet, tmp_path, endpoint, action, nth):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.deregister_snapshot_code = "internal-error"  # so the run calls DeleteSnapshot
    SETTINGS.pending_seconds = 0.2
    endpoint.inject("DeleteSnapshot", "InternalError", 500, times=1)  # the dying call fails
    proc = subprocess.Popen(script_command("ec2_to_ami.py", config), stderr=subprocess.DEVNULL)
    seen = []

    def kill_at(call) -> None:
        if call.action == action:
            seen.append(call)
            if len(seen) == nth:
                proc.send_signal(signal.SIGKILL)

    endpoint.hooks.append(kill_at)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    endpoint.hooks.clear()
    wait_for(lambda: all(c.status for c in endpoint.calls), "the answer to the dying call")
    finish_pending()  # the killed run's images, made by now, settle
    SETTINGS.deregister_snapshot_code = "success"
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}
    assert orphaned_managed_snapshots(ec2) == []


def test_the_daily_and_weekly_pools_of_one_server_restore_its_newest_backup_with_no_flag(
    ec2, fleet, tmp_path, endpoint
):
    daily = one_server(tmp_path, fleet, "daily.py", "web01", "web01", SCHEDULE="daily")
    weekly = one_server(tmp_path, fleet, "weekly.py", "web01", "web01", SCHEDULE="weekly")
    for config in (daily, weekly):
        assert run("ec2_to_ami.py", config).returncode == 0
    [newest] = [i for i in managed(ec2, "web01") if tags_of(i)["ec2-to-ami:pool"] == "weekly"]
    restore = write_config(tmp_path / "restore.py", SERVER="web01", WAIT="none")
    result = run("ami_to_ec2.py", restore, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"from {newest['ImageId']}" in result.stdout  # the newest, across both pools
    listing = run("ami_to_ec2.py", restore, "--list").stdout
    assert "POOL" in listing and " weekly " in listing and " daily " in listing


def test_a_restore_by_name_chooses_a_pool_when_two_configs_have_the_server(
    ec2, fleet, tmp_path, endpoint
):
    prod = one_server(tmp_path, fleet, "prod.py", "web01", "web01")
    staging = one_server(tmp_path, fleet, "staging.py", "web01", "app01")
    for config in (prod, staging):
        assert run("ec2_to_ami.py", config).returncode == 0
    restore = write_config(tmp_path / "restore.py", SERVER="web01", WAIT="none")
    launches = endpoint.count("RunInstances")
    result = run("ami_to_ec2.py", restore)
    assert result.returncode == 1
    assert "backups in several pools (prod, staging) of different instances" in result.stderr
    assert endpoint.count("RunInstances") == launches  # nothing launched
    result = run("ami_to_ec2.py", restore, "--pool", "prod", "--dry-run")
    assert result.returncode == 0, result.stderr
    [prod_image] = [i for i in managed(ec2, "web01") if tags_of(i)["ec2-to-ami:pool"] == "prod"]
    assert prod_image["ImageId"] in result.stdout


def test_a_deregistration_without_delete_permission_names_the_permission(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.deregister_snapshot_code = "missing-permissions"
    endpoint.inject("DeleteSnapshot", "UnauthorizedOperation", 403, times=100)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr  # every backup was made and verified
    assert "is deregistered, but its snapshot" in result.stderr
    assert "this role may not delete it (ec2:DeleteSnapshot" in result.stderr
    assert "could not deregister" not in result.stderr
    assert available_by_server(ec2) == {"web01": 1, "app01": 1, "win01": 1}
    # The run tried no DeleteSnapshot of its own: only the sweep did, once per snapshot.
    assert endpoint.count("DeleteSnapshot") == 3
    assert "sweep: could not delete orphaned snapshot(s)" in result.stderr


def test_two_copies_of_one_config_with_different_keep_are_an_error(ec2, fleet, tmp_path):
    """Two hosts' (here: two files') configs for one instance in one pool, KEEP 5 and 1:
    the second would cut the first's backups to one. It fails that server instead."""
    first = one_server(tmp_path / "a", fleet, "daily.py", "web01", "web01", KEEP=5, POOL="daily")
    second = one_server(tmp_path / "b", fleet, "daily.py", "web01", "web01", KEEP=1, POOL="daily")
    for _ in range(3):
        assert run("ec2_to_ami.py", first).returncode == 0
    result = run("ec2_to_ami.py", second)
    assert result.returncode == 1
    assert "another config keeps this instance's backups in pool 'daily' with KEEP=5" in (
        result.stderr
    )
    assert len(managed(ec2, "web01")) == 3


def test_another_hosts_backups_of_a_gone_server_are_never_pruned_here(ec2, fleet, tmp_path):
    """Host B's daily.py backed up its web01, now terminated; host A's daily.py (the same
    default pool) has a web01 of its own and KEEP=1. B's backups are kept."""
    host_b = one_server(tmp_path / "b", fleet, "daily.py", "web01", "app01", KEEP=2)
    for _ in range(2):
        assert run("ec2_to_ami.py", host_b).returncode == 0
    theirs = {i["ImageId"] for i in managed(ec2, "web01")}
    ec2.terminate_instances(InstanceIds=[fleet.instances["app01"]])
    host_a = one_server(tmp_path / "a", fleet, "daily.py", "web01", "web01", KEEP=1)
    for _ in range(2):
        result = run("ec2_to_ami.py", host_a)
        assert result.returncode == 0
    assert theirs <= {i["ImageId"] for i in managed(ec2, "web01")}
    assert all(f"image {image_id}" in result.stderr for image_id in theirs)
