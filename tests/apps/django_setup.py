"""The settings every test Django project shares: no database, no apps, no middleware;
each project module passes itself as the URLconf."""

from __future__ import annotations

import django
from django.conf import settings


def configure(urlconf: str) -> None:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tapster-tests-only",
        ROOT_URLCONF=urlconf,
        ALLOWED_HOSTS=["*"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()
