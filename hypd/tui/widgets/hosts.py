"""The hosts panel: each host's state and CPU slots, each GPU's utilisation and memory as
bars, and who uses it (a hypd run, someone else, nobody)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.widget import Widget

from hypd.tui.model import fmt_mib
from hypd.tui.widgets.common import bar, tight


def short_gpu_name(name: str) -> str:
    for prefix in ("NVIDIA ", "GeForce ", "Tesla "):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def gpu_user(gpu: Mapping[str, Any]) -> tuple[str, str]:
    """Who uses a GPU, and the style to say it in."""
    if gpu.get("runs"):
        return " ".join(gpu["runs"]), "$text-accent bold"
    if not gpu.get("allowed", True):
        return "not for hypd", "$text-muted"
    if gpu.get("foreign"):
        return "someone else", "$text-warning bold"
    return "free", "$text-success"


def gpu_models(gpus: list[Mapping[str, Any]]) -> str:
    """"4× A100-SXM4-40GB", or "2× A100, 1× H100" for a mixed host."""
    counts: dict[str, int] = {}
    for gpu in gpus:
        name = short_gpu_name(gpu.get("name", "?"))
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n}× {name}" for name, n in counts.items())


# How each host state is shown: (state, why).
HOST_STATE_STYLE = {
    "up": ("$text-success", "$text-success"),
    "draining": ("$text-warning bold", "$text-warning"),
    "down": ("$text-error bold", "$text-error"),
}


def host_lines(host: Mapping[str, Any], width: int) -> list[Content]:
    lines: list[Content] = []
    muted = "$text-muted"
    state = host.get("state", "?")
    state_style, why_style = HOST_STATE_STYLE.get(state, ("$text-warning bold", "$text-warning"))
    slots, used = host.get("cpu_slots", 0), host.get("cpu_used", 0)
    gpus = host.get("gpus") or []
    head: list[Any] = [(host.get("name", "?"), "bold"), "  ", (state, state_style)]
    if host.get("why"):
        head.append((f" ({host['why']})", why_style))
    if "partition" in host:  # a Slurm cluster: its queue, not GPUs hypd sees
        idle = "?" if host.get("idle_gpus") is None else str(host["idle_gpus"])
        head += [("  slurm ", muted), f"{host['partition']}", ("  jobs ", muted),
                 f"{host.get('jobs_running', 0)} running, {host.get('jobs_queued', 0)} queued",
                 (f" (max {host.get('max_jobs', '?')})", muted), ("  idle GPUs ", muted), idle]
        return [tight(*head)]
    head += [("  cpu ", muted), bar(used / slots if slots else None, 6, "$primary"), f" {used}/{slots}"]
    if gpus:
        head += [("  ·  ", muted), (gpu_models(gpus), muted)]
    if host.get("labels"):
        head += [("  ·  ", muted), (" ".join(f"#{x}" for x in host["labels"]), "$accent")]
    lines.append(tight(*head))
    if not gpus:
        if state == "down":
            # Its GPU reading is only "host ... is down: <why>" again.
            lines.append(tight(("   no GPU readings while it is down", "$text-muted italic")))
        else:
            note = host.get("gpu_error") or "none found"
            lines.append(tight(("   no GPUs: ", muted), (note, "$text-muted italic")))
        return lines
    mixed = len({g.get("name") for g in gpus}) > 1
    # " 0 " [name] util-bar " 97% " mem-bar " 30.5/40G " user
    fixed = 3 + 6 + 11
    user_room = 12
    name_w = 10 if mixed else 0
    bw = max(4, min(16, (width - fixed - user_room - name_w) // 2))
    for gpu in gpus:
        user, user_style = gpu_user(gpu)
        util = gpu.get("utilization_pct")
        total = gpu.get("memory_total_mib") or 0
        used_mib = gpu.get("memory_used_mib") or 0
        fill = "$warning" if gpu.get("foreign") else ("$primary" if gpu.get("runs") else "$success")
        parts: list[Any] = [(f"{gpu.get('index', '?'):>2} ", "bold")]
        if mixed:
            name = short_gpu_name(gpu.get("name", ""))
            parts.append((f"{name[:name_w - 1]:<{name_w}}", muted))
        util_text = "  -" if util is None else f"{util:>3}"
        parts += [bar(None if util is None else util / 100, bw, fill), f" {util_text}% ",
                  bar(used_mib / total if total else None, bw, fill), f" {mem_text(used_mib, total):>9} ",
                  (user, user_style)]
        lines.append(tight(*parts))
    return lines


def mem_text(used: float, total: float) -> str:
    if total >= 1024:
        return f"{used / 1024:.1f}/{total / 1024:.0f}G"
    return f"{fmt_mib(used)}/{fmt_mib(total)}"


class HostsPanel(Widget):
    """Every host, kept current by the app's `hosts_changed` signal."""

    DEFAULT_CSS = """
    HostsPanel {
        height: auto;
        width: 1fr;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def on_mount(self) -> None:
        self.app.hosts_changed.subscribe(self, lambda _: self.refresh(layout=True))  # type: ignore[attr-defined]

    def render(self) -> Content:
        hosts = self.app.hosts  # type: ignore[attr-defined]
        if not hosts:
            return Content.assemble(("no hosts yet", "$text-muted italic"))
        width = self.size.width or 80
        lines: list[Content] = []
        for name in sorted(hosts, key=lambda n: (n != "local", n)):
            lines.extend(host_lines(hosts[name], width))
        return Content("\n").join(lines)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        hosts = self.app.hosts  # type: ignore[attr-defined]
        return max(1, sum(1 + max(1, len(h.get("gpus") or [])) for h in hosts.values()))
