"""The local control plane used by the tests, `make cluster-up` and the demo (development only)."""
