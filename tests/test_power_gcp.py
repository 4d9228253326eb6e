"""GCP clusters stopped by their watchdog, seen and started again through the Compute Engine
REST API. A fake transport answers like the API (instances.list pages with `items`, a
`compute#operation` for instances.start, TERMINATED then RUNNING with a new external IP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from cloudtrain.errors import ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import power_gcp
from cloudtrain.provisioner.rest import Reply
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord

API, PROJECT, ZONE = "https://compute.test/compute/v1", "proj-1", "us-central1-a"


def _reply(body: dict) -> Reply:
    return Reply(200, {"content-type": "application/json"}, json.dumps(body).encode())


class FakeCompute:
    def __init__(self) -> None:
        self.vms: dict[str, dict[str, Any]] = {}
        self.posts: list[str] = []
        self.n = 0

    def add(self, name: str, cluster: str, private: str, status: str = "RUNNING") -> dict:
        self.n += 1
        vm = {"kind": "compute#instance", "name": name, "status": status, "zone": f"{API}/projects/{PROJECT}/zones/{ZONE}",
              "labels": {"cloudtrain-cluster": cluster, "managed-by": "cloudtrain"},
              "networkInterfaces": [{"networkIP": private, "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": f"34.1.0.{self.n}"}]}]}
        self.vms[name] = vm
        return vm

    def stop(self, name: str) -> None:
        vm = self.vms[name]
        vm["status"], vm["lastStopTimestamp"] = "TERMINATED", "2026-12-01T06:03:12.345-08:00"
        vm["networkInterfaces"][0]["accessConfigs"][0].pop("natIP")  # an ephemeral address goes with the stop

    def request(self, method: str, url: str) -> Reply:
        return self.get(url) if method == "GET" else self.post(url)

    def get(self, url: str) -> Reply:
        path, _, query = url.partition("?")
        assert path == f"{API}/projects/{PROJECT}/zones/{ZONE}/instances", url
        key, _, value = parse_qs(query)["filter"][0].partition("=")
        assert key == "labels.cloudtrain-cluster"
        items = [v for v in self.vms.values() if v["labels"]["cloudtrain-cluster"] == value]
        return _reply({"kind": "compute#instanceList", "id": f"projects/{PROJECT}/zones/{ZONE}/instances", **({"items": items} if items else {})})

    def post(self, url: str) -> Reply:
        self.posts.append(url)
        name = url.rsplit("/", 2)[-2]
        vm = self.vms[name]
        self.n += 1
        vm["status"] = "RUNNING"
        vm["networkInterfaces"][0]["accessConfigs"][0]["natIP"] = f"34.2.0.{self.n}"
        return _reply({"kind": "compute#operation", "operationType": "start", "status": "RUNNING", "targetLink": f"{API}/projects/{PROJECT}/zones/{ZONE}/instances/{name}"})


def _record(fake: FakeCompute, name: str = "ct-test", spot: bool = False) -> ClusterRecord:
    vms = [fake.add(f"{name}-{i}-a1b2c3d", name, f"10.78.0.{i + 2}") for i in range(2)]
    nodes = tuple(Node(f"{name}-{i}", vm["networkInterfaces"][0]["accessConfigs"][0]["natIP"], 22, "ubuntu", "ssh-ed25519 AAAA", f"10.78.0.{i + 2}") for i, vm in enumerate(vms))
    spec = ClusterSpec(name=name, provider="gcp", gpu="t4", gpu_count=1, nodes=2, region="us-central1", zone=ZONE, spot=spot)
    record = ClusterRecord(spec=spec, cluster=Cluster(name, nodes, Path("/nonexistent")), status="ready")
    power_gcp.remember(record, fake, PROJECT, API)
    assert record.provider_state["instance_names"] == [vm["name"] for vm in vms]
    return record


def test_a_stopped_vm_is_seen_and_started_again_at_its_new_address() -> None:
    fake = FakeCompute()
    record = _record(fake)
    other = fake.add("ct-test-0-zzzzzzz", "ct-test", "10.78.0.2", status="TERMINATED")  # same name and address, another home
    assert power_gcp.observed_stop(record, fake, PROJECT, API) is None
    fake.stop("ct-test-1-a1b2c3d")
    stop = power_gcp.observed_stop(record, fake, PROJECT, API)
    assert stop["at"] == 1796133792.345  # 14:03:12.345 UTC and "stopped" in stop["reason"]
    lines = power_gcp.start(record, fake, PROJECT, API)
    assert fake.posts == [f"{API}/projects/{PROJECT}/zones/{ZONE}/instances/ct-test-1-a1b2c3d/start"]
    assert lines == [f"ct-test-1: started ct-test-1-a1b2c3d, now at {record.cluster.nodes[1].host}"]
    assert record.cluster.nodes[1].host.startswith("34.2.0.") and other["status"] == "TERMINATED"
    assert power_gcp.observed_stop(record, fake, PROJECT, API) is None


def test_a_deleted_spot_vm_is_reported_and_never_started() -> None:
    fake = FakeCompute()
    record = _record(fake, spot=True)
    del fake.vms["ct-test-0-a1b2c3d"]  # preempted: instanceTerminationAction DELETE
    assert power_gcp.observed_stop(record, fake, PROJECT, API)["terminated"] is True
    with pytest.raises(ProvisionError, match="deleted"):
        power_gcp.start(record, fake, PROJECT, API)
    assert fake.posts == []


def test_without_recorded_names_two_vms_at_one_private_address_are_not_guessed_between() -> None:
    fake = FakeCompute()
    record = _record(fake)
    record.provider_state.clear()
    fake.add("ct-test-0-zzzzzzz", "ct-test", "10.78.0.2", status="TERMINATED")
    assert power_gcp.observed_stop(record, fake, PROJECT, API) is None
    with pytest.raises(ProvisionError, match="more than one VM"):
        power_gcp.start(record, fake, PROJECT, API)
