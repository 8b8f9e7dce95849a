"""An application module whose import raises: for the crash-loop tests."""

raise RuntimeError("this app cannot be imported")
