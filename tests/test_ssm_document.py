"""SSM_DOCUMENT (issue 27): the config's own Command document holds its scripts and
nothing else, so the backup role never needs AWS-RunShellScript; a run refuses a document
that is not this config's, and the document's Linux step really runs the script it names."""

from __future__ import annotations

import json
import subprocess

import boto3
import pytest

from ec2ami.backup.ssm_document import script_id
from tests.conftest import REGION, backup_config, managed, run, write_config

NAME = "ec2-backup-db-scripts"


@pytest.fixture
def ssm(endpoint):
    return boto3.client("ssm", region_name=REGION, endpoint_url=endpoint.url)


def scripted(tmp_path, fleet, name="backup.py", **overrides):
    servers = [
        {"name": "web01", "instance_id": fleet.instances["web01"], "consistency": "scripts"},
        {"name": "app01", "instance_id": fleet.instances["app01"], "consistency": "scripts",
         "post_script": "echo app thawed"},
    ]  # fmt: skip
    settings = {"SERVERS": servers, "PRE_SCRIPT": "sync; echo frozen", "POST_SCRIPT": "echo thawed",
                "SSM_DOCUMENT": NAME, **overrides}  # fmt: skip
    return backup_config(tmp_path, fleet, name, **settings)


def printed(config) -> str:
    result = run("ec2_to_ami.py", config, "--print-ssm-document")
    assert result.returncode == 0, result.stderr
    return result.stdout


def create(ssm, content: str) -> None:
    ssm.create_document(Name=NAME, Content=content, DocumentType="Command",
                        DocumentFormat="JSON")  # fmt: skip


def test_scripts_run_by_id_through_the_configs_own_document(ec2, fleet, ssm, tmp_path, endpoint):
    config = scripted(tmp_path, fleet)
    create(ssm, printed(config))
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    sent = [c for c in endpoint.calls if c.action == "SendCommand"]
    assert {c.params["DocumentName"] for c in sent} == {NAME}
    scripts = sorted(json.loads(c.params["Parameters"])["script"][0] for c in sent)
    wanted = ["sync; echo frozen", "sync; echo frozen", "echo thawed", "echo app thawed"]
    assert scripts == sorted(map(script_id, wanted))
    assert endpoint.count("DescribeDocument") == 1
    assert len(managed(ec2, "web01")) == 1


def test_a_document_that_is_missing_or_not_this_configs_fails_its_servers_and_runs_nothing(
    ec2, fleet, ssm, tmp_path, endpoint
):
    config = scripted(tmp_path, fleet)
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1 and f"SSM_DOCUMENT {NAME} does not exist here" in result.stderr
    create(
        ssm, printed(scripted(tmp_path, fleet, name="older.py", POST_SCRIPT="echo an older thaw"))
    )
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1 and "is not this config's: its scripts differ" in result.stderr
    assert "--print-ssm-document" in result.stderr
    assert endpoint.count("SendCommand") == 0 and managed(ec2, "web01") == []
    assert len(managed(ec2, "win01")) == 2  # the others are backed up all the same


def test_ssm_refuses_a_script_the_document_does_not_hold(fleet, ssm, tmp_path):
    create(ssm, printed(scripted(tmp_path, fleet)))
    with pytest.raises(ssm.exceptions.InvalidParameters):  # S5, as SSM refuses it
        ssm.send_command(InstanceIds=[fleet.instances["web01"]], DocumentName=NAME,
                         Parameters={"script": ["sany-other"]})  # fmt: skip


def test_the_documents_linux_step_runs_the_named_script_and_nothing_else(fleet, tmp_path):
    marker = tmp_path / "ran"
    script = f"echo pre > {marker}\nexit 3"
    document = json.loads(printed(scripted(tmp_path, fleet, PRE_SCRIPT=script)))
    [linux] = [s for s in document["mainSteps"] if s["action"] == "aws:runShellScript"]
    body = "\n".join(linux["inputs"]["runCommand"])
    ran = subprocess.run(["sh", "-c", body.replace("{{ script }}", script_id(script))],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (ran.returncode, marker.read_text()) == (3, "pre\n")
    other = subprocess.run(["sh", "-c", body.replace("{{ script }}", "s0'; touch x; '")],
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)  # fmt: skip
    assert other.returncode == 2 and not (tmp_path / "x").exists()
    allowed = document["parameters"]["script"]["allowedValues"]
    assert script_id(script) in allowed and len(allowed) == 3  # pre, post, app01's post


def test_the_policy_names_the_document_and_selected_instances_only(fleet, tmp_path):
    config = scripted(tmp_path, fleet, SELECT_TAGS={"Backup": "yes"}, CONSISTENCY="scripts")
    statements = json.loads(run("ec2_to_ami.py", config, "--print-iam-policy").stdout)["Statement"]
    [documents] = [s for s in statements if s["Sid"] == "RunOnlyTheConsistencyDocuments"]
    assert documents["Resource"] == [f"arn:aws:ssm:us-east-1:*:document/{NAME}"]
    [opt_in] = [s for s in statements if s["Sid"] == "OnlyOnSelectedInstancesThatOptIn"]
    assert opt_in["Condition"]["StringEquals"] == {"ssm:resourceTag/ec2-to-ami-commands": "allow",
                                                   "ssm:resourceTag/Backup": "yes"}  # fmt: skip
    assert any(s["Action"] == "ssm:DescribeDocument" for s in statements)


@pytest.mark.parametrize(("settings", "message"), [
    ({"SSM_DOCUMENT": "AWS-RunShellScript"}, "SSM_DOCUMENT must be None or a document name"),
    ({"SSM_DOCUMENT": NAME, "CONSISTENCY": None}, "SSM_DOCUMENT holds the scripts"),
])  # fmt: skip
def test_a_bad_ssm_document_setting_is_a_config_error(fleet, tmp_path, settings, message):
    config = write_config(tmp_path / "b.py", SERVERS=[{"name": "web01",
                          "instance_id": fleet.instances["web01"]}], **settings)  # fmt: skip
    result = run("ec2_to_ami.py", config, "--dry-run")
    assert result.returncode == 2 and message in result.stderr
