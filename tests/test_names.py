"""Cluster names every cloud accepts (cloud review defect 13), and clusters named before the rule."""

from __future__ import annotations

import pytest

from cloudtrain.errors import BadInput
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord, Store
from conftest import Cli


@pytest.mark.parametrize("name", ["1gpu", "-a", "a-", "A", "a_b", "a" * 41])
def test_new_names_start_with_a_letter_and_fit_40(name):
    with pytest.raises(BadInput) as e:
        ClusterSpec(name=name, provider="local")
    assert "starting with a letter" in e.value.hint


def test_a_cluster_named_under_the_earlier_rule_can_still_be_seen_and_taken_down(cli: Cli):
    """A digit first was allowed before; such a cluster may be billing, so `status` and `down`
    still reach it (only new clusters must follow the new rule)."""
    store = Store(cli.home)
    cdir = store.cluster_dir("1gpu")
    cdir.create(provider="local")
    cdir.save(ClusterRecord(spec=ClusterSpec.from_dict({"name": "1gpu", "provider": "local", "framework": "none"})))
    status = cli("status")
    assert status.returncode == 0 and "1gpu" in status.stdout + status.stderr, status.stderr
    down = cli("down", "--cluster", "1gpu")
    assert down.returncode == 0, down.stderr
    assert "cluster 1gpu is down" in down.stderr + down.stdout
    assert not cdir.found()
    again = cli("up", "--provider", "local", "--framework", "none", "--name", "1gpu")
    assert again.returncode == 2 and "starting with a letter" in again.stderr
