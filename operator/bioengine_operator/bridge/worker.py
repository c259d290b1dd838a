"""The BioEngine worker service of one cluster, backed by the operator's resources.

BioEngine's own clients (its command-line client, notebooks, the dashboard) deploy apps
by calling a Hypha service of type ``bioengine-worker``; this is that service, by the
same function names, keywords and result shapes, with a cluster behind it instead of a
Ray cluster of its own: an upload becomes a ConfigMap (:mod:`.uploads`), a deploy a
BioEngineApp the operator turns into a RayService, a stop its deletion. Status comes from
the BioEngineApp's status; deployments, replicas and their logs from the app's Ray
dashboard (Serve's own view), where the bridge reaches it. The objects live behind
:class:`Objects`: a namespace of the cluster here, the one-machine stack in ``bioengine up``
(:mod:`bioengine_operator.local.worker`), with the same functions in front of both.

Only users on the admin list may upload, deploy, stop or delete; everyone who reaches the
service (the workspace, and the admins' own workspaces) may read status, and logs are
shown to admins and to the users an app names. The worker touches only BioEngineApps and
ConfigMaps it labelled itself, in its one namespace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from bioengine_operator import appfolder, kube
from bioengine_operator.api.base import API_VERSION
from bioengine_operator.api.status import SERVE_STATUS_OF_PHASE
from bioengine_operator.bridge import access, uploads
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.uploads import WorkerError

logger = logging.getLogger(__name__)
SERVICE_TYPE = "bioengine-worker"
DASHBOARD_TIMEOUT = 10.0
LABELS = {uploads.MANAGED_BY: uploads.WORKER}


def service_id(cluster_name: str) -> str:
    """``bioengine-worker-<cluster>``: one worker per cluster in a shared workspace."""
    return f"{SERVICE_TYPE}-{cluster_name}" if cluster_name else SERVICE_TYPE


def serve_status(body: dict[str, Any]) -> str:
    """Serve's name for the state of a BioEngineApp (``DEPLOYING`` before it has a phase)."""
    phase = (body.get("status") or {}).get("phase") or "Pending"
    return SERVE_STATUS_OF_PHASE.get(phase, "DEPLOYING")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _user(context: dict[str, Any] | None) -> dict[str, Any]:
    return dict((context or {}).get("user") or {})


class Objects(Protocol):
    """Where the worker keeps its uploads (ConfigMaps) and applications (BioEngineApps) and
    finds the datasets: a namespace of the cluster (:class:`KubeObjects`), or the one-machine
    stack of ``bioengine up`` (:mod:`bioengine_operator.local.worker`)."""

    namespace: str

    async def list(
        self, api_version: str, kind: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]: ...

    async def get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None: ...

    async def apply(self, body: dict[str, Any]) -> None: ...

    async def delete(self, api_version: str, kind: str, name: str) -> None: ...


@dataclasses.dataclass
class KubeObjects:
    """One namespace of the cluster (a thread per call: the Kubernetes client is synchronous)."""

    namespace: str

    async def list(
        self, api_version: str, kind: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        found = await asyncio.to_thread(kube.list_, api_version, kind, self.namespace, labels)
        return list(found)

    async def get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(kube.get, api_version, kind, self.namespace, name)

    async def apply(self, body: dict[str, Any]) -> None:
        await asyncio.to_thread(kube.apply, body, uploads.WORKER)

    async def delete(self, api_version: str, kind: str, name: str) -> None:
        await asyncio.to_thread(kube.delete, api_version, kind, self.namespace, name)


@dataclasses.dataclass
class Worker:
    objects: Objects
    workspace: str
    cluster_name: str
    client_id: str
    admins: tuple[str, ...]
    endpoints: Endpoints
    session: Callable[[], aiohttp.ClientSession | None]
    registered: Callable[[str], bool]  # whether the app of that name has its service

    @property
    def service_id(self) -> str:
        return service_id(self.cluster_name)

    @property
    def namespace(self) -> str:
        return self.objects.namespace

    # -- who may do what ------------------------------------------------------------------

    def _admin(self, context: dict[str, Any] | None, action: str) -> str:
        if not self.admins:
            raise PermissionError(
                f"{action} refused: this worker has no admin users (the bridge's "
                "worker.adminUsers), so nobody may change its apps"
            )
        try:
            return access.authorize(self.admins, context, f"{self.service_id}.{action}")
        except PermissionError as err:
            raise PermissionError(f"{err}: only the worker's admin users may {action}") from None

    def _entitled(self, context: dict[str, Any] | None, body: dict[str, Any]) -> bool:
        """Admins, and users the app names (not through "*"), see its logs and users."""
        user = _user(context)
        if user.get("is_anonymous") or not user.get("id"):
            return False
        spec = body.get("spec") or {}
        named = [*self.admins, *(u for u in spec.get("authorizedUsers") or [] if u != "*")]
        for method in (spec.get("methods") or {}).values():
            named += [u for u in method.get("authorizedUsers") or [] if u != "*"]
        return user.get("id") in named or (bool(user.get("email")) and user["email"] in named)

    # -- its objects ----------------------------------------------------------------------

    async def _upload_config_maps(self, app_id: str | None = None) -> list[dict[str, Any]]:
        """Every ConfigMap of the uploads (of ``app_id``), a large app's zip parts included."""
        selector = {**LABELS, **({uploads.ARTIFACT: app_id} if app_id else {})}
        return await self.objects.list("v1", "ConfigMap", selector)

    async def _uploads(self, app_id: str | None = None) -> list[uploads.Stored]:
        return uploads.versions(await self._upload_config_maps(app_id))

    async def _apps(self) -> dict[str, dict[str, Any]]:
        found = await self.objects.list(API_VERSION, "BioEngineApp", LABELS)
        return {b["metadata"]["name"]: b for b in found}

    async def _app(self, application_id: str) -> dict[str, Any] | None:
        body = await self.objects.get(API_VERSION, "BioEngineApp", application_id)
        if (
            body is not None
            and (body["metadata"].get("labels") or {}).get(uploads.MANAGED_BY) != uploads.WORKER
        ):
            raise WorkerError(
                f"BioEngineApp {application_id} in {self.namespace} was not deployed by this "
                "worker: change it with kubectl, or pick another application_id"
            )
        return body

    # -- uploads --------------------------------------------------------------------------

    async def upload_app(self, files: Any, context: dict[str, Any] | None = None) -> str:
        """Store an app folder's files ({name, content, type: text|base64}) as a new version
        of its app, checked as format 0.6.0; returns the artifact id to deploy."""
        user = self._admin(context, "upload_app")
        config_maps = uploads.upload(files, self.namespace, user, _now())
        # The annotated first one last: a listing never finds a version missing a part.
        for config_map in reversed(config_maps):
            await self.objects.apply(config_map)
        stored = uploads.stored(config_maps[0])
        logger.info("%s uploaded %s version %s", user, stored.app_id, stored.version)
        return stored.artifact_id(self.workspace)

    async def list_apps(self, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The uploaded apps by artifact id: manifest, versions, latest version, files."""
        listed: dict[str, Any] = {}
        for stored in sorted(await self._uploads(), key=lambda s: s.uploaded_at):
            entry = listed.setdefault(stored.artifact_id(self.workspace), {"versions": []})
            entry.update(manifest=_manifest(stored), files=stored.files, latest=stored.version)
            entry["versions"].append(stored.version)
        return listed

    async def _stored(self, artifact_id: Any, version: Any = None) -> uploads.Stored:
        app_id = uploads.app_id_of(artifact_id, self.workspace)
        versions = await self._uploads(app_id)
        return uploads.pick(versions, str(artifact_id), None if version is None else str(version))

    async def get_app_manifest(
        self, artifact_id: str, version: str | None = None, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The manifest of an uploaded app (its latest version unless ``version``)."""
        return _manifest(await self._stored(artifact_id, version))

    async def delete_app(self, artifact_id: str, context: dict[str, Any] | None = None) -> None:
        """Delete every uploaded version of an app; refused while an application runs it."""
        self._admin(context, "delete_app")
        app_id = uploads.app_id_of(artifact_id, self.workspace)
        config_maps = await self._upload_config_maps(app_id)
        if not uploads.versions(config_maps):
            raise WorkerError(f"artifact {artifact_id} not found")
        running = sorted(
            name
            for name, body in (await self._apps()).items()
            if body["metadata"]["labels"].get(uploads.ARTIFACT) == app_id
        )
        if running:
            raise WorkerError(
                f"artifact {artifact_id} runs as {', '.join(running)}: stop_app them first"
            )
        for config_map in config_maps:
            name = config_map["metadata"]["name"]
            await self.objects.delete("v1", "ConfigMap", name)

    # -- applications ---------------------------------------------------------------------

    async def deploy_app(
        self,
        artifact_id: str,
        version: str | None = None,
        application_id: str | None = None,
        application_kwargs: dict[str, Any] | None = None,
        application_env_vars: dict[str, Any] | None = None,
        hypha_token: str | None = None,
        disable_gpu: bool = False,
        max_ongoing_requests: int | None = None,
        authorized_users: Any = None,
        scaling: Any = None,
        context: dict[str, Any] | None = None,
    ) -> str:
        """Run an uploaded app as a BioEngineApp (its own Ray cluster); the same
        ``application_id`` again updates it (keeping its version unless ``version``).
        Returns the application id, which is also its Hypha service id."""
        user = self._admin(context, "deploy_app")
        for name, value in (("max_ongoing_requests", max_ongoing_requests), ("scaling", scaling)):
            if value is not None:
                raise WorkerError(
                    f"{name}: not supported by the Kubernetes worker: set replicas or "
                    "autoscaling under classes.<Class> of the BioEngineApp"
                )
        if hypha_token:
            # Resources are readable by anyone who can read the namespace: tokens stay out.
            logger.info("deploy_app of %s: the hypha_token given is not stored", artifact_id)
        if application_id is None:
            app_id = uploads.app_id_of(artifact_id, self.workspace)
            application_id = uploads.new_application_id(app_id)
        application_id = uploads.check_application_id(application_id)
        current = await self._app(application_id)
        if version is None and current is not None:
            version = (current["metadata"].get("annotations") or {}).get(uploads.VERSION)
        source = await self._stored(artifact_id, version)
        args = {
            "application_kwargs": application_kwargs,
            "application_env_vars": application_env_vars,
            "disable_gpu": disable_gpu,
            "authorized_users": authorized_users,
        }
        body = uploads.application(
            source, application_id, self.namespace, args, user, self.workspace
        )
        await self.objects.apply(body)
        logger.info(
            "%s deployed %s version %s as %s", user, source.app_id, source.version, application_id
        )
        return application_id

    async def stop_app(self, application_id: str, context: dict[str, Any] | None = None) -> None:
        """Stop an application: its BioEngineApp and Ray cluster are deleted."""
        self._admin(context, "stop_app")
        if await self._app(uploads.check_application_id(application_id)) is None:
            raise WorkerError(f"application {application_id} is not deployed on this cluster")
        await self.objects.delete(API_VERSION, "BioEngineApp", application_id)

    async def stop_all_apps(self, context: dict[str, Any] | None = None) -> list[str]:
        """Stop every application this worker deployed; their ids."""
        self._admin(context, "stop_all_apps")
        names = sorted(await self._apps())
        for name in names:
            await self.objects.delete(API_VERSION, "BioEngineApp", name)
        return names

    # -- status ---------------------------------------------------------------------------

    async def get_app_status(
        self,
        application_ids: list[str] | None = None,
        logs_tail: int = 30,
        context: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Per application: status, message, artifact and version, its deployments with
        replica states, and (for admins and the users it names) recent logs."""
        apps = await self._apps()
        wanted = list(application_ids) if application_ids is not None else sorted(apps)
        answers: dict[str, Any] = {}
        for name in wanted:
            body = apps.get(name)
            if body is None:
                answers[name] = {
                    "status": "NOT_RUNNING",
                    "message": f"application {name} is not deployed on cluster "
                    f"{self.cluster_name or self.namespace}: start it with deploy_app",
                }
                continue
            entitled = self._entitled(context, body)
            answers[name] = await self._status(body, logs_tail if entitled else 0, entitled)
        return answers

    async def _status(self, body: dict[str, Any], logs_tail: int, entitled: bool) -> dict[str, Any]:
        meta, status = body["metadata"], body.get("status") or {}
        notes = meta.get("annotations") or {}
        conditions: list[dict[str, Any]] = status.get("conditions") or []
        ready = next((c for c in conditions if c.get("type") == "Ready"), {})
        name = meta["name"]
        answer: dict[str, Any] = {
            "status": serve_status(body),
            "message": ready.get("message", ""),
            "phase": status.get("phase"),
            "display_name": body["spec"].get("name"),
            "description": body["spec"].get("description"),
            "artifact_id": notes.get(uploads.ARTIFACT),
            "version": notes.get(uploads.VERSION),
            "cluster": self.cluster_name,
            "started_at": meta.get("creationTimestamp"),
            "service_ids": {"websocket_service_id": f"{self.workspace}/{self.client_id}:{name}"},
            "service_registered": self.registered(name),
        }
        try:
            answer["deployments"] = await self._deployments(body, logs_tail)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            answer["deployments"] = {}
            answer["deployments_message"] = f"Ray dashboard not reachable: {err or repr(err)}"
        if entitled:
            answer["authorized_users"] = body["spec"].get("authorizedUsers", ["*"])
            answer["last_updated_by"] = notes.get(uploads.DEPLOYED_BY)
        return answer

    async def _dashboard(self, url: str) -> aiohttp.ClientResponse:
        session = self.session()
        if session is None:
            raise ValueError("the bridge is not connected yet")
        timeout = aiohttp.ClientTimeout(total=DASHBOARD_TIMEOUT)
        answer = await session.get(url, timeout=timeout)
        answer.raise_for_status()
        return answer

    async def _deployments(self, body: dict[str, Any], logs_tail: int) -> dict[str, Any]:
        if (body.get("status") or {}).get("phase") in (None, "Pending"):
            return {}
        base = self.endpoints.dashboard(body)
        if base is None:
            raise ValueError("the app's status names no Ray dashboard yet")
        async with await self._dashboard(f"{base}/api/serve/applications/") as answer:
            found = (await answer.json()).get("applications") or {}
        serve_app = found.get(body["metadata"]["name"]) or {}
        deployments: dict[str, Any] = {}
        for name, info in (serve_app.get("deployments") or {}).items():
            replicas = info.get("replicas") or []
            counts: dict[str, int] = {}
            for replica in replicas:
                state = replica.get("state", "UNKNOWN")
                counts[state] = counts.get(state, 0) + 1
            entry: dict[str, Any] = {
                "status": info.get("status"),
                "message": info.get("message", ""),
                "replica_states": counts,
            }
            if logs_tail:
                entry["logs"] = {
                    r["replica_id"]: await self._replica_logs(base, r, logs_tail) for r in replicas
                }
            deployments[name] = entry
        return deployments

    async def _replica_logs(self, base: str, replica: dict[str, Any], tail: int) -> dict[str, str]:
        """The replica's stdout and stderr, from Ray's log API (its worker process)."""
        logs: dict[str, str] = {}
        for stream, suffix in (("stdout", "out"), ("stderr", "err")):
            query = f"actor_id={replica.get('actor_id')}&suffix={suffix}"
            url = f"{base}/api/v0/logs/file?{query}" + ("" if tail < 0 else f"&lines={tail}")
            try:
                async with await self._dashboard(url) as answer:
                    logs[stream] = await answer.text()
            except (aiohttp.ClientError, TimeoutError) as err:
                logs[stream] = f"(no log: {err or repr(err)})"
        return logs

    async def get_logs(
        self, application_id: str, logs_tail: int = 100, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Recent logs of an application's replicas, by deployment and replica."""
        status = await self.get_app_status([application_id], logs_tail, context)
        answer = status[application_id]
        if answer["status"] == "NOT_RUNNING":
            raise WorkerError(answer["message"])
        if "authorized_users" not in answer:
            raise PermissionError(
                f"logs of {application_id} are shown to the worker's admins and the users "
                "the app names"
            )
        return {name: d.get("logs", {}) for name, d in answer["deployments"].items()}

    async def get_status(self, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """This worker: its cluster, namespace and service, the uploaded apps and the
        applications with their state."""
        apps = await self._apps()
        return {
            "service_id": f"{self.workspace}/{self.client_id}:{self.service_id}",
            "cluster_name": self.cluster_name,
            "namespace": self.namespace,
            "mode": "kubernetes",
            "uploaded_apps": sorted({s.artifact_id(self.workspace) for s in await self._uploads()}),
            "bioengine_apps": {
                name: {
                    "status": serve_status(b),
                    "artifact_id": (b["metadata"].get("annotations") or {}).get(uploads.ARTIFACT),
                }
                for name, b in sorted(apps.items())
            },
        }

    async def list_datasets(self, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The BioEngineDatasets of this worker's namespace: name, description, state."""
        found = await self.objects.list(API_VERSION, "BioEngineDataset", {})
        return {
            d["metadata"]["name"]: {
                "name": (d["spec"].get("manifest") or {}).get("name"),
                "description": (d["spec"].get("manifest") or {}).get("description"),
                "phase": (d.get("status") or {}).get("phase"),
                "service_id": (d.get("status") or {}).get("serviceId"),
            }
            for d in found
        }

    async def check_access(self, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Who the caller is to this worker, and whether they may change its apps."""
        user = _user(context)
        try:
            self._admin(context, "check_access")
            admin = True
        except PermissionError:
            admin = False
        return {"user_id": user.get("id"), "email": user.get("email"), "is_admin": admin}

    # -- the Hypha service ----------------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        functions = (
            self.upload_app,
            self.list_apps,
            self.get_app_manifest,
            self.delete_app,
            self.deploy_app,
            self.stop_app,
            self.stop_all_apps,
            self.get_app_status,
            self.get_logs,
            self.get_status,
            self.list_datasets,
            self.check_access,
        )
        config: dict[str, Any] = {"visibility": "protected", "require_context": True}
        workspaces = sorted(set(access.user_workspaces(self.admins)))
        if workspaces:
            config["authorized_workspaces"] = workspaces
        return {
            "id": self.service_id,
            "type": SERVICE_TYPE,
            "name": f"BioEngine worker ({self.cluster_name or self.namespace})",
            "description": f"Deploys BioEngine apps to namespace {self.namespace} of "
            f"cluster {self.cluster_name or '(unnamed)'} through the BioEngine operator.",
            "config": config,
            **{fn.__name__: fn for fn in functions},
        }


def _manifest(stored: uploads.Stored) -> dict[str, Any]:
    """The manifest fields of an upload, as in its manifest.yaml (snake_case)."""
    spec = {k: v for k, v in stored.spec.items() if k != "source"}
    return {appfolder.snake_case(k): v for k, v in spec.items()} | {"version": stored.version}
