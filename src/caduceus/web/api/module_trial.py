"""A module's test run: a small generated series, made into a task for this module alone.

The receiver stores the series as it stores received ones, under a recorded association of
its own (peer "module test"), so the history says where the images came from. In the same
transaction the router marks it complete and makes the task exactly as it makes every task,
for a rule named "module test: NAME" that names no configured rule: the router never applies
the real rules to the series, the processor runs the task like any other, its logs and
results appear where every task's do, and nothing is sent anywhere afterwards.
"""

from __future__ import annotations

from pydicom.uid import generate_uid
from sqlalchemy import Engine

from caduceus.core.config import store
from caduceus.core.dicom.synthetic import SeriesSpec, generate
from caduceus.core.storage import DataRoot
from caduceus.receiver.interface import store_series
from caduceus.router.interface import make_trial_task

PEER = "module test"
INSTANCES = 3


def rule_name_for(module: str) -> str:
    return f"module test: {module}"


def start_trial(engine: Engine, root: DataRoot, module: str, ae_title: str) -> str:
    """Queue a test run of `module`; returns the task's id."""
    config = store.current_or_default(engine)
    spec = SeriesSpec(
        count=INSTANCES,
        rows=32,
        columns=32,
        patient_id="MODULE-TEST",
        patient_name="Module^Test",
        study_description="caduceus module test",
        series_description=rule_name_for(module),
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        accession_number="",
    )
    return store_series(
        engine,
        root,
        generate(spec),
        ae_title=ae_title,
        peer=PEER,
        reason=f"a generated series for a test run of module {module!r}",
        failure="the test run could not be queued",
        then=lambda conn, series: make_trial_task(
            conn,
            root,
            config,
            module=module,
            rule_name=rule_name_for(module),
            instances=series.instances,
            header=series.header,
            sender=PEER,
        ),
    )
