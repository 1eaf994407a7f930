"""The notifier: webhook calls and mails on reception, completion and errors of tasks.

`consume` turns events into rows of the notifications table; `deliver` sends the due ones,
with retries; `service` runs both every second.
"""
