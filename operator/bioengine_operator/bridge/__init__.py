"""The Hypha bridge: every ready BioEngineApp, ModelRunner and BioEngineDataset becomes a
Hypha service that clients find with ``get_service("<workspace>/<id>")``.

The bridge watches the three kinds read-only, keeps the set of registered services equal
to the set of ready resources, and forwards calls to the backends inside the cluster
(:mod:`.backends`). Access is checked twice: Hypha enforces the service's visibility, and
the bridge checks the caller Hypha vouches for against ``authorizedUsers`` (:mod:`.access`).
"""
