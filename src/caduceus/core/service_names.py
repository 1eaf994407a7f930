"""The services that `caduceus run` starts, each as `caduceus <name>` in its own process.

The names are the deployment's vocabulary, used by the supervisor, the health check, the log
files and the web's overview: they live in core so that none of those imports another for them.
"""

from __future__ import annotations

SERVICES: tuple[str, ...] = (
    "receiver",
    "router",
    "processor",
    "dispatcher",
    "cleaner",
    "notifier",
    "web",
)
