"""What tests and benchmarks build on: local process groups, fault injection, a trainer without Ray."""
