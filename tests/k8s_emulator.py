"""A Kubernetes API *emulator* for the tests: kmock's KubernetesEmulator, an
in-process HTTP server that stores objects in memory and serves list and
watch requests the way the API server does (it is not a real API server: it
ignores field selectors and resource versions, and knows a resource only once
an object of it exists).  It runs on 127.0.0.1 in a thread with its own event
loop, so that the official `kubernetes` client, in the tests or in a tetrad
daemon, talks to it over real HTTP."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import kmock
import yaml
from kubernetes import client


class KubeEmulator:
    def __init__(self):
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the Kubernetes API emulator did not start")
        configuration = client.Configuration()
        configuration.host = self.url
        self.api = client.ApiClient(configuration)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tetrad", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tetrad"}}]}))
        return path

    def _call(self, path: str, method: str, body=None):
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
        return self.api.call_api(path, method, body=body, header_params=headers,
                                 response_type="object", _return_http_data_only=True)

    @staticmethod
    def _path(obj: dict) -> str:
        group_version = obj["apiVersion"]
        plural = {"Pod": "pods", "TracingPolicy": "tracingpolicies",
                  "TracingPolicyNamespaced": "tracingpoliciesnamespaced"}[obj["kind"]]
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        ns = obj["metadata"].get("namespace")
        return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"

    def create(self, obj: dict) -> dict:
        return self._call(self._path(obj), "POST", obj)

    def patch(self, obj: dict, patch: dict) -> dict:
        return self._call(f"{self._path(obj)}/{obj['metadata']['name']}", "PATCH", patch)

    def delete(self, obj: dict) -> dict:
        return self._call(f"{self._path(obj)}/{obj['metadata']['name']}", "DELETE")

    def requests(self) -> list[str]:
        """The URLs the emulator was asked for (path and query)."""
        return [str(r.url.relative()) if hasattr(r.url, "relative") else str(r.url)
                for r in list(self.handler)]


def pod(name: str, namespace: str, node: str, uid: str, labels: dict | None = None,
        owner: tuple[str, str] | None = None, containers: dict | None = None) -> dict:
    """A Pod as the API server returns it; `containers`: name -> (container id, image, imageID)."""
    meta = {"name": name, "namespace": namespace, "uid": uid, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": "owner-uid", "controller": True}]
    statuses = [{"name": cname, "containerID": f"containerd://{cid}", "image": image,
                 "imageID": image_id, "ready": True, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}}}
                for cname, (cid, image, image_id) in (containers or {}).items()]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": c, "image": i}
                                                      for c, (_, i, _) in (containers or {}).items()]},
            "status": {"phase": "Running", "containerStatuses": statuses}}
