"""The dispatcher: sends each task's files to its targets, each target tracked on its own.

It owns the tasks to send (route-only tasks the router queued, processed tasks in
dispatching) and their per-target rows, until every target is done or has failed for good.
`dispatch` sends one task with retries and backoff; `queue` says which tasks are its to
claim; `targets` holds one plug-in per kind of destination; `service` claims and runs;
`interface` is all that others may ask of it.
"""
