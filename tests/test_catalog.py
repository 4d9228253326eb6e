"""The GPU catalog: its data is complete and sourced, and every bad flag is refused naming the choices."""

from __future__ import annotations

import json
import re

import pytest

from cloudtrain import catalog
from cloudtrain.catalog.data import images, offers
from cloudtrain.errors import BadInput
from cloudtrain.spec import ClusterSpec

CLOUDS = ("aws", "gcp", "azure")


def spec(provider: str, gpu: str = "t4", **kw) -> ClusterSpec:
    name, count = gpu.split(":") if ":" in gpu else (gpu, "1")
    return ClusterSpec(name="c1", provider=provider, gpu=name, gpu_count=int(count), **kw)


# --- the data ---------------------------------------------------------------------------


def test_every_row_has_source_date_and_a_known_verification_state():
    for row in (*offers(), *images()):
        assert row.source.strip(), row
        assert re.match(r"^20\d\d-\d\d(-\d\d)?$", row.date), row
        assert row.verified in ("yes", "derived", "no"), row


def test_rows_are_well_formed_and_unique():
    seen = set()
    for o in offers():
        assert o.provider in CLOUDS and o.gpu in catalog.GPUS
        assert o.count >= 1 and o.vcpus >= 1 and o.ram_gb > 0 and o.gpu_mem_gb >= 16
        assert o.locations, o
        assert o.price_hour is None or o.price_hour > 0
        key = (o.provider, o.gpu, o.count)
        assert key not in seen, f"duplicate row {key}"
        seen.add(key)
    for o in offers():
        # GCP locations are zones (region-letter); AWS and Azure list regions.
        pattern = r"^[a-z]+-[a-z]+\d-[a-z]$" if o.provider == "gcp" else r"^[a-z0-9-]+$"
        assert all(re.match(pattern, loc) for loc in o.locations), o


@pytest.mark.parametrize("cloud", CLOUDS)
def test_each_cloud_offers_the_tested_gpus_and_both_images(cloud):
    gpus = {o.gpu for o in catalog.for_provider(cloud)}
    assert {"t4", "h100"} <= gpus and gpus & {"a100", "a100-80gb"}
    assert {im.image for im in images() if im.provider == cloud} == {"dl", "ubuntu"}


# --- lookups ----------------------------------------------------------------------------


def test_lookup_maps_names_and_counts_to_machines():
    assert catalog.lookup("aws", "t4").instance_type == "g4dn.xlarge"
    assert catalog.lookup("aws", "a100", 8).instance_type == "p4d.24xlarge"
    assert catalog.lookup("aws", "A100-80GB", 8).instance_type == "p4de.24xlarge"
    gcp_t4 = catalog.lookup("gcp", "t4")
    assert (gcp_t4.instance_type, gcp_t4.accelerator) == ("n1-standard-4", "nvidia-tesla-t4")
    assert catalog.lookup("gcp", "a100", 8).instance_type == "a2-highgpu-8g"
    assert catalog.lookup("gcp", "h100").accelerator == ""  # a3 carries its GPU
    assert catalog.lookup("azure", "a100-80gb").instance_type == "Standard_NC24ads_A100_v4"


def test_unknown_gpu_names_every_valid_name():
    with pytest.raises(BadInput) as e:
        catalog.lookup("aws", "k80")
    assert e.value.exit_code == 2
    for name in catalog.GPUS:
        assert name in e.value.line()


def test_gpu_a_cloud_lacks_names_what_that_cloud_has():
    with pytest.raises(BadInput) as e:
        catalog.lookup("gcp", "l40s")
    line = e.value.line()
    assert "gcp does not offer" in line and "t4" in line and "h100" in line and "a10g" not in line


def test_count_not_offered_names_the_valid_counts():
    with pytest.raises(BadInput) as e:
        catalog.lookup("aws", "t4", 3)
    assert "t4:1" in e.value.line() and "t4:4" in e.value.line()
    with pytest.raises(BadInput) as e:
        catalog.lookup("aws", "a100", 1)
    assert "a100:8" in e.value.line()


# --- choose(spec): every flag against the catalog, no I/O -------------------------------


def test_defaults_are_the_first_listed_location():
    aws = catalog.choose(spec("aws"))
    assert (aws.region, aws.zone) == ("us-east-1", None)
    gcp = catalog.choose(spec("gcp"))
    assert (gcp.region, gcp.zone) == ("us-central1", "us-central1-a")
    assert catalog.choose(spec("azure")).region == "eastus2"


def test_region_and_zone_are_resolved_per_cloud():
    assert catalog.choose(spec("aws", zone="us-west-2b")).region == "us-west-2"
    g = catalog.choose(spec("gcp", region="europe-west1"))
    assert (g.region, g.zone) == ("europe-west1", "europe-west1-b")
    g = catalog.choose(spec("gcp", zone="us-east1-d"))
    assert (g.region, g.zone) == ("us-east1", "us-east1-d")


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(provider="aws", region="eu-north-1"), ["not offered in eu-north-1", "us-east-1", "ap-south-1"]),
        (dict(provider="aws", zone="us-east-1"), ["invalid --zone"]),
        (dict(provider="aws", region="us-east-2", zone="us-west-2a"), ["not in --region us-east-2"]),
        (dict(provider="gcp", zone="us-central1-z"), ["not offered in zone us-central1-z", "us-central1-a"]),
        (dict(provider="gcp", region="asia-east1"), ["not offered in asia-east1", "europe-west1", "us-central1"]),
        (dict(provider="azure", zone="1"), ["takes no --zone"]),
        (dict(provider="azure", region="eastus"), ["eastus2", "northcentralus"]),
        (dict(provider="gcp", disk_gb=20), ["smaller than", "50"]),
        (dict(provider="aws", nodes=40), ["limit of 16"]),
        (dict(provider="azure", gpu="a100:2"), ["a100:8"]),
    ],
)
def test_bad_flags_are_refused_naming_the_choices(kw, words):
    gpu = kw.pop("gpu", "t4")
    provider = kw.pop("provider")
    with pytest.raises(BadInput) as e:
        catalog.choose(spec(provider, gpu, **kw))
    assert e.value.exit_code == 2
    for w in words:
        assert w in e.value.line()


def test_v100_on_the_aws_deep_learning_image_is_refused():
    with pytest.raises(BadInput) as e:
        catalog.choose(spec("aws", "v100"))
    assert "--image ubuntu" in e.value.line()
    assert catalog.choose(spec("aws", "v100", image="ubuntu")).offer.instance_type == "p3.2xlarge"


def test_missing_gpu_is_refused():
    with pytest.raises(BadInput, match="needs --gpu"):
        catalog.choose(ClusterSpec(name="c1", provider="aws"))


# --- `cloudtrain gpus` ------------------------------------------------------------------


def run_cli(capsys, *argv):
    from cloudtrain.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_gpus_json_has_every_row_with_source(capsys):
    code, out, _ = run_cli(capsys, "gpus", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(offers())
    assert all(r["source"] and r["date"] for r in rows)


def test_gpus_filters_by_provider(capsys):
    code, out, _ = run_cli(capsys, "gpus", "--provider", "gcp")
    assert code == 0
    assert "a2-highgpu-1g" in out and "g4dn.xlarge" not in out and "n1-standard-4 + nvidia-tesla-t4" in out


def test_gpus_unknown_provider_is_one_line_exit_2(capsys):
    code, out, err = run_cli(capsys, "gpus", "--provider", "oracle")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "aws, gcp, azure" in err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--provider", "aws", "--gpu", "k80"], "unknown GPU 'k80'"),
        (["--provider", "aws", "--gpu", "t4:3"], "t4:1, t4:4"),
        (["--provider", "gcp", "--gpu", "t4", "--zone", "asia-east1-c"], "us-central1-a"),
        (["--provider", "azure", "--gpu", "h100", "--disk-gb", "40"], "--disk-gb 64 or more"),
    ],
)
def test_up_refuses_bad_cloud_flags_in_a_real_process(cli, home, args, words):
    """Through the installed entry point, on a machine with no Pulumi CLI and no credentials."""
    from conftest import one_line_error

    proc = cli("up", *args, "--ssh-cidr", "198.51.100.7/32", timeout=60)
    assert proc.returncode == 2
    assert words in one_line_error(proc)
    assert not list((home / "clusters").glob("*/cluster.json"))


def test_candidates_start_with_the_choice_then_its_region_then_other_regions():
    spec = ClusterSpec(name="c", provider="gcp", gpu="t4")
    got = catalog.candidates(spec)
    assert got[0] == catalog.choose(spec)
    regions = [c.region for c in got]
    # one region's zones together, the chosen region first
    assert regions[: regions.count(got[0].region)] == [got[0].region] * regions.count(got[0].region)
    assert len({(c.region, c.zone) for c in got}) == len(got)
    assert len(got) == len(got[0].offer.locations)


def test_candidates_keep_a_pinned_region_or_zone():
    zone = catalog.lookup("gcp", "t4").locations[0]
    assert [c.zone for c in catalog.candidates(ClusterSpec(name="c", provider="gcp", gpu="t4", zone=zone))] == [zone]
    region = zone.rsplit("-", 1)[0]
    assert {c.region for c in catalog.candidates(ClusterSpec(name="c", provider="gcp", gpu="t4", region=region))} == {region}
    aws = catalog.candidates(ClusterSpec(name="c", provider="aws", gpu="t4", region="us-east-2"))
    assert [(c.region, c.zone) for c in aws] == [("us-east-2", None)]
