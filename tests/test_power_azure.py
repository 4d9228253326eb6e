"""Azure clusters stopped by their watchdog, seen and started again through ARM REST. A fake
`Http` answers like ARM: resource groups filtered by tag, public IPs with `properties.ipAddress`,
VMs listed with `statusOnly=true` (`PowerState/...` codes), and 202 Accepted for a start."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from cloudtrain.errors import ProvisionError
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import power_azure
from cloudtrain.provisioner.rest import Reply
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord

ARM, SUB = "https://arm.test", "00000000-1111-2222-3333-444444444444"


class FakeArm:
    def __init__(self) -> None:
        self.groups: dict[str, dict] = {}  # name -> {"ips": [...], "vms": {name: power}}
        self.starts: list[str] = []

    def add(self, group: str, cluster: str, ips: list[str], power: str = "running") -> None:
        self.groups[group] = {"cluster": cluster, "ips": ips, "vms": {f"{cluster}-{i}-{group[-4:]}": power for i in range(len(ips))}}

    def request(self, method: str, url: str) -> Reply:
        u = urlparse(url)
        assert url.startswith(ARM + f"/subscriptions/{SUB}/")
        parts = u.path.split("/")
        if method == "GET" and u.path.endswith("/resourcegroups"):
            value = [{"id": f"/subscriptions/{SUB}/resourceGroups/{g}", "name": g, "location": "eastus", "tags": {"cloudtrain-cluster": d["cluster"]}}
                     for g, d in self.groups.items() if f"tagValue eq '{d['cluster']}'" in parse_qs(u.query)["$filter"][0]]
            return Reply(200, {}, json.dumps({"value": value}).encode())
        group = parts[4]
        if method == "GET" and u.path.endswith("/publicIPAddresses"):
            value = [{"name": f"ip{i}", "properties": {"ipAddress": ip, "publicIPAllocationMethod": "Static"}} for i, ip in enumerate(self.groups[group]["ips"])]
            return Reply(200, {}, json.dumps({"value": value}).encode())
        if method == "GET" and u.path.endswith("/virtualMachines"):
            assert parse_qs(u.query)["statusOnly"] == ["true"]
            value = [{"name": vm, "properties": {"instanceView": {"statuses": [
                {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
                {"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"}]}}}
                for vm, power in self.groups[group]["vms"].items()]
            return Reply(200, {}, json.dumps({"value": value}).encode())
        if method == "POST" and u.path.endswith("/start"):
            vm = parts[-2]
            self.starts.append(vm)
            self.groups[group]["vms"][vm] = "running"
            return Reply(202, {"location": f"{ARM}/operations/1"}, b"")
        raise AssertionError(f"unexpected {method} {url}")


def _record() -> ClusterRecord:
    nodes = tuple(Node(f"ct-test-{i}", f"20.1.0.{i}", 22, "azureuser", "ssh-ed25519 AAAA", f"10.79.1.{i + 4}") for i in range(2))
    spec = ClusterSpec(name="ct-test", provider="azure", gpu="t4", gpu_count=1, nodes=2, region="eastus")
    return ClusterRecord(spec=spec, cluster=Cluster("ct-test", nodes, Path("/nonexistent")), status="ready")


@pytest.fixture
def arm() -> FakeArm:
    fake = FakeArm()
    fake.add("ct-test-rgaaaa", "ct-test", ["20.1.0.0", "20.1.0.1"])
    fake.add("ct-test-rgbbbb", "ct-test", ["20.9.0.0", "20.9.0.1"], power="deallocated")  # same name, another home
    return fake


def test_a_deallocated_vm_is_seen_and_started_and_another_homes_cluster_is_left_alone(arm: FakeArm) -> None:
    record = _record()
    assert power_azure.observed_stop(record, arm, SUB, ARM) is None
    arm.groups["ct-test-rgaaaa"]["vms"]["ct-test-1-aaaa"] = "deallocated"
    assert power_azure.observed_stop(record, arm, SUB, ARM)["reason"].startswith("deallocated")
    assert power_azure.start(record, arm, SUB, ARM, poll_s=0) == ["started ct-test-1-aaaa"]
    assert arm.starts == ["ct-test-1-aaaa"]
    assert power_azure.observed_stop(record, arm, SUB, ARM) is None


def test_a_vm_only_shut_down_is_reported_as_still_billing(arm: FakeArm) -> None:
    arm.groups["ct-test-rgaaaa"]["vms"]["ct-test-0-aaaa"] = "stopped"  # selfstop's fallback
    stop = power_azure.observed_stop(_record(), arm, SUB, ARM)
    assert stop["still_billing"] is True and "bills" in stop["reason"]


def test_no_group_holding_the_nodes_is_unknown_and_start_says_so(arm: FakeArm) -> None:
    del arm.groups["ct-test-rgaaaa"]
    assert power_azure.observed_stop(_record(), arm, SUB, ARM) is None
    with pytest.raises(ProvisionError, match="no resource group"):
        power_azure.start(_record(), arm, SUB, ARM, poll_s=0)
