"""After lost state, `down` and `status --cloud` find the one thing the Azure program makes outside
the cluster's resource group: the custom self-deallocate role (no tags: matched by the marker in
its description, the group in its name and its one assignable scope), its assignments deleted
before it; against test_leftovers_rest.py's ARM fake and fake_arm_roles.py over real HTTP.
"""

from __future__ import annotations

import pytest

from test_inventory import ListingArm
from test_leftovers_rest import SUB, arm, serve  # noqa: F401 - arm: the fixture

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner import inventory, leftovers
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers import azure
from cloudtrain.provisioner.leftovers.base import GLOBAL
from cloudtrain.provisioner.rest import Bearer
from cloudtrain.state import Store


def _scope(group: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{group}"


def role(fake, cluster: str, group: str, vms: int = 0, scopes: list[str] | None = None) -> tuple[str, list[str]]:
    """The role as the Azure program defines it for `group`, assigned on each VM of it."""
    guid = fake.roles.define(f"cloudtrain self-deallocate ({group})", f"{CLUSTER_TAG}={cluster}: a node's watchdog deallocates its own VM",
                             scopes or [_scope(group)])
    return guid, [fake.roles.assign(guid, f"{_scope(group)}/providers/Microsoft.Compute/virtualMachines/{cluster}-{i}") for i in range(vms)]


def test_sweep_deletes_the_group_then_the_role_assignments_then_the_role(arm):  # noqa: F811
    arm.add("z1-rgab12cd34", "eastus", {CLUSTER_TAG: "z1", "managed-by": "cloudtrain"})
    _, assigned = role(arm, "z1", "z1-rgab12cd34", vms=3)
    role(arm, "z1", "z1-rgold")  # an earlier try's, its group already gone: ours too
    arm.add("z1-rgwest", "westus2", {CLUSTER_TAG: "z1"})
    role(arm, "z1", "z1-rgwest", vms=1)  # a same-named cluster's in another region, its group alive
    role(arm, "z1-other", "z1-other-rg")
    role(arm, "z1", "z1-rgwide", scopes=[f"/subscriptions/{SUB}"])  # assignable wider than one group: not the program's
    arm.roles.define("cloudtrain self-deallocate (z1-rgbuiltin)", f"{CLUSTER_TAG}=z1: x", [_scope("z1-rgbuiltin")], kind="BuiltInRole")
    said: list[str] = []
    leftovers.sweep("azure", "z1", "eastus", said.append)
    assert sorted(arm.groups) == ["z1-rgwest"]
    assert arm.roles.deleted == [f"assignment:{a}" for a in assigned] + [
        "definition:cloudtrain self-deallocate (z1-rgab12cd34)", "definition:cloudtrain self-deallocate (z1-rgold)"]
    names = {d["properties"]["roleName"] for d in arm.roles.defs.values()}
    assert names == {f"cloudtrain self-deallocate ({g})" for g in ("z1-rgwest", "z1-other-rg", "z1-rgwide", "z1-rgbuiltin")}
    assert len(arm.roles.assignments) == 1  # the western cluster's
    assert "role-definition cloudtrain self-deallocate (z1-rgold) in global" in said[0]
    assert azure.find("z1", "eastus")[0] == []


def test_an_assignment_that_cannot_go_keeps_its_role_and_names_both(arm, monkeypatch):  # noqa: F811
    arm.add("z2-rg", "eastus", {CLUSTER_TAG: "z2"})
    _, (kept,) = role(arm, "z2", "z2-rg", vms=1)
    real = arm.roles.handle

    def refuse(method, path, query):
        if method == "DELETE" and path.endswith(kept):
            return 403, {"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization to perform action 'Microsoft.Authorization/roleAssignments/delete'."}}, None
        return real(method, path, query)

    monkeypatch.setattr(arm.roles, "handle", refuse)
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("azure", "z2", "eastus", lambda s: None)
    line = e.value.line()
    assert f"role-assignment {kept} in {GLOBAL} (AuthorizationFailed)" in line
    assert f"role-definition cloudtrain self-deallocate (z2-rg) in {GLOBAL} (RoleDefinitionHasAssignments)" in line
    assert arm.groups == {} and len(arm.roles.defs) == 1


def test_status_lists_the_role_and_down_of_a_name_only_it_holds_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path / "home"))
    fake = ListingArm()
    server, fake.url = serve(fake)
    try:
        role(fake, "lost", "lost-rg", vms=2)  # its group went, the role stayed
        role(fake, "kept", "kept-rg")
        fake.add("kept-rg", "eastus", {CLUSTER_TAG: "kept"})
        fake.contents["kept-rg"] = [("Microsoft.Storage/storageAccounts", "ctckpt0123456789abcdef")]  # the checkpoint bucket bills
        conns = {"azure": {"http": Bearer("t"), "subscription_id": SUB, "arm": fake.url}}
        seen = inventory.unknown(Store(), "azure", conns=conns)
        assert {(t.kind, t.id, t.cluster, t.region) for t in seen.found} == {("resource-group", "kept-rg", "kept", "eastus"),
            ("role-definition", "cloudtrain self-deallocate (lost-rg)", "lost", GLOBAL), ("role-definition", "cloudtrain self-deallocate (kept-rg)", "kept", GLOBAL)}
        assert next(t.bills for t in seen.found if t.kind == "resource-group") == "1 checkpoint storage account(s)"
        assert inventory.down_unrecorded(Store(), "lost", lambda _: None, force=True, confirm=None, show=lambda _: None, conns=conns)
        assert [d["properties"]["roleName"] for d in fake.roles.defs.values()] == ["cloudtrain self-deallocate (kept-rg)"]
        assert fake.roles.assignments == {}
    finally:
        server.shutdown()
        server.server_close()
