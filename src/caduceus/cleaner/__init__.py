"""The cleaner: frees the disk and keeps the history from growing without end.

It owns what happens to finished work: task folders and settled received files after their
retention, delivered work early under disk pressure (`cleaning`), refused instances in
quarantine (`quarantine`), and the history's own rows after `history_retention_days`
(`history`). It never touches work still waiting, running or being sent.
"""
