"""The router: decides when a series, a study or a patient is complete and turns each rule
that matches it into a task.

It owns the groups' completion state (series, studies and patient groups: receiving, complete,
error) and the making of tasks; it hands work on only by the rows it writes. `completion`
holds the pass and `levels` what differs between the three levels; `taskmaker` makes one
task; `rules` evaluates the rules on a group's tags; `exclusive` keeps two routers off the
same group; `service` runs the passes; `interface` is all that others may ask of it.
"""
