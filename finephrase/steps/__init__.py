"""finephrase's datatrove pipeline steps, one per module."""
