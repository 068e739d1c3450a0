"""Stand-in for SGLang 0.5.23 (tests only): ``python -m sglang.launch_server`` with exactly SGLang's flags, served by
the simulated GPU. On PYTHONPATH in the tests that launch SGLang server jobs."""
