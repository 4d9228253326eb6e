"""The stand-in system commands of the GPU sandbox (tests/gpu_sandbox.py): one program,
linked under each command's name (nvidia-smi, apt-get, ...), that records its call and answers
from the sandbox's state file. Run as a program only, never imported.
"""
import fnmatch, json, os, sys
from pathlib import Path

box = Path(os.environ["SANDBOX"])
name = Path(sys.argv[0]).name
args = sys.argv[1:]
state = json.loads((box / "state.json").read_text())
with open(box / "calls.jsonl", "a") as f:
    f.write(json.dumps([name, *args]) + "\n")
root = Path(os.environ["CLOUDTRAIN_SYSROOT"])


def save():
    (box / "state.json").write_text(json.dumps(state, indent=1))


def out(text=""):
    if text:
        print(text)


def nvidia_smi():
    if not state.get("loaded"):
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", file=sys.stderr)
        sys.exit(9)
    gpu, version = state["gpu"], state["loaded"]
    query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
    if query:
        values = {"name": gpu["name"], "driver_version": version, "memory.total": str(gpu["memory_mb"]), "compute_cap": gpu["cc"]}
        out(", ".join(values[f] for f in query.split(",")))
    elif "-L" in args:
        out(f"GPU 0: {gpu['name']} (UUID: GPU-0000)")
    else:
        cuda = state["driver_cuda"][version.split(".")[0]]
        out(f"| NVIDIA-SMI {version}    Driver Version: {version}    CUDA Version: {cuda}     |")


def apt_get():
    if state.get("lock_busy", 0) > 0:
        print("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 812 (unattended-upgr)", file=sys.stderr)
        sys.exit(100)
    if state.get("first_boot", {}).get("polls", 0) > 0:
        print("E: a second driver install while the image's own first-boot installer still runs", file=sys.stderr)
        sys.exit(100)
    if "update" in args and "cuda-keyring" in state["packages"] and state.get("nvidia_repo_file"):
        # A repository named twice with two keys (apt's own message).
        print("E: Conflicting values set for option Signed-By regarding source "
              "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/ /: "
              "/usr/share/keyrings/cuda-archive-keyring.gpg != /usr/share/keyrings/nvidia-cuda.gpg", file=sys.stderr)
        sys.exit(100)
    words, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "-o":
            skip = True
        elif not a.startswith("-"):
            words.append(a)
    action, pkgs = words[0], words[1:]
    if action != "install":
        return
    packages = state["packages"]
    for p in pkgs:
        if p.startswith("/"):
            if not Path(p).exists():
                print(f"E: Unsupported file {p} given on commandline", file=sys.stderr)
                sys.exit(100)
            packages["cuda-keyring"] = "1.1-1"
            continue
        archive = state.get("archive", {})
        nvidia_repo = p.startswith(("cuda-", "nvidia-open", "nvidia-driver-pinning-", "cudnn"))
        if nvidia_repo and "cuda-keyring" not in packages and not state.get("nvidia_repo_file"):
            print(f"E: Unable to locate package {p}", file=sys.stderr)
            sys.exit(100)
        ubuntu_driver = p.startswith("linux-modules-nvidia-") or (p.startswith(("nvidia-utils-", "libnvidia-compute-")) and p.endswith("-server"))
        if ubuntu_driver and p not in archive:
            print(f"E: Unable to locate package {p}", file=sys.stderr)
            sys.exit(100)
        packages[p] = archive.get(p, "1")
        if p.startswith("linux-modules-nvidia-") and p[len("linux-modules-nvidia-"):].split("-")[0] + "-server" in p:
            branch = p[len("linux-modules-nvidia-"):].split("-")[0]
            packages[f"nvidia-kernel-common-{branch}-server"] = archive.get(f"nvidia-utils-{branch}-server", "1")
            state["installed_driver"] = archive.get(f"nvidia-utils-{branch}-server", "1").split("-")[0]
            state["modules"] = "open" if "-server-open-" in p else "proprietary"
            state["signed"] = True
        if p.startswith("nvidia-driver-pinning-"):
            state["pinned"] = p.rsplit("-", 1)[1]
        if p in state["driver_packages"]:
            version = state["driver_packages"][p]
            flavour = "-open" if p.startswith("nvidia-open") else ""
            if isinstance(version, dict):  # R590+ names carry no branch: the pinned one, else the newest
                version = version.get(state.get("pinned") or "", max(version.values()))
                deps = (f"nvidia-dkms{flavour}", "libnvidia-compute", "nvidia-kernel-common")
            else:
                branch = version.split(".")[0]
                deps = (f"nvidia-driver-{branch}{flavour}", f"libnvidia-compute-{branch}", f"nvidia-kernel-common-{branch}")
            for dep in deps:
                packages[dep] = version
            state["installed_driver"] = version
        if p.startswith("cuda-toolkit-"):
            nvcc = root / f"usr/local/cuda-{p[len('cuda-toolkit-'):].replace('-', '.')}/bin/nvcc"
            nvcc.parent.mkdir(parents=True, exist_ok=True)
            nvcc.write_text("#!/bin/sh\n")
            nvcc.chmod(0o755)
    save()


def dpkg_query():
    fmt = next((a[3:] for a in args if a.startswith("-f=")), "")
    patterns = [a for a in args if not a.startswith("-")]
    found = [p for p in state["packages"] if any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    if not found:
        print(f"dpkg-query: no packages found matching {' '.join(patterns)}", file=sys.stderr)
        sys.exit(1)
    for p in sorted(found):
        sys.stdout.write(fmt.replace("${Package}", p).replace("${Status}", "install ok installed").replace("\\n", "\n"))


def apt_mark():
    if args[0] == "hold":
        state["held"] = sorted(set(state["held"]) | set(args[1:]))
        save()
        for p in args[1:]:
            out(f"{p} set on hold.")
    elif args[0] == "unhold":
        state["held"] = sorted(set(state["held"]) - set(args[1:]))
        save()
        for p in args[1:]:
            out(f"Canceled hold on {p}.")


def fuser():
    if state.get("lock_busy", 0) > 0:
        state["lock_busy"] -= 1
        save()
        out("/var/lib/dpkg/lock-frontend:   812")
        sys.exit(0)
    sys.exit(1)


def lspci():
    out("00:00.0 0600: 8086:1237 (rev 02)")
    if state["pci"]:
        out("00:1e.0 0302: 10de:1eb8 (rev a1)")


def reboot():
    # Booting loads whatever driver is installed.
    state["loaded"] = state.get("installed_driver")
    state["reboots"] = state.get("reboots", 0) + 1
    save()


def uname():
    out({"-r": state.get("kernel", "6.8.0-1015-aws"), "-m": "x86_64"}.get(args[0] if args else "", "Linux"))


def apt_cache():
    # `apt-cache policy PKG`: a Candidate line when the archive has it, "(none)" when it doesn't.
    if args[:1] != ["policy"]:
        return
    for p in args[1:]:
        version = state.get("archive", {}).get(p)
        if version is None and p in state["packages"]:
            version = state["packages"][p]
        if version is not None or p in state.get("known", []):
            out(f"{p}:\n  Installed: (none)\n  Candidate: {version or '(none)'}\n  Version table:")


def first_boot_step():
    """The image's own first-boot driver installer: running for `polls` more looks, then done."""
    fb = state.get("first_boot") or {}
    if fb.get("polls", 0) <= 0:
        return False
    fb["polls"] -= 1
    if fb["polls"] == 0:  # it finishes now: this look finds it gone
        state["installed_driver"] = fb["driver"]
        state["packages"][f"nvidia-driver-{fb['driver'].split('.')[0]}-open"] = fb["driver"]
        if fb.get("loads"):
            state["loaded"] = fb["driver"]
    save()
    return fb["polls"] > 0


def pgrep():
    if "-f" in args and first_boot_step():
        out("4242")
        return
    sys.exit(1)


def systemctl():
    # `systemctl show -p ActiveState --value UNIT`
    unit = args[-1]
    out(state.get("units", {}).get(unit, "inactive"))


def cloud_init():
    if args[:1] == ["status"]:
        out("status: done")
        sys.exit(state.get("cloud_init_rc", 0))


def curl():
    target = args[args.index("-o") + 1]
    Path(target).write_bytes(b"!<arch>\ncuda-keyring\n")


def mokutil():
    out("SecureBoot enabled" if state.get("secure_boot") else "SecureBoot disabled")


def modinfo():
    # `modinfo -F version|license nvidia`: the installed module's, loaded or not.
    if not state.get("installed_driver"):
        print("modinfo: ERROR: Module nvidia not found.", file=sys.stderr)
        sys.exit(1)
    field = args[args.index("-F") + 1] if "-F" in args else "version"
    out(state["installed_driver"] if field == "version" else {"open": "Dual MIT/GPL", "proprietary": "NVIDIA"}[state.get("modules", "open")])


handlers = {
    "nvidia-smi": nvidia_smi, "apt-get": apt_get, "dpkg-query": dpkg_query, "apt-mark": apt_mark,
    "fuser": fuser, "lspci": lspci, "reboot": reboot, "uname": uname, "curl": curl, "mokutil": mokutil,
    "modinfo": modinfo, "apt-cache": apt_cache, "pgrep": pgrep, "systemctl": systemctl, "cloud-init": cloud_init,
}
handlers.get(name, lambda: None)()
