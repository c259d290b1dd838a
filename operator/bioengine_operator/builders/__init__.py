"""Pure functions from typed specs to the Kubernetes manifests the operator applies."""
