"""Read-only HTTP server for one BioEngine dataset (``python -m bioengine_operator.dataserver``).

The operator runs one pod per dataset. The pod serves the dataset's directory as plain files
with HTTP Range support, which is all a zarr/fsspec client needs to read chunks lazily, so no
dataset is ever copied to the caller in full.

Access is checked with signed tokens rather than by asking Hypha on every request: a zarr read
issues thousands of chunk requests, and the server should not need Hypha credentials or a
network path to it. The Hypha bridge authenticates the user and mints a short-lived token
naming that user and this dataset, signed with a private key only the bridge holds; this
server checks it with the matching public key, so it holds no secret.
The token proves *who* is asking; *whether* they may read stays with the dataset manifest's
list of authorized users.
"""
