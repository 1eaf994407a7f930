"""Rules that mean what they mean in mercure: "Force discard" stops every other rule for the
series, at series level and for the study it belongs to; fallback rules only when nothing
else matches; the per-rule action when a study is forced complete without its series.

Real series arrive through a real receiver (DCMTK's storescu); the router's passes run with an
explicit clock (tests/support/clock.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from caduceus.core.db.models import TASK_INSTANCES
from tests.support.clock import later
from tests.support.processes import Caduceus
from tests.support.routing import config, router_for
from tests.support.rows import events, tasks
from tests.support.sending import send

# A site's scouts: discarded, whatever else matches them. The route rule comes first, as it
# does in many mercure configurations; the discard still wins.
RULES = {
    "ct_to_pacs": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
    "no_scouts": {"rule": "'SCOUT' in @SeriesDescription@", "action": "discard"},
}


def instances_of(receiver: Caduceus, task_id: str) -> int:
    with receiver.engine().connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(TASK_INSTANCES)
                .where(TASK_INSTANCES.c.task_id == task_id)
            ).scalar_one()
        )


def test_a_discard_rule_stops_the_route_rule(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "scout", count=2, modality="CT", series_description="SCOUT 3P")
    send(receiver, tmp_path / "axial", count=3, modality="CT", series_description="AX 1mm")
    router_for(receiver).run_pass(config(RULES), later(61))
    assert len(tasks(receiver)) == 2  # the scout is not routed as well
    by_rule = {t["rule"]: t for t in tasks(receiver)}
    assert set(by_rule) == {"no_scouts", "ct_to_pacs"}
    discarded, routed = by_rule["no_scouts"], by_rule["ct_to_pacs"]
    assert (discarded["action"], discarded["state"], discarded["targets"]) == (
        "discard",
        "discarded",
        [],
    )
    assert instances_of(receiver, discarded["id"]) == 2  # the scout, not sent anywhere
    assert routed["state"] == "queued" and instances_of(receiver, routed["id"]) == 3
    [event] = events(receiver, "series.discarded")
    assert event["message"] == "discarded by rule 'no_scouts'; no other rule is applied"


def test_a_discarded_series_never_joins_its_study(receiver: Caduceus, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.4242"
    send(receiver, tmp_path / "s", count=2, study_uid=study, series_description="SCOUT")
    send(receiver, tmp_path / "a", count=3, study_uid=study, series_description="AX")
    rules = {
        "study_to_pacs": {"rule": "True", "trigger": "study", "targets": ["pacs"]},
        # A study-level discard rule discards the series it matches, as mercure does.
        "no_scouts": {
            "rule": "'SCOUT' in @SeriesDescription@",
            "action": "discard",
            "trigger": "study",
        },
    }
    router = router_for(receiver)
    cfg = config(rules, study_complete_trigger=900)
    router.run_pass(cfg, later(61))
    router.run_pass(cfg, later(901))
    by_rule = {t["rule"]: t for t in tasks(receiver)}
    assert by_rule["no_scouts"]["level"] == "series"
    assert by_rule["no_scouts"]["state"] == "discarded"
    assert by_rule["study_to_pacs"]["level"] == "study"
    assert instances_of(receiver, by_rule["study_to_pacs"]["id"]) == 3  # no scout images


def test_fallback_rules_only_when_nothing_else_matches(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "ct", count=1, modality="CT", series_description="AX")
    send(receiver, tmp_path / "mr", count=1, modality="MR", series_description="T1")
    rules = {
        "ct_to_pacs": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
        "rest": {"rule": "True", "targets": ["archive"], "fallback": True},
    }
    router_for(receiver).run_pass(config(rules), later(61))
    assert sorted(t["rule"] for t in tasks(receiver)) == ["ct_to_pacs", "rest"]
    [fallback] = [t for t in tasks(receiver) if t["rule"] == "rest"]
    assert fallback["targets"] == ["archive"]


def test_a_fallback_discard_rule_discards_what_nothing_else_takes(
    receiver: Caduceus, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "mr", count=1, modality="MR")
    rules = {
        "ct_to_pacs": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
        "drop_rest": {"rule": "True", "action": "discard", "fallback": True},
    }
    router_for(receiver).run_pass(config(rules), later(61))
    [task] = tasks(receiver)
    assert (task["rule"], task["state"]) == ("drop_rest", "discarded")
    [event] = events(receiver, "series.discarded")
    assert event["message"] == "discarded by rule 'drop_rest' (fallback)"


def test_a_notification_only_rule_makes_a_task_without_targets(
    receiver: Caduceus, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "ct", count=1, modality="CT")
    rules = {"tell": {"rule": "True", "action": "notification"}}
    router_for(receiver).run_pass(config(rules), later(61))
    [task] = tasks(receiver)
    assert (task["action"], task["targets"], task["modules"]) == ("notification", [], [])


@pytest.mark.parametrize(
    "per_rule,expect_task", [("proceed", True), ("discard", False), (None, False)]
)
def test_the_rules_own_force_completion_action(
    receiver: Caduceus, tmp_path: Path, per_rule: str | None, expect_task: bool
) -> None:
    """The rule's study_force_completion_action wins over the global setting; without one,
    the global setting (here discard) applies."""
    study = "1.2.826.0.1.3680043.8.498.4343"
    send(receiver, tmp_path / "a", count=1, modality="MR", study_uid=study, series_description="T1")
    brain = {
        "rule": "True",
        "trigger": "study",
        "targets": ["archive"],
        "study_trigger_condition": "received_series",
        "required_series": "'T1' and 'T2'",
    }
    if per_rule:
        brain["study_force_completion_action"] = per_rule
    cfg = config(
        {"brain": brain},
        study_complete_trigger=100000,
        study_forcecomplete_trigger=3600,
        study_forcecomplete_action="discard",
    )
    router = router_for(receiver)
    router.run_pass(cfg, later(61))
    router.run_pass(cfg, later(3601))
    assert bool(tasks(receiver)) is expect_task


def test_a_rule_from_mercure_sees_tags_as_text(receiver: Caduceus, tmp_path: Path) -> None:
    """mercure's rules compare the text of a tag (`@SeriesNumber@ == '1'`); the import marks
    its rules tag_values: text so they keep matching, while a typed rule compares numbers."""
    from caduceus.core.config.mercure_import import from_mercure

    document, _ = from_mercure(
        {
            "appliance_name": "site",
            "targets": {"pacs": {"target_type": "dicom", "ip": "10.0.0.5", "port": "104"}},
            "rules": {"first_series": {"rule": "@SeriesNumber@ == '1'", "target": "pacs"}},
        }
    )
    imported = document["rules"]["first_series"]
    assert imported["tag_values"] == "text"
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    rules = {
        "first_series": {"rule": imported["rule"], "targets": ["pacs"], "tag_values": "text"},
        "typed_text": {"rule": "@SeriesNumber@ == '1'", "targets": ["pacs"]},
        "typed_number": {"rule": "@SeriesNumber@ == 1 and 'CT' in @Modality@", "targets": []},
    }
    rules["typed_number"]["action"] = "notification"
    router_for(receiver).run_pass(config(rules), later(61))
    assert sorted(t["rule"] for t in tasks(receiver)) == ["first_series", "typed_number"]


def test_rules_route_by_sender_as_in_mercure(receiver: Caduceus, tmp_path: Path) -> None:
    """SenderAET, SenderAddress and ReceiverAET: what mercure's receiver adds to the tags,
    filled in from the association that brought the series (storescu calls as STORESCU)."""
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    rules = {
        "from_storescu": {
            "rule": "@SenderAET@ == 'STORESCU' and @SenderAddress@ == '127.0.0.1' "
            f"and tags.ReceiverAET == '{receiver.ae_title}'",
            "targets": ["pacs"],
        },
        "from_ct1": {"rule": "@SenderAET@ == 'CT1'", "targets": ["pacs"]},
        "study_from_storescu": {
            "rule": "@SenderAET@ == 'STORESCU'",
            "targets": ["pacs"],
            "trigger": "study",
        },
    }
    router_for(receiver).run_pass(config(rules, study_complete_trigger=1), later(61))
    assert sorted(t["rule"] for t in tasks(receiver)) == ["from_storescu", "study_from_storescu"]


def test_a_discarded_series_does_not_count_as_a_required_series(
    receiver: Caduceus, tmp_path: Path
) -> None:
    """A study rule that requires a series the site discards is not met by the discarded one:
    in mercure the discarded series never reaches the study."""
    study = "1.2.826.0.1.3680043.8.498.4343"
    send(receiver, tmp_path / "s", count=2, study_uid=study, series_description="SCOUT")
    send(receiver, tmp_path / "a", count=3, study_uid=study, series_description="AX")
    rules = {
        "needs_scout": {
            "rule": "True",
            "trigger": "study",
            "targets": ["pacs"],
            "study_trigger_condition": "received_series",
            "required_series": "'SCOUT'",
        },
        "no_scouts": {"rule": "'SCOUT' in @SeriesDescription@", "action": "discard"},
    }
    router = router_for(receiver)
    cfg = config(rules, study_complete_trigger=900)
    router.run_pass(cfg, later(61))
    router.run_pass(cfg, later(901))
    assert sorted(t["rule"] for t in tasks(receiver)) == ["no_scouts"]
    [incomplete] = events(receiver, "study.incomplete")
    assert "required series 'SCOUT' not received" in incomplete["message"]
