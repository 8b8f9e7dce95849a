"""`python -m tapster`: the same command line as the `tapster` script."""

from tapster.runner import main

main()
