"""The config's own SSM Command document (SSM_DOCUMENT): the fixed pre- and post-scripts
of this config, and nothing else, so the backup role never needs AWS-RunShellScript or
AWS-RunPowerShellScript, which run any command as root on any instance the role reaches.

The document takes one parameter, `script`, whose allowedValues are the ids of this
config's scripts (a digest of each): SSM refuses any other value, so the role can run
only those scripts. Each script is embedded (base64, so no quoting can break out of it)
and run from a file, as the AWS documents run `commands`. `--print-ssm-document` prints
the document; create it once, and update it after changing a script:

    aws ssm create-document --name NAME --document-type Command --document-format JSON \
        --content file://document.json

A run checks with one DescribeDocument that the document's default version is this
config's (SSM reports the SHA-256 of its content); if not, each scripts server fails,
saying so, and nothing runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.contract import TOOL
from ec2ami.errors import EXIT_OK

if TYPE_CHECKING:
    from ec2ami.backup.config import BackupConfig

ERR_INVALID_DOCUMENT = "InvalidDocument"  # SSM: no such document (or not shared with us)
LINUX_RUN = [
    "f=$(mktemp) || exit 1",
    "case '{{ script }}' in",
    "%s",
    "  *) echo 'no such script: {{ script }}' >&2; rm -f \"$f\"; exit 2 ;;",
    "esac",
    'sh "$f"; rc=$?; rm -f "$f"; exit $rc',
]
WINDOWS_RUN = [
    '$f = [IO.Path]::ChangeExtension([IO.Path]::GetTempFileName(), ".ps1")',
    "switch ('{{ script }}') {",
    "%s",
    "  default { Write-Error 'no such script: {{ script }}'; exit 2 }",
    "}",
    "& $f; $rc = $LASTEXITCODE; Remove-Item $f; exit $rc",
]


def script_id(script: str) -> str:
    """A script's value of the `script` parameter: a digest of its text."""
    return "s" + hashlib.sha256(script.encode()).hexdigest()[:16]


def config_scripts(config: BackupConfig) -> list[str]:
    """Every pre- and post-script this config can run, each once."""
    scripts = {config.defaults.pre_script, config.defaults.post_script}
    for spec in config.servers:
        scripts |= {spec.pre_script, spec.post_script}
    return sorted(s for s in scripts if s)


def document_text(config: BackupConfig) -> str:
    """The document's content, exactly as printed and as SSM hashes it."""
    scripts = {script_id(s): s for s in config_scripts(config)}

    def arms(linux: bool) -> str:
        made = []
        for ident, script in sorted(scripts.items()):
            encoded = base64.b64encode(script.encode()).decode()
            made.append(f"  {ident}) echo '{encoded}' | base64 -d > \"$f\" ;;" if linux else
                        f"  '{ident}' {{ [IO.File]::WriteAllBytes($f, "
                        f"[Convert]::FromBase64String('{encoded}')) }}")  # fmt: skip
        return "\n".join(made)

    def step(name: str, action: str, platform: str, lines: list[str], linux: bool) -> dict:
        commands = "\n".join(lines) % arms(linux)
        return {"action": action, "name": name,
                "precondition": {"StringEquals": ["platformType", platform]},
                "inputs": {"runCommand": commands.split("\n"),
                           "timeoutSeconds": "{{ executionTimeout }}"}}  # fmt: skip

    document = {
        "schemaVersion": "2.2",
        "description": f"{TOOL}: the pre- and post-scripts of backup config {config.config_id}",
        "parameters": {
            "script": {"type": "String", "allowedValues": sorted(scripts),
                       "description": "which of the config's scripts to run"},
            "executionTimeout": {"type": "String", "default": "300",
                                 "allowedPattern": "^[0-9]{1,5}$"},
        },
        "mainSteps": [
            step("linux", "aws:runShellScript", "Linux", LINUX_RUN, True),
            step("windows", "aws:runPowerShellScript", "Windows", WINDOWS_RUN, False),
        ],
    }  # fmt: skip
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def print_ssm_document(config: BackupConfig) -> int:
    """--print-ssm-document: the document SSM_DOCUMENT must hold; no AWS call."""
    print(document_text(config), end="")
    return EXIT_OK


def document_mismatch(ssm: Any, config: BackupConfig) -> str | None:
    """Why SSM_DOCUMENT cannot run this config's scripts (gone, or another content), or None."""
    name = config.ssm_document
    fix = "create or update it from `--print-ssm-document` (docs/backup.md)"
    try:
        found = ssm.describe_document(Name=name)["Document"]
    except ClientError as err:
        if err.response["Error"]["Code"] == ERR_INVALID_DOCUMENT:
            return f"SSM_DOCUMENT {name} does not exist here: {fix}"
        return f"could not read SSM_DOCUMENT {name}: {error_text(err)}"
    except AWS_ERRORS as err:
        return f"could not read SSM_DOCUMENT {name}: {error_text(err)}"
    wanted = hashlib.sha256(document_text(config).encode()).hexdigest()
    if found.get("Hash") != wanted:
        return (f"SSM_DOCUMENT {name} (version {found.get('DefaultVersion', '?')}) is not this "
                f"config's: its scripts differ; {fix}")  # fmt: skip
    return None
