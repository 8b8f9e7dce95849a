"""A module whose `app` is not a WSGI application (not callable)."""

app = "not an application"
