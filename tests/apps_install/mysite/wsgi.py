"""A user's application as the README's "Serve your own app" steps serve it:
`tapster mysite.wsgi:application`, run from the directory that holds `mysite/`."""

from flask import Flask

application = Flask(__name__)


@application.get("/")
def index() -> str:
    return "hello from mysite\n"
