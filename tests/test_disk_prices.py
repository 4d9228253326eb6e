"""What a stopped cluster still bills: its disks, in $/month, from the cited rows of
catalog/sources/disk_prices.csv and the disk size the program was given (the spec's diskGb).

The status test stops a real (moto) EC2 cluster the way test_power_aws builds one and runs the
`status` command in this process, so EC2's answer comes from moto, not the network."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from cloudtrain.catalog import disks
from cloudtrain.cli import cluster as cli_cluster
from cloudtrain.machine import Cluster, Node
from cloudtrain.provisioner import power_aws
from cloudtrain.provisioner.contract import CLUSTER_TAG
from cloudtrain.spec import ClusterSpec
from cloudtrain.state import ClusterRecord, Store

REPO = Path(__file__).resolve().parent.parent


def _spec(provider: str, **kw) -> ClusterSpec:
    return ClusterSpec(name="c", provider=provider, gpu="t4", gpu_count=1, **kw)


def test_every_row_is_cited_dated_and_quoted() -> None:
    with disks.SOURCE.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["cloud"] for r in rows} == {"aws", "gcp", "azure"}
    for r in rows:
        assert r["source_url"].startswith("http") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["retrieved"]) and r["quote"], r
        if r["usd_per_disk_month"]:  # a tier's whole monthly price, as quoted
            assert f"${r['usd_per_disk_month']}" in r["quote"], r
    by = {r["cloud"]: r for r in rows if r["usd_per_gb_month"]}
    assert "$0.08 " in by["aws"]["quote"] and "us-east-1" in by["aws"]["quote"]
    assert float(by["gcp"]["usd_per_gb_month"]) == 3.00 / 30 and "30 GiB USD 3.00" in by["gcp"]["quote"]  # derived, as its note says


@pytest.mark.parametrize("provider, program, disk_type", [
    ("aws", "cloudtrain/provisioner/aws.py", 'volume_type="gp3"'),
    ("gcp", "cloudtrain/provisioner/gcp.py", 'type="pd-balanced"'),
    ("azure", "cloudtrain/provisioner/azure.py", 'storage_account_type="Premium_LRS"'),
])
def test_the_priced_disk_type_is_the_one_the_program_creates(provider: str, program: str, disk_type: str) -> None:
    assert disk_type in (REPO / program).read_text()  # the Pulumi program's root disk
    assert disks.stopped_cost(_spec(provider)).disk_type == disk_type.split('"')[1]


def test_figures_per_cloud() -> None:
    aws = disks.stopped_cost(_spec("aws", nodes=2, disk_gb=100, region="eu-west-1"))
    assert aws.usd_per_month == 16.0 and aws.line() == "disks: 2 × 100 GB, ~$16.00/month while stopped (gp3, us-east-1 list price)"
    gcp = disks.stopped_cost(_spec("gcp", nodes=1, disk_gb=250))
    assert gcp.usd_per_month == 25.0 and "us-central1 list price" in gcp.line()
    # Azure bills Premium SSD per tier: 100 GB is the 128 GB tier; below it a smaller tier, not in
    # the sources, may bill, hence "up to". 300 GB is the 512 GB tier; 200 GB's tier has no price.
    az = disks.stopped_cost(_spec("azure", nodes=2, disk_gb=100))
    assert az.usd_per_month == 39.42 and az.at_most and "up to ~$39.42/month" in az.line() and "128 GB tier" in az.line()
    assert disks.stopped_cost(_spec("azure", nodes=1, disk_gb=512)).line().endswith("~$73.22/month while stopped (Premium_LRS, 512 GB tier, list price, region not stated by its source)")
    unpriced = disks.stopped_cost(_spec("azure", nodes=1, disk_gb=200))
    assert unpriced.usd_per_month is None and "256 GB tier's price is not in the sources" in unpriced.line()
    assert disks.stopped_cost(_spec("azure", nodes=1, disk_gb=9000)).usd_per_month is None
    assert disks.stopped_cost(_spec("local")) is None


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch, home: Path):
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def _stopped_cluster(ec2, name: str, disk_gb: int) -> None:
    """A 2-node AWS cluster recorded in the store as `up` leaves it, then stopped by its watchdog."""
    vpc = ec2.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.78.1.0/24")["Subnet"]["SubnetId"]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    made = ec2.run_instances(ImageId="ami-0cloudtrain0000000", MinCount=2, MaxCount=2, InstanceType="g4dn.xlarge", SubnetId=subnet,
                             TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": CLUSTER_TAG, "Value": name}]}])["Instances"]
    ids = [i["InstanceId"] for i in made]
    live = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    nodes = tuple(Node(f"{name}-{n}", live[i]["PublicIpAddress"], 22, "ubuntu", "ssh-ed25519 AAAA", live[i]["PrivateIpAddress"]) for n, i in enumerate(ids))
    spec = ClusterSpec(name=name, provider="aws", gpu="t4", gpu_count=1, nodes=2, region="us-east-1", disk_gb=disk_gb, ssh_cidr="198.51.100.7/32")
    record = ClusterRecord(spec=spec, cluster=Cluster(name, nodes, Path("/nonexistent")), status="ready")
    power_aws.remember(record)
    cdir = Store().cluster_dir(name)
    cdir.create(provider="aws")
    cdir.save(record)
    ec2.stop_instances(InstanceIds=ids)


def test_status_of_a_stopped_cloud_cluster_says_what_its_disks_bill(ec2, capsys: pytest.CaptureFixture) -> None:
    _stopped_cluster(ec2, "ct-disks", disk_gb=100)
    cli_cluster.status(as_json=False, cloud=False, provider=None)
    out = capsys.readouterr().out
    assert "stopped (" in out and "  disks: 2 × 100 GB, ~$16.00/month while stopped (gp3, us-east-1 list price)" in out

    cli_cluster.status(as_json=True, cloud=False, provider=None)
    row = json.loads(capsys.readouterr().out)["clusters"][0]
    assert row["status"] == "stopped" and row["disks"]["usd_per_month"] == 16.0 and row["disks"]["disk_gb"] == 100


def test_a_running_cluster_shows_no_disk_line(ec2, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    _stopped_cluster(ec2, "ct-disks", disk_gb=100)
    for r in ec2.describe_instances()["Reservations"]:
        ec2.start_instances(InstanceIds=[i["InstanceId"] for i in r["Instances"]])
    monkeypatch.setattr(cli_cluster, "mark_silent_nodes", lambda clusters: None)  # moto's addresses answer nothing: no probe
    cli_cluster.status(as_json=True, cloud=False, provider=None)
    row = json.loads(capsys.readouterr().out)["clusters"][0]
    assert row["status"] == "ready" and row["disks"] is None


def test_down_counts_the_disks_over_their_whole_life() -> None:
    from cloudtrain import lifecycle

    class Priced:  # the one thing _cost_line asks of a provisioner
        def hourly_price(self, spec: ClusterSpec) -> float:
            return 0.5

    spec = _spec("aws", nodes=2, disk_gb=100)
    # 1 h of machine time, disks alive for 15 days (stopped most of it): half of a 30-day month of $16.
    line = lifecycle._cost_line(Priced(), spec, 3600, 15 * 86400)
    assert line == "ran 1h00m, ~$0.50 at $0.50/h, disks ~$8.00 over 360h00m"
    assert "disks" not in lifecycle._cost_line(Priced(), _spec("local"), 3600, 86400)
