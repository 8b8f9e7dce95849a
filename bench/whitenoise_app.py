"""The tapster+whitenoise row of the static-* scenarios: the hello app wrapped in
WhiteNoise, which serves the harness's static directory under /static/ itself (in
Python, handing each file to the server's wsgi.file_wrapper) and passes every other
request to hello."""

from __future__ import annotations

import os

from whitenoise import WhiteNoise

import apps

STATIC = os.path.join(apps.FILES_DIR, "static")

# WhiteNoise indexes the directory once, here (autorefresh is off): the harness makes
# the files before it starts the server.
application = WhiteNoise(apps.hello, root=STATIC, prefix="static/")
