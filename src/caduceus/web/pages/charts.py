"""Bar charts as geometry for inline SVG, drawn on the server (templates/_chart.html).

No script and no library: the template writes rectangles and lines from these numbers, and a
table with the same counts for anyone who does not see the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

WIDTH = 720
HEIGHT = 190
LEFT, RIGHT, TOP, BOTTOM = 46, 8, 10, 24


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    start: datetime
    end: datetime
    count: int


@dataclass(frozen=True)
class Tick:
    at: float  # x for the time axis, y for the count axis
    label: str


@dataclass(frozen=True)
class BarChart:
    key: str  # unique on the page: ids of the title and description
    title: str
    description: str
    unit: str
    width: int
    height: int
    left: int
    top: int
    bottom: float  # y of the time axis
    right: float  # x of the plot's right edge
    bars: list[Bar]
    time_ticks: list[Tick]
    count_ticks: list[Tick]
    total: int
    peak: int


def nice_ceiling(value: int) -> int:
    """The axis' top: 1, 2 or 5 times a power of ten, at least the value (and at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for factor in (1, 2, 5, 10):
        if factor * power >= value:
            return factor * power
    return 10 * power


def _time_step(span: timedelta) -> timedelta:
    hours = span.total_seconds() / 3600
    return timedelta(hours=1 if hours <= 8 else 2 if hours <= 12 else 4)


def bar_chart(
    key: str,
    title: str,
    unit: str,
    starts: list[datetime],
    counts: list[int],
    bucket: timedelta,
    zone: tzinfo = UTC,
    zone_name: str = "UTC",
) -> BarChart:
    """The geometry of one bar chart, ready for the template to draw as SVG: a bar per
    bucket, time ticks on whole hours, count ticks on round numbers, and a sentence that
    says the same for a screen reader. Drawn on the server, so the page needs no script.
    Times are shown in `zone` (the web's configured zone); ticks fall on its whole hours."""
    starts = [start.astimezone(zone) for start in starts]
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_height
    top_value = nice_ceiling(max(counts, default=0))
    slot = plot_width / max(1, len(counts))
    gap = min(2.0, slot * 0.2)
    bars = []
    for n, (start, count) in enumerate(zip(starts, counts, strict=True)):
        height = plot_height * count / top_value
        bars.append(
            Bar(
                x=round(LEFT + n * slot + gap / 2, 2),
                y=round(bottom - height, 2),
                width=round(slot - gap, 2),
                height=round(height, 2),
                start=start,
                end=start + bucket,
                count=count,
            )
        )
    time_ticks = []
    if starts:
        first, span = starts[0], bucket * len(starts)
        step = _time_step(span)
        # Ticks on whole hours of the shown zone inside the window. Stepped in UTC (a zone
        # may be half an hour off UTC, and wall-clock hours repeat or skip at DST changes).
        hour = timedelta(hours=1)
        every = int(step.total_seconds() // 3600)
        tick = first.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        while tick < first or tick.astimezone(zone).minute:
            tick += timedelta(minutes=15)  # zones are whole quarter hours off UTC
        end = first + span
        while tick <= end:
            shown = tick.astimezone(zone)
            if shown.minute == 0 and shown.hour % every == 0:
                x = LEFT + plot_width * ((tick - first) / span)
                time_ticks.append(Tick(round(x, 2), shown.strftime("%H:%M")))
            tick += hour
    count_ticks = [
        Tick(round(bottom - plot_height * part, 2), f"{round(top_value * part):,}")
        for part in (0.0, 0.5, 1.0)
        if part == 0.0 or top_value * part == int(top_value * part)
    ]
    total = sum(counts)
    peak = max(counts, default=0)
    minutes = int(bucket.total_seconds() // 60)
    description = (
        f"{unit.capitalize()} per {minutes} minutes from {starts[0]:%Y-%m-%d %H:%M} to "
        f"{starts[-1] + bucket:%H:%M} {zone_name}: {total:,} in all, at most {peak:,} in one "
        "interval."
        if starts
        else "No data."
    )
    return BarChart(
        key=key,
        title=title,
        description=description,
        unit=unit,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        top=TOP,
        bottom=bottom,
        right=WIDTH - RIGHT,
        bars=bars,
        time_ticks=time_ticks,
        count_ticks=count_ticks,
        total=total,
        peak=peak,
    )
