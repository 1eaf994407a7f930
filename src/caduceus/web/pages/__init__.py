"""The web interface: server-rendered pages over the bookkeeper's API.

Pages only show; every change goes through the JSON API (with its role checks and CSRF
token), called by the small scripts in static/.
"""
