"""A fake `nvidia-smi` for tests: GPUs come from a JSON state file the test rewrites at will.

    bin_dir = tmp_path / "bin"
    state = tmp_path / "gpus.json"
    install_fake_nvidia_smi(bin_dir, state)
    write_gpu_state(state, [{"index": 0, "memory_used_mib": 0}, {"index": 1, "memory_used_mib": 9000}])
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

The script has the interpreter and the state file's path baked in, so it works where the
environment is not passed on (over SSH, under `env -i`). It uses the standard library only.

State file: {"gpus": [{index, uuid, name, memory_total_mib, memory_used_mib, utilization_pct,
pids}, ...]}; or {"fail": "message", "exit_code": 9} to fail like a broken driver; a missing
file fails the same way. Optional top-level keys: "sleep" (seconds to wait before answering,
for timeouts) and "raw" (text printed as is for a --query-gpu, for garbage output).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_NAME = "NVIDIA Fake A100"
DEFAULT_TOTAL_MIB = 40960
DRIVER_FAILURE = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                  "Make sure that the latest NVIDIA driver is installed and running.")


def fake_uuid(index: int) -> str:
    """The uuid a GPU gets when the state does not give one."""
    return f"GPU-fa4e0000-0000-4000-8000-{index:012d}"


def gpu(index: int, *, memory_used_mib: int = 0, utilization_pct: int | None = 0,
        memory_total_mib: int = DEFAULT_TOTAL_MIB, name: str = DEFAULT_NAME, uuid: str | None = None,
        pids: list[int] | None = None) -> dict[str, Any]:
    """A GPU dict for `write_gpu_state`, defaults filled."""
    return {"index": index, "uuid": uuid or fake_uuid(index), "name": name,
            "memory_total_mib": memory_total_mib, "memory_used_mib": memory_used_mib,
            "utilization_pct": utilization_pct, "pids": list(pids or [])}


def write_gpu_state(state_file: Path, gpus: list[dict[str, Any]], **extra: Any) -> None:
    """Write the GPUs the fake reports from now on (atomically: a looping fake never sees half).

    Each dict needs `index`; uuid, name, memory_total_mib, memory_used_mib (0),
    utilization_pct (0; None prints "[N/A]") and pids ([]) have defaults. `extra` goes to the
    top level (sleep=..., raw=...).
    """
    full = []
    for g in gpus:
        d = gpu(int(g["index"]))
        d.update({k: v for k, v in g.items() if v is not None or k == "utilization_pct"})
        if not d.get("uuid"):
            d["uuid"] = fake_uuid(d["index"])
        full.append(d)
    _write_json(state_file, {"gpus": full, **extra})


def write_gpu_failure(state_file: Path, message: str = DRIVER_FAILURE, exit_code: int = 9) -> None:
    """Make the fake fail as a broken driver does: print `message`, exit `exit_code`."""
    _write_json(state_file, {"fail": message, "exit_code": exit_code})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def install_fake_nvidia_smi(bin_dir: Path, state_file: Path, python: str = sys.executable) -> Path:
    """Write an executable `bin_dir/nvidia-smi` reading `state_file`; returns its path.

    `python` is the interpreter in its `#!` line (a path without spaces).
    """
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    body = _SCRIPT.replace("@STATE@", repr(str(Path(state_file).absolute())))
    script.write_text(f"#!{python} -S\n{body}")
    script.chmod(0o755)
    return script


_SCRIPT = r'''
# A fake nvidia-smi written by tests/fakes/nvidia_smi.py. Stdlib only; starts fast.
import json
import sys
import time

STATE = @STATE@
FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "memory.free", "utilization.gpu")
UNITS = {"memory.total": " [MiB]", "memory.used": " [MiB]", "memory.free": " [MiB]",
         "utilization.gpu": " [%]", "used_memory": " [MiB]"}
APP_FIELDS = ("gpu_uuid", "pid", "used_memory", "process_name", "gpu_name")
FAILURE = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
           "Make sure that the latest NVIDIA driver is installed and running.")


def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def die(message, code):
    out(message + "\n")
    sys.exit(code)


def state():
    try:
        with open(STATE) as f:
            data = json.load(f)
    except (OSError, ValueError):
        die(FAILURE, 9)
    if data.get("fail"):
        die(str(data["fail"]), int(data.get("exit_code", 9)))
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    return data


def na(value):
    return "[N/A]" if value is None else str(value)


def gpu_value(g, field, units):
    total = int(g.get("memory_total_mib", 40960))
    used = int(g.get("memory_used_mib", 0))
    unit = UNITS.get(field, "") if units else ""
    if field == "index":
        return str(g["index"])
    if field == "uuid":
        return g.get("uuid") or "GPU-fa4e0000-0000-4000-8000-%012d" % int(g["index"])
    if field == "name":
        return g.get("name", "NVIDIA Fake A100")
    if field == "memory.total":
        return str(total) + unit
    if field == "memory.used":
        return str(used) + unit
    if field == "memory.free":
        return str(total - used) + unit
    value = g.get("utilization_pct", 0)
    return na(value) if value is None or isinstance(value, str) else str(value) + unit


def gpus(data):
    return sorted(data.get("gpus", []), key=lambda g: int(g["index"]))


def query_gpu(fields, fmt):
    data = state()
    if "raw" in data:
        return data["raw"]
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(f + ("" if "nounits" in fmt else UNITS.get(f, "")) for f in fields))
    for g in gpus(data):
        lines.append(", ".join(gpu_value(g, f, "nounits" not in fmt) for f in fields))
    return "".join(line + "\n" for line in lines)


def query_apps(fields, fmt):
    data = state()
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(f + ("" if "nounits" in fmt else UNITS.get(f, "")) for f in fields))
    for g in gpus(data):
        pids = g.get("pids") or []
        for pid in pids:
            row = {"gpu_uuid": gpu_value(g, "uuid", False), "pid": str(pid),
                   "used_memory": str(int(g.get("memory_used_mib", 0)) // len(pids))
                   + ("" if "nounits" in fmt else " MiB"),
                   "process_name": "python", "gpu_name": gpu_value(g, "name", False)}
            lines.append(", ".join(row[f] for f in fields))
    return "".join(line + "\n" for line in lines)


def listing(fields, fmt):
    data = state()
    return "".join("GPU %s: %s (UUID: %s)\n" % (g["index"], gpu_value(g, "name", False),
                                                gpu_value(g, "uuid", False)) for g in gpus(data))


def summary(fields, fmt):
    data = state()
    lines = ["Fake NVIDIA-SMI 550.00    Driver Version: 550.00    CUDA Version: 12.4"]
    for g in gpus(data):
        lines.append("| %s  %-24s | %5sMiB / %5sMiB | %4s%% |" % (
            g["index"], gpu_value(g, "name", False), gpu_value(g, "memory.used", False),
            gpu_value(g, "memory.total", False), gpu_value(g, "utilization.gpu", False)))
    return "".join(line + "\n" for line in lines)


def fields_of(spec, allowed, what):
    fields = [f.strip() for f in spec.split(",") if f.strip()]
    for f in fields:
        if f not in allowed:
            die('Field "%s" is not a valid field to query.\n\n%s' % (f, what), 2)
    return fields


def main(argv):
    action, fields, fmt, period = summary, [], "csv", None
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--query-gpu", "--query-compute-apps", "--format", "-l", "--loop", "-lms",
                    "--loop-ms") and not eq:
            if not args:
                die("Option %s requires a value. Please run 'nvidia-smi -h' for help." % name, 2)
            value = args.pop(0)
        if name == "--query-gpu":
            action, fields = query_gpu, fields_of(value, FIELDS, "--query-gpu")
        elif name == "--query-compute-apps":
            action, fields = query_apps, fields_of(value, APP_FIELDS, "--query-compute-apps")
        elif name == "--format":
            fmt = [f.strip() for f in value.split(",")]
            if "csv" not in fmt:
                die('"%s" is not a valid format. Use csv.' % value, 2)
        elif name in ("-l", "--loop"):
            period = float(value or 5)
        elif name in ("-lms", "--loop-ms"):
            period = float(value) / 1000.0
        elif name in ("-L", "--list-gpus"):
            action = listing
        else:
            die("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.", 2)
    if period is None:
        out(action(fields, fmt))
        return 0
    try:
        while True:
            start = time.monotonic()
            out(action(fields, fmt))
            time.sleep(max(0.0, period - (time.monotonic() - start)))
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


sys.exit(main(sys.argv[1:]))
'''
