"""BioEngineDataset: a directory of files and zarr stores, served read-only over HTTP.

The manifest mirrors the BioEngine dataset manifest; the operator hands it to the dataset
server, which enforces ``authorizedUsers`` through signed tokens minted by the bridge.
"""

from __future__ import annotations

from pydantic import Field

from bioengine_operator.api.base import (
    IMAGE,
    Model,
    OneOf,
    Placement,
    SecretRef,
    ServiceSpec,
    object_name,
    sub_path,
)

PUBLIC = "*"
# The dataset server's Service is "<name>-dataset", and a Service name has at most 63 characters.
DATASET_NAME_MAX = 63 - len("-dataset")


class PvcSource(Model):
    claim_name: str = object_name("PersistentVolumeClaim holding the dataset.")
    sub_path: str = sub_path("volume")


class HostPathSource(Model):
    path: str = Field(pattern=r"^/", description="Absolute directory on the node.")


class S3Source(Model):
    uri: str = Field(pattern=r"^s3://\S+$", description="s3://bucket/prefix of the dataset.")
    secret_ref: SecretRef | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )
    endpoint: str | None = Field(
        None, pattern=r"^https?://\S+$", description="S3-compatible endpoint URL."
    )


class DatasetSource(OneOf):
    one_of = ("pvc", "host_path", "s3")

    pvc: PvcSource | None = Field(None, description="Files on a PersistentVolumeClaim.")
    host_path: HostPathSource | None = Field(
        None, description="Files on the node's filesystem (single-node or shared-mount clusters)."
    )
    s3: S3Source | None = Field(None, description="Files in S3 or an S3-compatible store.")


class DatasetFile(Model):
    path: str = Field(description="Path of the file or zarr store inside the dataset.")
    description: str = Field("", description="What the file holds.")
    version: str | None = Field(None, description="Version of the file.")


class DatasetManifest(Model):
    id: str | None = Field(None, description="Dataset id; defaults to the resource's name.")
    name: str = Field(description="Human-readable dataset name.")
    description: str = Field("", description="What the dataset holds.")
    files: list[DatasetFile] = Field(
        default_factory=list, description="Described files (others are served too)."
    )
    authorized_users: list[str] = Field(
        default_factory=list,
        description='Users allowed to read the dataset; "*" allows everyone; empty allows '
        "nobody but apps that mount it.",
    )
    license: str | None = Field(None, description="License of the data, e.g. CC-BY-4.0.")
    tags: list[str] = Field(default_factory=list, description="Search tags.")

    def allows(self, user: str | None) -> bool:
        """Whether ``user`` (None: no token) may read; ``"*"`` opens the dataset to everyone."""
        if PUBLIC in self.authorized_users:
            return True
        return user is not None and user in self.authorized_users


class BioEngineDatasetSpec(Placement):
    source: DatasetSource = Field(description="Where the files are.")
    manifest: DatasetManifest = Field(description="Dataset metadata and access list.")
    replicas: int = Field(1, ge=1, le=8, description="Dataset server pods.")
    image: str | None = Field(
        None,
        pattern=IMAGE,
        description="Dataset server image; defaults to the operator's own image.",
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec, description="Hypha service registration."
    )
