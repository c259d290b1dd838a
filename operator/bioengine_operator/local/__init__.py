"""One machine, no Kubernetes: ``bioengine up`` runs the same resources as local processes."""
