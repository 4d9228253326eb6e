"""What the clouds' Pulumi programs set up so a node's watchdog can stop its own machine
(issue 12), under Pulumi mocks: AWS stops on a guest shutdown (spot: terminates, it cannot
stop); GCP keeps its default (a guest shutdown stops the VM); Azure gives each VM an identity
allowed to deallocate that VM and nothing else."""

from __future__ import annotations

import pytest

from test_pulumi_programs import SCENARIOS, _ids, instances, scenario, unsecret

from cloudtrain.provisioner.azure import DEALLOCATE


@pytest.mark.parametrize("sc", [s for s in SCENARIOS if s[0] == "aws"], ids=_ids)
def test_aws_a_guest_shutdown_stops_on_demand_and_terminates_spot(sc):
    run = scenario(*sc)
    for _, inst in instances(run):
        assert inst["instanceInitiatedShutdownBehavior"] == ("terminate" if run.spec.spot else "stop")


@pytest.mark.parametrize("sc", [s for s in SCENARIOS if s[0] == "gcp"], ids=_ids)
def test_gcp_nothing_overrides_a_guest_shutdown_stopping_the_vm(sc):
    """A guest shutdown stops a GCP VM (TERMINATED, disk kept) unless something deletes it: no
    shutdown script, no run-duration limit, no deletion on a plain stop."""
    run = scenario(*sc)
    for _, inst in instances(run):
        s = inst["scheduling"]
        assert "maxRunDuration" not in s and "terminationTime" not in s
        assert s.get("instanceTerminationAction") == ("DELETE" if run.spec.spot else None)  # preemption only
        assert not [k for k in unsecret(inst["metadata"]) if "shutdown" in k]
        assert inst["bootDisk"]["autoDelete"] is True  # goes at `down`; a stop keeps it


@pytest.mark.parametrize("sc", [s for s in SCENARIOS if s[0] == "azure"], ids=_ids)
def test_azure_each_vm_may_deallocate_itself_and_nothing_else(sc):
    run = scenario(*sc)
    (role_name, role), = run.rec.of("azure-native:authorization:RoleDefinition")
    assert role["permissions"] == [{"actions": [DEALLOCATE]}]
    (group_name, _), = run.rec.of("azure-native:resources:ResourceGroup")
    assert role["assignableScopes"] == [f"{group_name}-id"] and role["scope"] == f"{group_name}-id"
    assert role["roleName"].startswith("cloudtrain self-deallocate (")
    vms = instances(run)
    # The deallocate role's grants: one per VM. (Other grants exist: the checkpoint bucket's, on
    # its container only; tests/test_buckets.py asserts those.)
    assignments = {n: a for n, a in run.rec.of("azure-native:authorization:RoleAssignment") if a["roleDefinitionId"] == f"{role_name}-id"}
    assert len(assignments) == len(vms) == run.spec.nodes
    for vm_name, vm in vms:
        grant = assignments[f"{vm_name}-deallocate"]
        assert vm["identity"]["type"] == "SystemAssigned"
        # Scoped to this VM only, granted to this VM's own identity, with the custom role.
        assert grant["scope"] == f"{vm_name}-id"
        assert grant["principalId"] == f"principal-of-{vm_name}"
        assert grant["principalType"] == "ServicePrincipal"
        assert grant["roleDefinitionId"] == f"{role_name}-id"
