"""Retention planning is pure: property tests pin down what it may and may not delete."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ec2ami.backup.plan import Image, Prune, due, plan_prune
from ec2ami.facts import AVAILABLE, FAILED, PENDING

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def image(n: int, state: str = AVAILABLE, age_days: float = 0.0) -> Image:
    return Image(f"ami-{n:08x}", f"img-{n}", state, NOW - timedelta(days=age_days), "web", "daily")


images_strategy = st.lists(
    st.builds(
        image,
        n=st.integers(0, 10**6),
        state=st.sampled_from([AVAILABLE, AVAILABLE, PENDING, FAILED]),
        age_days=st.floats(0, 400, allow_nan=False),
    ),
    max_size=30,
    unique_by=lambda i: i.image_id,
)
keep_strategy = st.integers(1, 10)
max_age_strategy = st.none() | st.floats(0.5, 365, allow_nan=False)


def available_newest_first(images: list[Image]) -> list[Image]:
    ready = [i for i in images if i.state == AVAILABLE]
    return sorted(ready, key=lambda i: (i.created, i.image_id), reverse=True)


@given(images_strategy, keep_strategy, max_age_strategy)
def test_pending_images_are_never_deleted(images, keep, max_age):
    doomed = {i.image_id for i, _ in plan_prune(images, keep, max_age, NOW)}
    assert not doomed & {i.image_id for i in images if i.state == PENDING}


@given(images_strategy, keep_strategy, max_age_strategy)
def test_failed_images_are_always_deleted(images, keep, max_age):
    doomed = {i.image_id for i, _ in plan_prune(images, keep, max_age, NOW)}
    assert {i.image_id for i in images if i.state == FAILED} <= doomed


@given(images_strategy, keep_strategy)
def test_without_an_age_limit_exactly_the_newest_keep_available_images_stay(images, keep):
    doomed = {i.image_id for i, _ in plan_prune(images, keep, None, NOW)}
    ready = available_newest_first(images)
    assert [i for i in ready if i.image_id not in doomed] == ready[:keep]


@given(images_strategy, keep_strategy, max_age_strategy)
def test_the_newest_available_image_survives_any_age(images, keep, max_age):
    doomed = {i.image_id for i, _ in plan_prune(images, keep, max_age, NOW)}
    ready = available_newest_first(images)
    if ready:
        assert ready[0].image_id not in doomed


@given(images_strategy, keep_strategy, max_age_strategy)
def test_only_given_images_are_planned_and_each_once(images, keep, max_age):
    plan = plan_prune(images, keep, max_age, NOW)
    ids = [i.image_id for i, _ in plan]
    assert len(ids) == len(set(ids))
    assert set(ids) <= {i.image_id for i in images}


def test_age_limit_deletes_old_images_within_keep_with_a_reason():
    images = [image(1, age_days=1), image(2, age_days=10), image(3, age_days=40)]
    plan = plan_prune(images, keep=7, max_age_days=30, now=NOW)
    assert [(i.image_id, reason) for i, reason in plan] == [
        ("ami-00000003", "older than MAX_AGE_DAYS=30")
    ]


def test_only_old_image_is_kept_even_past_the_age_limit():
    assert plan_prune([image(1, age_days=90)], keep=3, max_age_days=30, now=NOW) == []


def test_keep_counts_only_available_images():
    images = [image(1, PENDING, 0), image(2, AVAILABLE, 1), image(3, AVAILABLE, 2)]
    plan = plan_prune(images, keep=1, max_age_days=None, now=NOW)
    assert [(i.image_id, r) for i, r in plan] == [("ami-00000003", "beyond KEEP=1")]


@given(images_strategy, keep_strategy, max_age_strategy)
def test_a_server_whose_backup_failed_loses_only_its_failed_images(images, keep, max_age):
    """The plan decides retention once; the run's one fact, verified or not, picks from it."""
    doomed = plan_prune(images, keep, max_age, NOW)
    planned = [Prune(i, reason, once_verified=i.state != FAILED) for i, reason in doomed]
    unverified = {p.image.image_id for p in due(planned, verified=False)}
    assert unverified == {i.image_id for i in images if i.state == FAILED}
    assert {p.image.image_id for p in due(planned, verified=True)} == {
        i.image_id for i, _ in doomed
    }
