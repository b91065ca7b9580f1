"""Bad configs stop the backup with exit 2 and a message naming the setting, before any AWS call."""

from __future__ import annotations

import dataclasses

import pytest

from ec2ami.backup import config as backup_config
from ec2ami.backup.config import BackupConfig, ServerDefaults, load_config, validate_config
from ec2ami.errors import ConfigError
from ec2ami.restore import config as restore_config
from ec2ami.settings import read_settings
from tests.conftest import ROOT, run, write_config

GOOD_ID = "i-0123456789abcdef0"
SERVER = {"name": "web01", "instance_id": GOOD_ID}


CLASHING_NAMES = [
    {"name": "web:01", "instance_id": GOOD_ID},
    {"name": "web*01", "instance_id": "i-0123456789abcdef1"},
]
LONG_NAME = {"name": "w" * 120, "instance_id": GOOD_ID}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"KEPP": 3}, "unknown setting KEPP; did you mean KEEP?"),
        ({"KEEP": 0}, "KEEP must be a whole number from 1 to 1000"),
        ({"KEEP": "7"}, "KEEP must be a whole number from 1 to 1000"),
        ({"KEEP": True}, "KEEP must be a whole number from 1 to 1000"),
        ({"MAX_AGE_DAYS": -1}, "MAX_AGE_DAYS must be None or a number above 0"),
        ({"NO_REBOOT": "yes"}, "NO_REBOOT must be True or False"),
        ({"WAIT_TIMEOUT_MINUTES": 0}, "WAIT_TIMEOUT_MINUTES must be a number above 0"),
        ({"REGION": "Ireland"}, "REGION must be None or a region such as eu-west-1"),
        ({"SCHEDULE": "daily backups"}, "SCHEDULE must be 1-64 letters"),
        ({"TAGS": {"aws:x": "1"}}, "TAGS: tag key 'aws:x' uses a reserved prefix"),
        ({"TAGS": {"k": "v" * 257}}, "TAGS['k'] must be a string of at most 256"),
        ({"TAGS": ["a"]}, "TAGS must be a dict"),
        ({"TAGS": {f"k{n}": "v" for n in range(22)}}, "TAGS: 22 tags; at most 21 fit"),
        (
            {
                "TAGS": {f"k{n}": "v" for n in range(14)},
                "SERVERS": [{**SERVER, "tags": {f"s{n}": "v" for n in range(8)}}],
            },
            "TAGS plus SERVERS[0]['tags']: 22 tags",
        ),
        ({"NAME_FORMAT": "{server}-backup"}, "NAME_FORMAT must contain {time}"),
        ({"NAME_FORMAT": "{server}-{host}-{time}"}, "NAME_FORMAT: unknown field {host}"),
        ({"NAME_FORMAT": "{server}-{time}" + "x" * 130}, "not 3-128"),
        ({"SERVERS": "web01"}, "SERVERS must be a list of dicts"),
        ({"SERVERS": [{"name": "web01", "instance_id": "i-123"}]}, "is not an instance id"),
        ({"SERVERS": [{"name": "web01", "instance_id": "I-0123456789ABCDEF0"}]}, "not an instance"),
        (
            {"SERVERS": [{**SERVER, "kep": 2}]},
            "SERVERS[0]: unknown key 'kep'; did you mean 'keep'?",
        ),
        ({"SERVERS": [{**SERVER, "keep": 0}]}, "SERVERS[0]['keep'] must be a whole number from 1"),
        ({"SERVERS": [{**SERVER, "no_reboot": 1}]}, "SERVERS[0]['no_reboot'] must be True"),
        ({"SERVERS": [{"instance_id": GOOD_ID}]}, "SERVERS[0]: 'name' must be a non-empty"),
        ({"SERVERS": [SERVER, SERVER]}, "SERVERS: name 'web01' appears twice"),
        ({"SERVERS": [], "SELECT_TAGS": {}}, "nothing to back up"),
        ({"CONSISTENCY": "app"}, "CONSISTENCY must be None or one of crash, reboot, vss, scripts"),
        ({"CONSISTENCY": "scripts"}, "CONSISTENCY 'scripts' needs PRE_SCRIPT or POST_SCRIPT"),
        ({"ON_SCRIPT_FAILURE": "ignore"}, "ON_SCRIPT_FAILURE must be 'fail' or 'crash'"),
        ({"SCRIPT_TIMEOUT_SECONDS": 5}, "SCRIPT_TIMEOUT_SECONDS must be a whole number from 30"),
        ({"SERVERS": [{**SERVER, "consistency": "vss", "platform": "linux"}]}, "is for Windows"),
        ({"SERVERS": [{**SERVER, "consistency": "snap"}]}, "SERVERS[0]['consistency'] must be"),
        ({"SERVERS": [{**SERVER, "consistency": "scripts"}]}, "needs PRE_SCRIPT or POST_SCRIPT"),
        ({"SERVERS": [{**SERVER, "platform": "macos"}]}, "SERVERS[0]['platform'] must be None"),
        ({"COPY_TO_REGIONS": ["us-west-2"]}, "COPY_TO_REGIONS must be a dict of region"),
        ({"COPY_TO_REGIONS": {"Oregon": {}}}, "COPY_TO_REGIONS: 'Oregon' is not a region"),
        (
            {"REGION": "us-east-1", "COPY_TO_REGIONS": {"us-east-1": {}}},
            "COPY_TO_REGIONS['us-east-1']: that is REGION itself",
        ),
        (
            {"COPY_TO_REGIONS": {"us-west-2": {"kepp": 3}}},
            "COPY_TO_REGIONS['us-west-2']: unknown key 'kepp'; did you mean 'keep'?",
        ),
        ({"COPY_TO_REGIONS": {"us-west-2": {"keep": 0}}}, "['keep'] must be a whole number from 1"),
        ({"COPY_TO_REGIONS": {"us-west-2": {"kms_key_id": ""}}}, "['kms_key_id'] must be None"),
        ({"COPY_TO_REGIONS": {"us-west-2": {}}, "WAIT": False}, "COPY_TO_REGIONS needs WAIT"),
        ({"SHARE_WITH_ACCOUNTS": "111122223333"}, "SHARE_WITH_ACCOUNTS must be a list"),
        ({"SHARE_WITH_ACCOUNTS": [111122223333]}, "111122223333 is not a 12-digit account id"),
        ({"SHARE_WITH_ACCOUNTS": ["1111-2222-3333"]}, "is not a 12-digit account id"),
        ({"SHARE_WITH_ACCOUNTS": ["111122223333"] * 2}, "at most 15 accounts, each once"),
        ({"DEPRECATE_AFTER_DAYS": 0}, "DEPRECATE_AFTER_DAYS must be None or a number above 0"),
        ({"DEPRECATE_AFTER_DAYS": 4000}, "and at most 3650, not 4000"),
        ({"ROLE_ARN": "backup-role"}, "ROLE_ARN must be None or an IAM role ARN"),
        ({"ROLE_ARN": "arn:aws:iam::12345:role/x"}, "ROLE_ARN must be None or an IAM role ARN"),
        # Numbers out of range or not finite (issue 11, item 7).
        ({"MAX_AGE_DAYS": 1e6}, "MAX_AGE_DAYS must be None or a number above 0 and at most 36500"),
        ({"MAX_AGE_DAYS": float("nan")}, "MAX_AGE_DAYS must be None or a number above 0"),
        ({"MAX_AGE_DAYS": float("inf")}, "MAX_AGE_DAYS must be None or a number above 0"),
        ({"WAIT_TIMEOUT_MINUTES": float("nan")}, "WAIT_TIMEOUT_MINUTES must be a number"),
        ({"WAIT_TIMEOUT_MINUTES": 1e9}, "and at most 1440"),
        ({"DEPRECATE_AFTER_DAYS": float("nan")}, "DEPRECATE_AFTER_DAYS must be None or"),
        ({"KEEP": 10**9}, "KEEP must be a whole number from 1 to 1000"),
        ({"SCRIPT_TIMEOUT_SECONDS": 10**7}, "SCRIPT_TIMEOUT_SECONDS must be a whole number"),
        ({"COPY_TO_REGIONS": {"us-west-2": {"keep": 5000}}}, "['keep'] must be a whole number"),
        # Names that would fail every run (issue 11, items 2 and 3).
        ({"NAME_FORMAT": "backup-{time}"}, "NAME_FORMAT must contain {server} or {instance_id}"),
        ({"NAME_FORMAT": "{server}-{time:%Y-%m}"}, "runs a minute apart the same name"),
        ({"NAME_FORMAT": "{server}-{time:%Y%m%d-%H}"}, "needs at least minutes"),
        ({"SERVERS": CLASHING_NAMES}, "servers 'web:01' and 'web*01' the same AMI name"),
        ({"SERVERS": [LONG_NAME], "NAME_FORMAT": "{server}-{schedule}-{time}"}, "not 3-128"),
        ({"POOL": "prod pool"}, "POOL must be 1-64 letters"),
        # Accepted, then failing a later run (issue 25, section 5).
        ({"NAME_FORMAT": "{server}-{time:%H%M}"}, "gives runs a day apart the same name"),
        ({"NAME_FORMAT": "{server}-{time:%M}"}, "gives runs an hour apart the same name"),
        ({"NAME_FORMAT": "{server}-{time:%m%d-%H%M}"}, "gives runs a year apart the same name"),
        ({"SERVERS": [{**SERVER, "name": "web01\nFAILED"}]}, "contains a control character"),
        ({"SERVERS": [{**SERVER, "name": "w" * 257}]}, "a server name has at most 256"),
        ({"STATE_FILE": "/tmp"}, "STATE_FILE /tmp is a directory"),
        ({"ADOPT_INSTANCES": {"web01": ["i-1"]}}, "ADOPT_INSTANCES['web01']: 'i-1' is no instance"),
        ({"TRUST_TAGS_BEFORE": "2026-12-01"}, "TRUST_TAGS_BEFORE must be None or a time with"),
    ],
)
def test_bad_setting_is_named(settings, message):
    settings = {"SERVERS": [SERVER], **settings}
    with pytest.raises(ConfigError) as err:
        validate_config(settings)
    assert message in str(err.value)


def test_a_minute_resolution_name_format_is_accepted():
    config = validate_config(
        {"SERVERS": [SERVER], "NAME_FORMAT": "{instance_id}-{time:%Y%m%d%H%M}"}
    )
    assert config.name_format == "{instance_id}-{time:%Y%m%d%H%M}"


def test_pool_defaults_to_the_config_files_name(tmp_path):
    path = write_config(tmp_path / "prod backup.py", SERVERS=[SERVER])
    assert load_config(str(path)).pool == "prod-backup"
    path = write_config(tmp_path / "staging.py", SERVERS=[SERVER], POOL="shared")
    assert load_config(str(path)).pool == "shared"


def test_good_config_gets_defaults_and_server_overrides():
    config = validate_config(
        {
            "SERVERS": [
                {**SERVER, "keep": 3, "no_reboot": False},
                {"name": "b", "instance_id": "i-0badcafe"},
            ]
        }
    )
    assert [(s.name, s.keep, s.consistency) for s in config.servers] == [
        ("web01", 3, "reboot"),
        ("b", 7, "crash"),
    ]
    assert config.schedule == "daily"
    assert config.defaults == ServerDefaults(keep=7, consistency="crash", pre_script=None,
                                             post_script=None)  # fmt: skip


def test_the_checked_config_is_frozen_and_holds_every_setting():
    config = validate_config({"SERVERS": [SERVER], "TAGS": {"team": "ops"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.schedule = "weekly"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.servers[0].keep = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.tags["team"] = "dev"  # type: ignore[index]
    in_defaults = {"KEEP", "CONSISTENCY", "NO_REBOOT", "PRE_SCRIPT", "POST_SCRIPT"}
    fields = {f.name.upper() for f in dataclasses.fields(BackupConfig)} - {"DEFAULTS"}
    assert fields | in_defaults == set(backup_config.DEFAULTS)


def test_the_shipped_example_config_only_lacks_servers():
    with pytest.raises(ConfigError, match="nothing to back up"):
        load_config(str(ROOT / "ec2_to_ami_config.py"))


def test_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("KEEP = 3\nSERVERS = [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value)
    assert "line 2" in str(err.value) or "line 3" in str(err.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("KEPP = 3\n", "unknown setting KEPP; did you mean KEEP?"),
        ("SERVERS = [{'name': 'x', 'instance_id': 'i-zz'}]\n", "SERVERS[0] (x): 'instance_id'"),
        ("KEEP = (\n", "line 1"),
        ("import nonexistent_module\n", "ModuleNotFoundError"),
        ("import sys\nsys.exit(0)\n", "SystemExit"),
        ("raise SystemExit('stop')\n", "SystemExit: stop"),
        ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
        (
            "MAX_AGE_DAYS = 1e6\nSERVERS = [{'name': 'a', 'instance_id': 'i-0badcafe'}]\n",
            "MAX_AGE_DAYS must be None or a number above 0 and at most 36500",
        ),
        (
            "SNAPSHOT_PRICE_GB_MONTH = '1'\n"
            "SERVERS = [{'name': 'a', 'instance_id': 'i-0badcafe'}]\n",
            "SNAPSHOT_PRICE_GB_MONTH must be a number above 0 and at most 10, not '1'",
        ),
        (
            "ARCHIVE_PRICE_GB_MONTH = -1\nSERVERS = [{'name': 'a', 'instance_id': 'i-0badcafe'}]\n",
            "ARCHIVE_PRICE_GB_MONTH must be a number above 0 and at most 10, not -1",
        ),
    ],
)
def test_bad_config_exits_2_without_traceback_or_aws_call(endpoint, tmp_path, body, message):
    path = tmp_path / "config.py"
    path.write_text(body, encoding="utf-8")
    result = run("ec2_to_ami.py", path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert endpoint.count() == 0


def test_missing_config_file_exits_2(endpoint, tmp_path):
    result = run("ec2_to_ami.py", tmp_path / "nope.py")
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr and "nope.py" in result.stderr
    assert endpoint.count() == 0


def test_missing_region_exits_2(endpoint, tmp_path):
    path = write_config(tmp_path / "c.py", SERVERS=[SERVER])
    result = run("ec2_to_ami.py", path, AWS_REGION="", AWS_DEFAULT_REGION="")
    assert result.returncode == 2
    assert "REGION is None" in result.stderr
    assert endpoint.count() == 0


def test_unknown_server_flag_exits_2(endpoint, tmp_path):
    path = write_config(tmp_path / "c.py", SERVERS=[SERVER])
    result = run("ec2_to_ami.py", path, "--server", "web02")
    assert result.returncode == 2
    assert "--server web02: not in SERVERS" in result.stderr
    assert endpoint.count() == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--list", "--dry-run"],
        ["--cost", "--dry-run"],
        ["--cost", "--check"],
        ["--last-run", "--list"],
    ],
)
def test_bad_usage_exits_2(endpoint, tmp_path, args):
    path = write_config(tmp_path / "c.py", SERVERS=[SERVER])
    result = run("ec2_to_ami.py", path, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert endpoint.count() == 0


def test_the_shipped_restore_config_holds_every_setting_at_its_default():
    shipped = read_settings(str(ROOT / "ami_to_ec2_config.py"))
    assert shipped == restore_config.DEFAULTS
