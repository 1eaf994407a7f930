"""The tags of a received series, read once for the router, the rule test, the series page
and `caduceus rules test`: the header of the series' newest stored instance."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from caduceus.core.db.models import INSTANCES, SERIES
from caduceus.core.dicom.series_tags import (
    SeriesNotStored,
    UnreadableSeries,
    series_tags,
    stored_tags,
)
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.storage import DataRoot
from tests.support.processes import Caduceus, storescu


def test_a_series_tags_are_its_newest_instances_and_each_failure_is_told_apart(
    receiver: Caduceus, tmp_path: Path
) -> None:
    write_series(tmp_path / "ct", SeriesSpec(count=2, modality="CT", study_description="HEAD"))
    sent = storescu(receiver, tmp_path / "ct")
    assert sent.returncode == 0, sent.stderr
    engine, root = receiver.engine(), DataRoot(receiver.home)
    with engine.connect() as conn:
        series = conn.execute(select(SERIES.c.id, SERIES.c.series_uid)).one()
        newest = conn.execute(
            select(INSTANCES.c.path)
            .where(INSTANCES.c.series_id == series.id)
            .order_by(INSTANCES.c.id.desc())
            .limit(1)
        ).scalar_one()

    tags = series_tags(engine, root, series_id=series.id)
    assert tags is not None
    assert tags["Modality"] == "CT" and tags["StudyDescription"] == "HEAD"
    assert tags == stored_tags(root, newest)
    assert series_tags(engine, root, series_uid=series.series_uid) == tags

    # Nothing recorded is no answer, not an error: each caller words that its own way.
    assert series_tags(engine, root, series_id=series.id + 1000) is None
    assert series_tags(engine, root, series_uid="1.2.3.4") is None
    with pytest.raises(TypeError):
        series_tags(engine, root)

    with pytest.raises(UnreadableSeries):
        stored_tags(root, "../outside.dcm")  # a recorded path never leads out of the data root
    (root.home / newest).write_bytes(b"not DICOM")
    with pytest.raises(UnreadableSeries) as damaged:
        series_tags(engine, root, series_id=series.id)
    assert not isinstance(damaged.value, SeriesNotStored)
    (root.home / newest).unlink()
    with pytest.raises(SeriesNotStored):
        series_tags(engine, root, series_uid=series.series_uid)
