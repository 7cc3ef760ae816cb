"""The hosts panel: each host's state and CPU slots, each GPU's utilisation and memory as
bars, and who uses it (a hypd run, someone else, nobody)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textual.content import Content
from textual.widget import Widget

from hypd.tui.model import fmt_mib
from hypd.tui.widgets.common import bar


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
        return "busy: someone else", "$text-warning bold"
    return "free", "$text-success"


def host_lines(host: Mapping[str, Any], width: int) -> list[Content]:
    lines: list[Content] = []
    state = host.get("state", "?")
    state_style = "$text-success" if state == "up" else "$text-warning bold"
    slots, used = host.get("cpu_slots", 0), host.get("cpu_used", 0)
    head: list[Any] = [(host.get("name", "?"), "bold"), "  ", (state, state_style)]
    if host.get("why"):
        head.append((f" ({host['why']})", "$text-warning"))
    bw = max(4, min(12, (width - 30) // 3))
    head += ["  cpu ", bar(used / slots if slots else None, bw, "$accent"), f" {used}/{slots}"]
    lines.append(Content.assemble(*head))
    gpus = host.get("gpus") or []
    if not gpus:
        note = host.get("gpu_error") or "none found"
        lines.append(Content.assemble(("  no GPUs: ", "$text-muted"), (note, "$text-muted italic")))
        return lines
    # index, name, util bar + %, mem bar + used/total, user
    bw = max(4, min(16, (width - 38) // 4))
    nw = max(6, min(18, (width - 38) // 4))
    for gpu in gpus:
        user, user_style = gpu_user(gpu)
        util = gpu.get("utilization_pct")
        total = gpu.get("memory_total_mib") or 0
        used_mib = gpu.get("memory_used_mib") or 0
        fill = "$warning" if gpu.get("foreign") else ("$accent" if gpu.get("runs") else "$success")
        name = short_gpu_name(gpu.get("name", ""))
        if len(name) > nw:
            name = name[: nw - 1] + "…"
        util_text = "  -" if util is None else f"{util:>3}"
        mem_text = f"{fmt_mib(used_mib)}/{fmt_mib(total)}"
        lines.append(Content.assemble(
            (f" {gpu.get('index', '?'):>2} ", "bold"), (name.ljust(nw), "$text-muted"), " ",
            bar(None if util is None else util / 100, bw, fill), f" {util_text}%  ",
            bar(used_mib / total if total else None, bw, fill), f" {mem_text:>11}  ",
            (user, user_style),
        ))
    return lines


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
        for name in sorted(hosts):
            lines.extend(host_lines(hosts[name], width))
        return Content("\n").join(lines)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        hosts = self.app.hosts  # type: ignore[attr-defined]
        return max(1, sum(1 + max(1, len(h.get("gpus") or [])) for h in hosts.values()))
