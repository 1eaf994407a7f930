"""The services that `caduceus run` starts, each as `caduceus <name>` in its own process."""

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
