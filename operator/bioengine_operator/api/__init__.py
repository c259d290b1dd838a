"""Typed spec and status models of the three kinds; the CRDs are generated from them."""
