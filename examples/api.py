"""cloudtrain's Python API end to end: up, run, read the metrics, down.

    python examples/api.py                     # a local cluster: free, needs OpenSSH's sshd
    python examples/api.py --provider ssh --host me@gpu-box
    python examples/api.py --provider gcp --gpu t4 --framework torch --script examples/mnist.py

The `with` block downs the cluster on the way out, after bringing every owed output home.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cloudtrain
from cloudtrain.errors import CloudtrainError, JobFailed

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--provider", default="local")
    p.add_argument("--framework", default="none")
    p.add_argument("--gpu")
    p.add_argument("--host", action="append", default=[], help="--provider ssh: user@host[:port]")
    p.add_argument("--name", default="api-example")
    p.add_argument("--script", default=str(HERE / "linear_fit" / "train.py"), help="its folder is what ships")
    p.add_argument("--output", default="runs/api-example", help="where the job's outputs land")
    a = p.parse_args()
    # cloudtrain's progress lines go to the "cloudtrain" logger; show them on stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("cloudtrain: %(message)s"))
    logging.getLogger("cloudtrain").addHandler(handler)
    logging.getLogger("cloudtrain").setLevel(logging.INFO)

    try:
        with cloudtrain.up(provider=a.provider, framework=a.framework, gpu=a.gpu, hosts=a.host, name=a.name) as cluster:
            job = cluster.run(a.script, env={"EPOCHS": "30"}, output=a.output, output_mode="replace")
            print(f"job {job.job_id}: exit {job.exit_code}, outputs in {job.output}")
            print("final metrics:", job.metrics)
            print("epochs recorded:", len(job.series))
    except JobFailed as e:
        print(f"the job failed: {e.line()}", file=sys.stderr)
        return e.exit_code
    except CloudtrainError as e:
        print(f"cloudtrain: error: {e.line()}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
