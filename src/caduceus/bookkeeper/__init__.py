"""The bookkeeper: reads the shared database to answer what happened and how things stand.

It owns no state of its own: `search` finds series, studies, tasks and events for the web and
the API; `overview` and `throughput` feed the Overview page; `metrics` serves Prometheus. It
only reads: the services write what happens, the bookkeeper reports it.
"""
