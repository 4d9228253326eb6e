"""The GPU catalog: its data is complete and sourced, and every bad flag is refused naming the choices."""

from __future__ import annotations

import json
import re
from dataclasses import replace

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
        # GCP zones are region-letter, AWS zones region+letter; Azure lists regions.
        pattern = {"gcp": r"^[a-z]+-[a-z]+\d-[a-z]$", "aws": r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$", "azure": r"^[a-z0-9]+$"}[o.provider]
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
    # AWS without --zone: the region's first offering zone (failover walks the others).
    assert (aws.region, aws.zone) == ("us-east-1", "us-east-1a")
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
        (dict(provider="aws", region="il-central-1"), ["not offered in il-central-1", "us-east-1", "ap-south-1"]),
        (dict(provider="aws", zone="il-central-1a"), ["not offered in zone il-central-1a", "us-east-1a"]),
        (dict(provider="aws", region="US-EAST"), ["invalid --region", "us-east-1"]),
        (dict(provider="aws", zone="us-east-1"), ["invalid --zone"]),
        (dict(provider="aws", region="us-east-2", zone="us-west-2a"), ["not in --region us-east-2"]),
        (dict(provider="gcp", zone="us-central1-z"), ["not offered in zone us-central1-z", "us-central1-a"]),
        (dict(provider="gcp", region="us-east5"), ["not offered in us-east5", "europe-west1", "us-central1"]),
        (dict(provider="gcp", region="africa-south1"), ["no zones of africa-south1", "--zone africa-south1-a"]),
        (dict(provider="azure", zone="1"), ["takes no --zone"]),
        (dict(provider="azure", gpu="h100", region="westus2"), ["not offered in westus2", "eastus2", "westus3"]),
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
        (["--provider", "gcp", "--gpu", "t4", "--zone", "us-central1-z"], "us-central1-a"),
        (["--provider", "gcp", "--gpu", "h100"], "--spot"),
        (["--provider", "azure", "--gpu", "a10"], "GRID"),
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
    assert [(c.region, c.zone) for c in aws] == [("us-east-2", z) for z in ("us-east-2a", "us-east-2b", "us-east-2c")]


# --- the generated catalog (issue 10): built from the sources, the review's rows fixed ------


def test_generator_output_equals_the_committed_catalog():
    from importlib import resources

    from cloudtrain.catalog import build

    for name, text in build.build().items():
        assert resources.files("cloudtrain.catalog").joinpath(name).read_text() == text, f"{name} is stale"


def test_build_check_fails_on_a_hand_edited_catalog(tmp_path, monkeypatch, capsys):
    import shutil

    from cloudtrain.catalog import build

    shutil.copytree(build.HERE, tmp_path / "catalog", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build, "HERE", tmp_path / "catalog")
    monkeypatch.setattr(build, "SRC", tmp_path / "catalog" / "sources")
    assert build.main(["--check"]) == 0
    gpus = tmp_path / "catalog" / "gpus.csv"
    gpus.write_text(gpus.read_text().replace("g4dn.xlarge,,4,16", "g4dn.xlarge,,4,32"))
    assert build.main(["--check"]) == 1 and "gpus.csv" in capsys.readouterr().err
    assert build.main([]) == 0 and build.main(["--check"]) == 0  # a build repairs it


@pytest.mark.parametrize("gpu, itype", [("a10g", "g5.xlarge"), ("l4", "g6.xlarge"), ("l40s", "g6e.xlarge"), ("a100:8", "p4d.24xlarge"), ("h100:8", "p5.48xlarge")])
def test_aws_sizes_the_review_found_refused_are_offered_in_us_east_1(gpu, itype):
    c = catalog.choose(spec("aws", gpu, region="us-east-1"))
    assert (c.offer.instance_type, c.region) == (itype, "us-east-1") and c.zone.startswith("us-east-1")


def test_aws_rows_the_review_names():
    p5 = catalog.lookup("aws", "h100", 1)
    assert (p5.instance_type, p5.vcpus, p5.ram_gb, p5.gpu_mem_gb) == ("p5.4xlarge", 16, 256, 80)
    g12, g48 = catalog.lookup("aws", "l40s", 4), catalog.lookup("aws", "l40s", 8)
    assert (g12.instance_type, g12.vcpus, g12.ram_gb) == ("g6e.12xlarge", 48, 384)
    assert (g48.instance_type, g48.vcpus, g48.ram_gb) == ("g6e.48xlarge", 192, 1536)
    g6e_regions = {z[:-1] for z in catalog.lookup("aws", "l40s").locations}
    assert {"us-east-1", "eu-central-1", "ap-northeast-1"} <= g6e_regions
    # The mid-2025 price cut (overrides.csv), not the stale snapshot.
    assert catalog.lookup("aws", "a100", 8).price_in("us-east-1") == 21.96
    assert catalog.lookup("aws", "h100", 8).price_in("us-east-1") == 55.04
    assert catalog.choose(spec("aws", "h100:8", region="us-east-2")).hourly == catalog.lookup("aws", "h100", 8).price_in("us-east-2")
    assert {"h200", "b200"} <= {o.gpu for o in catalog.for_provider("aws")}


def test_retired_sizes_are_gone():
    types = {o.instance_type for o in offers()}
    assert not [t for t in types if t.startswith("p3")]
    assert not [t for t in types if re.match(r"Standard_NC\d+r?s_v3$", t)]
    assert "v100" not in {o.gpu for o in catalog.for_provider("aws")} | {o.gpu for o in catalog.for_provider("azure")}
    assert "v100" in {o.gpu for o in catalog.for_provider("gcp")}


def test_gcp_rows_the_review_names():
    assert [catalog.lookup("gcp", "l4", n).instance_type for n in (2, 4, 8)] == ["g2-standard-24", "g2-standard-48", "g2-standard-96"]
    for region in ("us-east4", "europe-west4"):
        c = catalog.choose(spec("gcp", "t4", region=region))
        assert c.region == region and c.zone.startswith(region + "-")


def test_gcp_a3_with_fewer_than_8_gpus_is_spot_only():
    for n in (1, 2, 4):
        with pytest.raises(BadInput) as e:
            catalog.choose(spec("gcp", f"h100:{n}"))
        assert "spot only" in e.value.line() and "--spot" in e.value.line() and "h100:8" in e.value.line()
        assert catalog.choose(spec("gcp", f"h100:{n}", spot=True)).offer.instance_type == f"a3-highgpu-{n}g"
    assert catalog.choose(spec("gcp", "h100:8")).offer.instance_type == "a3-highgpu-8g"  # on demand


def test_azure_a10_is_refused_with_the_reason():
    for kw in ({}, {"spot": True}):
        with pytest.raises(BadInput) as e:
            catalog.choose(spec("azure", "a10", **kw))
        assert "GRID" in e.value.line() and e.value.exit_code == 2


def test_aws_candidates_walk_the_zones_then_regions_by_price():
    s = ClusterSpec(name="c", provider="aws", gpu="t4")
    got = catalog.candidates(s)
    assert got[0] == catalog.choose(s) and all(c.zone and c.zone[:-1] == c.region for c in got)
    first_region = [c for c in got if c.region == "us-east-1"]
    assert got[: len(first_region)] == first_region and len(first_region) == 5  # moto: 1a,1b,1c,1d,1f
    offer = got[0].offer

    def order(spot):
        regions = list(dict.fromkeys(c.region for c in catalog.candidates(replace(s, spot=spot))))[1:]
        prices = [offer.price_in(r, spot=spot) for r in regions]
        known = [p for p in prices if p is not None]
        assert known == sorted(known) and prices[: len(known)] == known
        return regions

    assert order(False) != order(True)  # spot prices rank regions differently


@pytest.mark.parametrize(
    "provider, kw, where",
    [
        ("aws", dict(region="mx-central-1"), ("mx-central-1", None)),  # newer than moto's data
        ("azure", dict(region="westeurope"), ("westeurope", None)),  # the Azure source is US-only
        ("gcp", dict(zone="africa-south1-a"), ("africa-south1", "africa-south1-a")),
    ],
)
def test_a_region_the_sources_do_not_cover_is_left_to_pre_flight(provider, kw, where):
    c = catalog.choose(spec(provider, **kw))
    assert (c.region, c.zone) == where
    assert catalog.candidates(spec(provider, **kw)) == [c]
    assert c.hourly is None  # no price there in the sources, and no guess


def test_an_aws_zone_of_an_offered_region_is_left_to_pre_flight():
    # Zone names map to physical zones per account: moto's list is one account's.
    c = catalog.choose(spec("aws", zone="us-east-1e"))
    assert (c.region, c.zone) == ("us-east-1", "us-east-1e")


# --- `cloudtrain gpus` flags ------------------------------------------------------------


def test_gpus_gpu_filter_and_price_sort(capsys):
    code, out, _ = run_cli(capsys, "gpus", "--gpu", "h100", "--sort", "price", "--json")
    rows = json.loads(out)
    assert code == 0 and rows and {r["gpu"] for r in rows} == {"h100"}
    prices = [r["price_hour"] for r in rows]
    known = [p for p in prices if p is not None]
    assert known == sorted(known) and prices[: len(known)] == known  # unknown prices last
    assert [r["instance_type"] for r in rows][0] == "a3-highgpu-1g"  # not catalog order (aws first)


def test_gpus_spot_shows_spot_prices(capsys):
    _, out, _ = run_cli(capsys, "gpus", "--provider", "aws", "--gpu", "t4:1", "--spot")
    row = next(line for line in out.splitlines() if "g4dn.xlarge" in line)
    assert "g4dn.12xlarge" not in out  # a count filters too
    offer = catalog.lookup("aws", "t4")
    assert "spot $/h" in out and f"${offer.spot_hour:.3f}" in row and f"${offer.price_hour:.3f}" not in row
    _, out, _ = run_cli(capsys, "gpus", "--provider", "aws", "--gpu", "t4", "--sort", "price", "--spot")
    spots = [float(m) for m in re.findall(r"\$(\d+\.\d+)", out)]
    assert spots == sorted(spots)


def test_gpus_json_keeps_source_date_and_restriction(capsys):
    _, out, _ = run_cli(capsys, "gpus", "--provider", "gcp", "--gpu", "h100", "--json")
    rows = {r["count"]: r for r in json.loads(out)}
    assert rows[1]["restriction"].startswith("spot-only") and rows[8]["restriction"] is None
    assert "overrides.csv" in rows[1]["source"] and rows[1]["date"] and rows[1]["prices"]
    (why,) = rows[1]["overrides"]
    assert why["kind"] == "restrict" and "gpuhunt/pull/176" in why["source"] and why["date"]


@pytest.mark.parametrize("args, words", [(["--sort", "cost"], "price"), (["--gpu", "k80"], "unknown GPU"), (["--provider", "gcp", "--gpu", "l40s"], "no catalog row"), (["--gpu", "t4:x"], "invalid --gpu")])
def test_gpus_bad_flags_are_one_line_exit_2(capsys, args, words):
    code, out, err = run_cli(capsys, "gpus", *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err


def test_gpus_imports_nothing_of_the_cloud_extra():
    import subprocess
    import sys

    code = "import sys; from cloudtrain.cli import main\ntry: main(['gpus', '--json'])\nexcept SystemExit: pass\n" \
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'pulumi', 'google', 'azure', 'paramiko')]\n" \
        "print('HEAVY', heavy, file=sys.stderr)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stderr, proc.stderr[-500:]


def test_the_aws_extract_is_moto_s_own_data(tmp_path, monkeypatch):
    """The committed AWS extract is what the extractor reads from the installed moto (AWS's
    DescribeInstanceTypes/Offerings answers), not typed; a newer moto means: re-extract."""
    moto = pytest.importorskip("moto")
    if moto.__version__ != "5.2.5":
        pytest.skip(f"the extract is from moto 5.2.5, this is {moto.__version__}: rerun the extractor")
    from cloudtrain.catalog import extract

    committed = extract.SOURCES
    monkeypatch.setattr(extract, "SOURCES", tmp_path)
    extract.write_moto()
    for name in ("aws-moto-types.csv", "aws-moto-zones.csv", "aws-moto-regions.csv"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name
