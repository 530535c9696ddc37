"""`python -m bench` (= `make bench`): every server under wrk, written to bench/results.md and results.png."""

from bench.run import main

main()
