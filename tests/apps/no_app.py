"""A module with neither `application` nor `app`."""

handler = None
