"""The kestrel-raw benchmark harness: ``python3 bench/run.py [--quick]`` (see bench/README.md)."""
