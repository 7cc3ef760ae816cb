"""What hypd runs on a Slurm cluster's login node once a tick (python3 3.6+, stdlib only;
its source is sent each time, nothing is installed).

It reads a request (JSON) on stdin and answers one JSON object on stdout:
- "squeue"/"sinfo"/"sacct": each command given, run once: [exit status, stdout, stderr];
- "logs": for [key, path, offset] each, [size, base64 of the bytes from offset on]
  (at most max_bytes a log, max_total in all), the log's size read after `squeue` ran, so that a job that
  squeue saw ended has its whole output here;
- "exits": for [key, path] each, the exit file's text, or null when there is none;
- "expand": the given path with ~ expanded (where runs live on the shared filesystem).
"""

import base64
import json
import os
import subprocess
import sys


def run(argv):
    if not argv:
        return None
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    except OSError as exc:
        return [127, "", f"{argv[0]}: {exc.strerror or exc}"]
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return [124, out, f"{argv[0]}: no answer within 60 s"]
    return [proc.returncode, out, err]


def read_log(path, offset, limit):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            data = f.read(max(0, min(limit, size - offset)))
    except OSError:
        return [-1, ""]
    return [size, base64.b64encode(data).decode("ascii")]


def read_exit(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def main():
    request = json.loads(sys.stdin.read() or "{}")
    answer = {}
    for name in ("squeue", "sinfo", "sacct"):
        if request.get(name):
            answer[name] = run(request[name])
    limit = int(request.get("max_bytes", 1 << 20))
    budget = int(request.get("max_total", 16 << 20))  # one answer stays small; the rest comes next tick
    answer["logs"] = {}
    for key, path, offset in request.get("logs", []):
        answer["logs"][key] = read_log(path, offset, max(0, min(limit, budget)))
        budget -= len(answer["logs"][key][1]) * 3 // 4
    answer["exits"] = dict((key, read_exit(path)) for key, path in request.get("exits", []))
    if request.get("expand"):
        answer["expand"] = os.path.expanduser(request["expand"])
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
