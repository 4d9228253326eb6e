"""After lost state, `down` and `status --cloud` find what the GCP program makes beside Compute:
the checkpoint bucket (emptied of every generation first) and the nodes' service account, by
the names, label and description provisioner/buckets.py gives them; against the REST fakes of
test_leftovers_rest.py (Compute) and fake_gcs_iam.py (Cloud Storage, IAM) over real HTTP.
"""

from __future__ import annotations

import pytest

from test_leftovers_rest import P, plant_gcp, serve

from cloudtrain.errors import ProvisionError
from cloudtrain.provisioner import inventory, leftovers
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.provisioner.leftovers import gcp
from cloudtrain.provisioner.leftovers.base import GLOBAL
from cloudtrain.provisioner.rest import Bearer, Rest
from cloudtrain.state import Store

from test_leftovers_rest import compute  # noqa: F401 - the fixture

REGION = "us-central1"


def plant(fake, cluster: str, suffix: str, region: str = REGION, prefix: str = "ct-ckpt-") -> dict[str, str]:
    labels = {CLUSTER_TAG: cluster, "managed-by": "cloudtrain"}
    bucket = f"cloudtrain-ckpt-{cluster.lower()}-{suffix}"
    fake.beyond.bucket(bucket, region, labels, {"run-1/ckpt.pt": 3, "run-1/model.pt": 1})
    account = fake.beyond.account(f"{prefix}{suffix}0000", f"{CLUSTER_TAG}={cluster}", f"cloudtrain {cluster} nodes")
    return {"bucket": bucket, "account": account}


@pytest.fixture
def google(compute, monkeypatch):  # noqa: F811 - the fixture imported above
    monkeypatch.setattr(gcp, "_client", lambda h, p: (Rest(Bearer("ya29.test"), "GCP"), P))
    monkeypatch.setattr(gcp, "API", compute.api)
    return compute


def test_sweep_empties_every_generation_then_deletes_the_bucket_and_the_service_account_last(google):
    plant_gcp(google, "g1")
    mine = plant(google, "g1", "aaaa1111")
    keep = [plant(google, "g1", "bbbb2222", region="europe-west4"), plant(google, "g1-other", "cccc3333"), plant(google, "G1", "dddd4444")]
    by_hand = google.beyond.account("someone-else", f"{CLUSTER_TAG}=g1")  # not a node account: no ct-ckpt- prefix
    google.beyond.bucket("cloudtrain-ckpt-plain", REGION, {})  # no cluster label
    said: list[str] = []
    leftovers.sweep("gcp", "g1", REGION, said.append)
    assert mine["bucket"] not in google.beyond.buckets and google.beyond.objects[mine["bucket"]] == []
    assert google.beyond.deleted == [f"bucket:{mine['bucket']}", f"account:{mine['account']}", f"account:{keep[0]['account']}"]
    assert keep[0]["bucket"] in google.beyond.buckets, "a bucket of another region was taken"
    for other in keep[1:]:
        assert other["bucket"] in google.beyond.buckets and other["account"] in google.beyond.accounts
    assert by_hand in google.beyond.accounts and "cloudtrain-ckpt-plain" in google.beyond.buckets
    assert google.names() == set(), "the Compute kinds go as before"
    assert any(f"bucket {mine['bucket']} in {REGION}" in s and f"service-account {mine['account']} in {GLOBAL}" in s for s in said)
    assert gcp.find("g1", REGION)[0] == []


def test_a_bucket_that_cannot_be_emptied_is_named_and_the_service_account_still_goes(google):
    mine = plant(google, "g2", "eeee5555")
    google.beyond.objects[mine["bucket"]].append({"kind": "storage#object", "name": "held", "bucket": mine["bucket"], "generation": "9", "live": False})
    real = google.beyond.handle

    def held(method, path, query):  # an object under a retention hold: its delete is refused
        if method == "DELETE" and path.endswith("/o/held"):
            return 403, {"error": {"code": 403, "message": "Object 'held' is under active Temporary hold and cannot be deleted.", "errors": [{"reason": "retentionPolicyNotMet"}]}}, None
        return real(method, path, query)

    google.beyond.handle = held
    with pytest.raises(ProvisionError) as e:
        leftovers.sweep("gcp", "g2", REGION, lambda s: None)
    assert f"bucket {mine['bucket']} in {REGION} (HTTP 403 retentionPolicyNotMet)" in e.value.line()
    assert mine["account"] not in google.beyond.accounts and mine["bucket"] in google.beyond.buckets


def test_status_lists_them_and_down_of_the_lost_name_removes_what_only_iam_holds(google, tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path / "home"))
    lost, kept = plant(google, "lost", "ffff6666"), plant(google, "kept", "abab7777")
    conns = {"gcp": {"http": Bearer("ya29.test"), "project": P, "api": google.api}}
    seen = inventory.unknown(Store(), "gcp", conns=conns)
    rows = {(t.kind, t.id, t.cluster, t.region) for t in seen.found}
    assert ("bucket", lost["bucket"], "lost", REGION) in rows and ("service-account", kept["account"], "kept", GLOBAL) in rows
    del google.beyond.buckets[lost["bucket"]]  # now only IAM holds the name
    assert inventory.down_unrecorded(Store(), "lost", lambda _: None, force=True, confirm=None, show=lambda _: None, conns=conns)
    assert lost["account"] not in google.beyond.accounts and kept["account"] in google.beyond.accounts


def test_status_keeps_the_machines_when_storage_cannot_be_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDTRAIN_HOME", str(tmp_path / "home"))
    from test_inventory import ListingCompute

    fake = ListingCompute()
    server, url = serve(fake)
    try:
        plant_gcp(fake, "lost")
        fake.beyond.handle = lambda method, path, query: (403, {"error": {"code": 403, "message": "Cloud Storage API has not been used in project proj-1", "errors": [{"reason": "accessNotConfigured"}]}}, None)
        conns = {"gcp": {"http": Bearer("ya29.test"), "project": P, "api": f"{url}/compute/v1"}}
        seen = inventory.unknown(Store(), "gcp", conns=conns)
        assert {(t.kind, t.id) for t in seen.found} == {("instance", "lost-0"), ("disk", "lost-data")}
        assert len(seen.failed) == 1 and "HTTP 403 accessNotConfigured" in seen.failed[0]
    finally:
        server.shutdown()
        server.server_close()
