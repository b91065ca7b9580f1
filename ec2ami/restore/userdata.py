"""User data: the host name (HOSTNAME) and the operator's USER_DATA, merged for Linux
(cloud-init) or Windows (EC2Launch).
"""

from __future__ import annotations

import re
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from ec2ami.facts import WINDOWS_NAME_MAX
from ec2ami.restore.config import RestoreError

WINDOWS_RENAME = """$name = '{name}'
if ($env:COMPUTERNAME -ne $name) {{ Rename-Computer -NewName $name -Force -Restart }}"""


def build_user_data(platform: str, hostname: str | None, extra: str | None) -> str | None:
    """Combine HOSTNAME and USER_DATA into the user data the platform's agent runs.

    Without HOSTNAME, USER_DATA passes through unchanged. With it: on Linux a
    cloud-config part that sets the host name, followed by USER_DATA as a second
    MIME part; on Windows an EC2Launch v2 document whose executeScript tasks
    (frequency: always) run USER_DATA and then rename the computer if needed.
    """
    if not hostname:
        return extra
    if platform == "windows":
        return windows_user_data(hostname, extra)
    return linux_user_data(hostname, extra)


def linux_user_data(hostname: str, extra: str | None) -> str:
    """cloud-init user data that sets the host name, plus any extra part."""
    short = hostname.split(".")[0]
    cloud_config = f"#cloud-config\npreserve_hostname: false\nhostname: {short}\n"
    if "." in hostname:
        cloud_config += f"fqdn: {hostname}\nprefer_fqdn_over_hostname: false\n"
    if not extra:
        return cloud_config
    archive = MIMEMultipart()
    archive.attach(MIMEText(cloud_config, "cloud-config", "utf-8"))
    archive.attach(MIMEText(extra, mime_subtype(extra), "utf-8"))
    return archive.as_string()


def mime_subtype(text: str) -> str:
    """cloud-init's part type for a piece of user data, from its first line."""
    first = text.lstrip().split("\n", 1)[0]
    if first.startswith("#cloud-config"):
        return "cloud-config"
    if first.startswith("#include"):
        return "x-include-url"
    if first.startswith("## template: jinja"):
        return "jinja2"
    return "x-shellscript"


def windows_user_data(hostname: str, extra: str | None) -> str:
    """An EC2Launch v2 document that runs extra (if any) and sets the computer name."""
    name = hostname.split(".")[0]
    if len(name) > WINDOWS_NAME_MAX:
        raise RestoreError(f"HOSTNAME {name!r} is longer than Windows allows (15 characters)")
    scripts = []
    if extra:
        body = extra.strip()
        if body.startswith("version:"):
            raise RestoreError(
                "USER_DATA is an EC2Launch v2 document, which cannot be merged with HOSTNAME; "
                "add a setHostName task to it and leave HOSTNAME = None"
            )
        match = re.fullmatch(
            r"<powershell>(.*)</powershell>\s*(<persist>.*</persist>)?", body, re.S
        )
        scripts.append(match.group(1).strip() if match else body)
    scripts.append(WINDOWS_RENAME.format(name=name))
    lines = ["version: 1.1", "tasks:", "- task: executeScript", "  inputs:"]
    for script in scripts:
        lines += ["  - frequency: always", "    type: powershell", "    runAs: localSystem"]
        lines += ["    content: |-"] + [f"      {line}" for line in script.splitlines()]
    return "\n".join(lines) + "\n"
