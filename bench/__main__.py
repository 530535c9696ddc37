"""`python -m bench` runs the transport benchmark (see bench/README.md for the others)."""

from bench.transport import main

main()
