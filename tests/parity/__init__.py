"""The side-by-side harness behind tests/test_parity.py: real Waitress 3.0.2 and
Tapster, each in its own process, serving the same app (tests/apps/parity_app.py) with
the same options; the same raw bytes are sent to both, and what the client got (and
what the app saw) is reduced to a comparable view.

Differences are allowed only where README.md's "Differences from Waitress" table
documents them. Each one is a `Normalisation` that names its README row (the exact
text of the row's Waitress column, checked against README.md by a test) and turns what
Waitress did into what Tapster is documented to do instead (and only when Waitress did
what the row's Waitress column says). Everything else must be equal. A few things that
can never be equal between two processes (the Date, the ports, the type names of
wsgi.* objects) are HARNESS exclusions, listed separately; they are not differences in
behaviour.

By concern:
- servers.py: Waitress and Tapster started side by side with the same app and
  options (`ServerPair`), one pair at a time (`PairPool`);
- scripts.py: raw requests, client scripts of steps, and running a script against
  each server into an `Outcome`;
- views.py: what is compared of an outcome (`View`), what each request asked
  (`RequestInfo`), and the harness exclusions;
- normalisations.py: the README rows as code, `ALL_NORMALISATIONS`, `NOT_COMPARED`;
- compare.py: normalising both views, diffing them, and reporting what is left.

tests/parity_support.py gathers what the tests use as `ps.NAME`.
"""
