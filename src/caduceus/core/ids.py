"""Row ids as they arrive from outside (a URL's path or query): bounded integers.

SQLite and PostgreSQL keep ids in signed 64-bit integers; a larger number sent in a URL
reached the driver and failed there (OverflowError, HTTP 500). Declared with this type, FastAPI
answers 422 (or a page's 404) before any query runs.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Interval

MAX_ROW_ID = 2**63 - 1

RowId = Annotated[int, Interval(ge=1, le=MAX_ROW_ID)]
"""A row id (a series, study, user, token, configuration version...) in a path or query."""
