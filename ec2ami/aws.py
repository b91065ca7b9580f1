"""AWS access for both commands: one session, its clients, retries, pacing, and error text.

Every client is made here, from one session (PROFILE, then ROLE_ARN if set) with
botocore's standard retries. Every EC2 client waits for a token of EC2's request
bucket before each paced call, so a large run keeps EC2's pace with nothing refused.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
)
from botocore.parsers import ResponseParserError

from ec2ami.contract import TOOL
from ec2ami.errors import ConfigError
from ec2ami.facts import (
    FILTER_VALUES_MAX,
    RESOURCE_BUCKETS,
    SESSION_NAME_BAD_CHARS,
    request_bucket,
)

log = logging.getLogger(__name__)

# Whatever botocore raises for a failed call: the service's error (ClientError), the
# client's (BotoCoreError: no connection, retries exhausted, ...), and an answer it cannot
# parse (ResponseParserError: an HTML page from a proxy), which is neither.
AWS_ERRORS = (ClientError, BotoCoreError, ResponseParserError)

# The calls a run makes per server or per instance, each paced to its own EC2 request
# bucket (ec2ami.facts.request_bucket: the documented table), and those that launch,
# start or stop instances to their resource bucket too. The client waits for a token
# before each call instead of being refused (see Pacer). RunInstances' bucket of 5 then 2
# a second sets a fleet restore's pace.
PACED_CALLS = (
    "CreateImage", "ModifyImageAttribute", "ModifySnapshotAttribute", "EnableImageDeprecation",
    "AssociateAddress", "ModifyNetworkInterfaceAttribute", "EnableImage", "TerminateInstances",
    "DeleteVolume", "DeleteNetworkInterface", "DeregisterImage", "DeleteSnapshot", "CreateTags",
    "CopyImage", "RunInstances", "GetLaunchTemplateData", "CreateVolume", "StartInstances",
    "StopInstances",
)  # fmt: skip
# The EBS direct APIs have per-account quotas of their own, in Service Quotas: 50
# ListSnapshotBlocks and 50 ListChangedBlocks requests a second per account (quota codes
# L-18E976AB and L-DB2FBAA1, not adjustable; AWS General Reference, "Amazon Elastic Block
# Store endpoints and quotas"). Read from a public listing of the default quotas: the
# General Reference page itself could not be read here. --cost paces to them as buckets
# of one second's calls; the pacer adapts if the account's other work shares them.
DIRECT_PACED_CALLS = {"ListSnapshotBlocks": (50, 50.0), "ListChangedBlocks": (50, 50.0)}
# The answers that mean "your bucket is empty": EC2's RequestLimitExceeded ("Error codes
# for the Amazon EC2 API", client errors), and the EBS direct APIs' RequestThrottled and
# Throttling ("EBS direct APIs" API Reference, Errors).
THROTTLING_CODES = frozenset({"RequestLimitExceeded", "RequestThrottledException",
                              "ThrottlingException", "Throttling"})  # fmt: skip
# After a throttled call the pacer halves its rate (down to this share of the documented
# one, at least), then wins it back by this share of the documented rate each second: the
# documented rate again within 20 s of the last refusal. Additive increase, multiplicative
# decrease, as TCP and botocore's adaptive mode do; bench/throttled.py measures it.
ADAPTIVE_FLOOR, ADAPTIVE_RECOVERY = 0.05, 0.05
# EC2 answers a launch it has no capacity for with a server error (HTTP 500: "Error codes
# for the Amazon EC2 API", server error codes), which botocore's standard retries take for
# a passing fault and retry up to max_attempts times, backing off: one server's capacity
# error held up a fleet's next launch by a minute. Capacity does not come back in
# seconds, so these are not retried; the server fails at once and the fleet goes on.
CAPACITY_ERRORS = frozenset({
    "InsufficientInstanceCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "InsufficientCapacityOnHost",
})  # fmt: skip
# Tokens the pacer leaves in EC2's bucket, so jitter in when calls arrive is not refused.
PACER_SLACK = 2
DEFAULT_MAX_ATTEMPTS = 10
# A connection EC2 has not accepted in this long is not coming (botocore's default is 60 s,
# which an unreachable endpoint spends on every attempt).
CONNECT_TIMEOUT_SECONDS = 4
CONNECTION_ATTEMPTS = 3


class Clients:
    """The AWS clients a run uses, each made once, the first time it is needed.

    Thread-safe: the backup's threads share one instance. A client is made per
    service and region (REGION if None); every EC2 and EBS client is paced.
    """

    def __init__(
        self, session: boto3.Session, client_config: Config, limits: Mapping | None = None
    ) -> None:
        self.session, self.config = session, client_config
        self.limits = dict(limits or {})  # EC2_API_LIMITS: raised buckets, by API
        self.region: str = session.region_name
        self._made: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.ec2 = self.client("ec2")

    def client(self, service: str, region: str | None = None) -> Any:
        """The one client of a service in a region (REGION if None)."""
        key = (service, region or self.region)
        with self._lock:
            if key not in self._made:
                # boto3-stubs types each service by its literal name; ours is chosen at run time
                made = self.session.client(  # type: ignore[call-overload]
                    service, region_name=key[1], config=self.config
                )
                if service in ("ec2", "ebs"):
                    pace(made, service, self.limits)
                if service == "ec2":
                    made.meta.events.register_first("needs-retry.ec2", no_capacity_retries)
                made.meta.events.register_first(f"needs-retry.{service}", few_connection_retries)
                self._made[key] = made
            return self._made[key]

    ssm = property(lambda self: self.client("ssm"))
    iam = property(lambda self: self.client("iam"))
    elbv2 = property(lambda self: self.client("elbv2"))
    elb = property(lambda self: self.client("elb"))
    route53 = property(lambda self: self.client("route53"))


def connect(
    session: boto3.Session, client_config: Config, role_arn: str | None, *label: str,
    limits: Mapping | None = None,
) -> Clients:  # fmt: skip
    """The run's clients from base_session's answer, as ROLE_ARN if set (session named by
    label), paced to EC2's documented buckets or to EC2_API_LIMITS' raised ones."""
    if role_arn:
        session = assume_role(session, role_arn, session_name(*label), client_config)
    return Clients(session, client_config, limits)


def base_session(profile: str | None, region: str | None) -> tuple[boto3.Session, Config]:
    """The session for PROFILE and REGION, and a client Config with botocore's retries."""
    try:
        core = botocore.session.Session(profile=profile)
        # AWS_REGION is what other SDKs and the AWS CLI read; botocore reads AWS_DEFAULT_REGION.
        region = region or os.environ.get("AWS_REGION") or None
        session = boto3.Session(botocore_session=core, region_name=region)
    except ProfileNotFound as err:  # say where the name came from: it may not be the config
        where = "PROFILE (or --profile)" if profile else "AWS_PROFILE"
        raise ConfigError(f"{where}: {err}") from None
    if not session.region_name:
        raise ConfigError(
            "REGION is None, and none of AWS_REGION, AWS_DEFAULT_REGION or the profile sets one"
        )
    check_region(session)
    attempts = core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS
    # botocore's standard retries, unless AWS_RETRY_MODE (or retry_mode in the profile)
    # asks for adaptive; its default, legacy, is not taken (bench/throttled.py compares).
    adaptive = core.get_config_variable("retry_mode") == "adaptive"
    config = Config(
        retries={"mode": "adaptive" if adaptive else "standard",
                 "total_max_attempts": int(attempts)},
        user_agent_extra=TOOL, connect_timeout=CONNECT_TIMEOUT_SECONDS,
    )  # fmt: skip
    return session, config


def check_region(session: boto3.Session) -> None:
    """A region botocore knows of (for EC2, in any partition), or a config error with the
    nearest one: a typo'd region otherwise costs a minute of silent connection retries.
    A custom endpoint (AWS_ENDPOINT_URL) may serve any name."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_EC2"):
        return
    known = {r for partition in session.get_available_partitions()
             for r in session.get_available_regions("ec2", partition)}  # fmt: skip
    region = str(session.region_name)
    if known and region not in known:
        close = difflib.get_close_matches(region, sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"region {region!r} is not an EC2 region this botocore knows{hint}")


def session_name(*parts: str) -> str:
    """A RoleSessionName that shows in CloudTrail who acted: the tool and what it ran."""
    return SESSION_NAME_BAD_CHARS.sub("-", "-".join((TOOL, *parts)))[:64]


def assume_role(
    session: boto3.Session, role_arn: str, name: str, client_config: Config
) -> boto3.Session:
    """A session acting as role_arn, its credentials renewed before they expire.

    The first AssumeRole happens here, so a role that cannot be assumed fails the
    run before any EC2 call; a run longer than the role's hour renews on its own.
    """
    sts = session.client("sts", config=client_config)

    def fetch() -> dict[str, str]:
        response = sts.assume_role(RoleArn=role_arn, RoleSessionName=name)
        credentials = response["Credentials"]
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }

    try:
        metadata = fetch()
    except AWS_ERRORS as err:
        raise RoleError(f"could not assume ROLE_ARN {role_arn}: {error_text(err)}") from None
    credentials = RefreshableCredentials.create_from_metadata(metadata, fetch, "sts-assume-role")
    core = botocore.session.Session()
    # botocore has no public setter for refreshable credentials
    core._credentials = credentials  # type: ignore[attr-defined]
    return boto3.Session(botocore_session=core, region_name=session.region_name)


class RoleError(Exception):
    """ROLE_ARN could not be assumed; nothing was done."""


class Pacer:
    """A client-side copy of one EC2 request token bucket.

    EC2 refuses a call that finds its bucket empty, and botocore then backs
    off and spends its retry quota. Waiting for a token here instead keeps a
    large run at the bucket's pace with nothing refused. The bucket is the
    account's, shared with whatever else runs in it: when EC2 refuses a call
    all the same, the pacer slows down, and speeds up again as calls go through.
    """

    def __init__(self, size: int, rate: float) -> None:
        self.size, self.documented = size - PACER_SLACK, rate
        self.rate = rate
        self.tokens, self.stamp = float(self.size), time.monotonic()
        self.lock = threading.Lock()

    def wait(self, **_: Any) -> None:
        """Block until a token is free, then spend it."""
        self.spend(1)

    def spend(self, tokens: int) -> None:
        """Block until tokens are free, then spend them."""
        with self.lock:
            now = time.monotonic()
            elapsed = now - self.stamp
            self.tokens = min(self.size, self.tokens + elapsed * self.rate) - tokens
            self.rate = min(self.documented,
                            self.rate + elapsed * self.documented * ADAPTIVE_RECOVERY)  # fmt: skip
            self.stamp = now
            delay = max(0.0, -self.tokens / self.rate)
        time.sleep(delay)

    def throttled(self, response: Any = None, **_: Any) -> None:
        """A needs-retry handler: when EC2 refused this API's call for its bucket, halve the
        rate and empty the copy, as EC2's is. It never decides the retry itself."""
        if not response:
            return
        parsed = response[1]
        if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") in THROTTLING_CODES:
            with self.lock:
                self.rate = max(self.documented * ADAPTIVE_FLOOR, self.rate / 2)
                self.tokens = min(self.tokens, 0.0)

    def wait_for_instances(self, params: dict | None = None, **_: Any) -> None:
        """A resource bucket: one token per instance the call launches, starts or stops."""
        body = (params or {}).get("body", {})
        count = int(body.get("MaxCount", 0)) or len(
            [k for k in body if k.startswith("InstanceId.")]) or 1  # fmt: skip
        self.spend(count)


def no_capacity_retries(response: Any = None, **_: Any) -> None:
    """Keep botocore's retries off a capacity error (CAPACITY_ERRORS): called before its
    retry handler, it shows the answer as the client error it is (HTTP 400 instead of
    500), which botocore does not retry; the error raised keeps its code and message."""
    if not response:
        return
    http, parsed = response
    if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") in CAPACITY_ERRORS:
        http.status_code = 400


def few_connection_retries(
    caught_exception: Exception | None = None, attempts: int = 0, **_: Any
) -> None:
    """An endpoint that cannot be reached is retried CONNECTION_ATTEMPTS times, saying so,
    not the ten of the standard retries, each waiting for a connect timeout: then the
    error ends the call (raised here, before botocore's retry handler can retry it)."""
    if not isinstance(caught_exception, (EndpointConnectionError, ConnectTimeoutError)):
        return
    if attempts >= CONNECTION_ATTEMPTS:
        raise caught_exception
    log.warning("cannot reach AWS (%s): retrying (%d/%d)", caught_exception, attempts + 1,
                CONNECTION_ATTEMPTS)  # fmt: skip


def pace(client: Any, service: str = "ec2", limits: Mapping | None = None) -> None:
    """Make an EC2 or EBS client wait for a token of each call's own bucket before each
    paced call (and of its resource bucket, for a call that launches, starts or stops);
    limits (EC2_API_LIMITS) raises an API's request bucket for an account whose limit AWS
    has raised."""
    limits = limits or {}
    if service != "ec2":
        for operation, (size, rate) in DIRECT_PACED_CALLS.items():
            pacer = Pacer(size, rate)
            client.meta.events.register(f"before-call.{service}.{operation}", pacer.wait)
            client.meta.events.register(f"needs-retry.{service}.{operation}", pacer.throttled)
        return
    for operation in PACED_CALLS:
        event = f"before-call.ec2.{operation}"
        size, rate = limits.get(operation) or request_bucket(operation)
        pacer = Pacer(size, rate)
        client.meta.events.register(event, pacer.wait)
        client.meta.events.register(f"needs-retry.ec2.{operation}", pacer.throttled)
        if operation in RESOURCE_BUCKETS:
            resources = Pacer(*RESOURCE_BUCKETS[operation])
            client.meta.events.register(event, resources.wait_for_instances)


def paginate(ec2: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict]:
    """Yield every item under key from every page of a describe call."""
    for page in ec2.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def error_text(err: Exception) -> str:
    """A one-line description of an AWS error, with its code, and what to do where the
    error alone does not say (no credentials, no connection)."""
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    hint = next((h for kind, h in ERROR_HINTS if isinstance(err, kind)), "")
    return f"{type(err).__name__}: {err}{hint}"


ERROR_HINTS = (
    (NoCredentialsError, "; set AWS_PROFILE (or PROFILE), run `aws configure`, or give the "
                         "host an instance role"),
    (EndpointConnectionError, "; check the network, a proxy (HTTPS_PROXY) and the region's "
                              "endpoint (AWS_ENDPOINT_URL, if set)"),
    (ConnectTimeoutError, "; check the network, a proxy (HTTPS_PROXY) and the region"),
)  # fmt: skip


def chunked(values: list[str], size: int = FILTER_VALUES_MAX) -> Iterator[list[str]]:
    """Split values into filter-sized lists."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
