"""Stand-ins for external programs (nvidia-smi, ...) used by the tests."""
