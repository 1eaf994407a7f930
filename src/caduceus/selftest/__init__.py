"""The self-test: a generated series through the own receiver, router and dispatcher to a
temporary folder target, each stage checked and timed. The web interface runs it in a
thread; run_selftest runs it in the caller's."""

from caduceus.selftest.progress import STAGES, Run, Stage
from caduceus.selftest.runner import SelfTest, new_run, run_selftest

__all__ = ["STAGES", "Run", "SelfTest", "Stage", "new_run", "run_selftest"]
