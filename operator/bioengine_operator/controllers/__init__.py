"""Reconcilers: read state, call builders, apply children, compute status."""
