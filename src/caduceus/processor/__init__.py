"""The processor: runs the modules of the tasks that have any, one step after another.

It owns a task from the moment it claims it (queued, with modules to run) until it hands it
on: to the dispatcher (dispatching), or finished (done, discarded, error). `pipeline` runs
one task's steps and records each; `runners` start a module in a container, a Kubernetes Job
or a local sandbox; `service` claims tasks and keeps their leases.
"""
