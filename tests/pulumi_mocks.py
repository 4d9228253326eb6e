"""Pulumi mocks shared by the program and stack tests: record registrations, answer like a cloud."""

from __future__ import annotations

from typing import Any, Callable

import pulumi


class Recorder(pulumi.runtime.Mocks):
    """Records every registration; answers with the inputs plus what the cloud would compute."""

    def __init__(self, offerings: dict[str, list[str]] | None = None) -> None:
        self.resources: list[tuple[str, str, dict[str, Any]]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.count = 0
        # instance type -> zones EC2's DescribeInstanceTypeOfferings answers; by default the
        # region's zones a, b, c, d, f (unsorted: g4dn's us-east-1 set in moto's offerings data)
        self.offerings = offerings

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.count += 1
        self.resources.append((args.typ, args.name, args.inputs))
        out = dict(args.inputs)
        out.setdefault("name", args.name)
        n = self.count
        if args.typ == "aws:ec2/instance:Instance":
            out.update(publicIp=f"203.0.113.{n}", privateIp=f"10.77.1.{n}", primaryNetworkInterfaceId=f"eni-{n:08x}")
        elif args.typ == "gcp:compute/resourcePolicy:ResourcePolicy":
            out["selfLink"] = f"https://www.googleapis.com/compute/v1/projects/p/regions/r/resourcePolicies/{args.name}"
        elif args.typ == "aws:ec2/keyPair:KeyPair":
            out["keyName"] = args.name
        elif args.typ == "aws:s3/bucketV2:BucketV2":
            out.update(bucket=f"{args.name}-x1", arn=f"arn:aws:s3:::{args.name}-x1")
        elif args.typ == "aws:iam/role:Role":
            out["arn"] = f"arn:aws:iam::123456789012:role/{args.name}"
        elif args.typ == "gcp:serviceaccount/account:Account":
            out["email"] = f"{args.inputs['accountId']}@p.iam.gserviceaccount.com"
        elif args.typ == "gcp:compute/instance:Instance":
            nic = dict(out["networkInterfaces"][0])
            nic.update(networkIp=f"10.78.0.{n}", accessConfigs=[{"natIp": f"203.0.113.{n}"}])
            out["networkInterfaces"] = [nic]
        elif args.typ == "azure-native:compute:VirtualMachine" and "identity" in out:
            out["identity"] = {**out["identity"], "principalId": f"principal-of-{args.name}", "tenantId": "tenant"}
        elif args.typ == "azure-native:network:PublicIPAddress":
            out["ipAddress"] = f"203.0.113.{n}"
        elif args.typ == "azure-native:network:NetworkInterface":
            cfg = dict(out["ipConfigurations"][0])
            cfg["privateIPAddress"] = f"10.79.1.{n}"
            out["ipConfigurations"] = [cfg]
        return f"{args.name}-id", out

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append((args.token, args.args))
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0cloudtrain", "name": "mock image"}, []
        if args.token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            (wanted,) = [f["values"] for f in args.args["filters"] if f["name"] == "instance-type"]
            region = args.args.get("region") or "us-east-1"
            zones = [z for t in wanted for z in (self.offerings or {}).get(t, [f"{region}{x}" for x in "fabcd"])]
            return {"locations": zones, "locationTypes": ["availability-zone"] * len(zones), "instanceTypes": wanted * len(zones)}, []
        raise AssertionError(f"unexpected invoke {args.token}")

    def of(self, typ: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, inputs) for t, name, inputs in self.resources if t == typ]


def run_mocked(build: Callable[[], Any], offerings: dict[str, list[str]] | None = None) -> tuple[Recorder, Any]:
    """Run `build()` as a Pulumi program under fresh mocks; return the recorder and the resolved value."""
    rec = Recorder(offerings)
    pulumi.runtime.set_mocks(rec, project="cloudtrain", stack="test", preview=False)
    box: dict[str, Any] = {}

    @pulumi.runtime.test
    def go():
        return pulumi.Output.from_input(build()).apply(lambda v: box.update(value=v))

    go()
    return rec, box.get("value")
