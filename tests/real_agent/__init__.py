"""What the real-agent suites (``tests/opencode``, ``tests/claude``) and their benchmarks share:
the deterministic fake model's script and HTTP server, and the test-world helpers."""
