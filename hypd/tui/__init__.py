"""`hypd tui`: the live dashboard (Textual).

    make_app(client) -> HypdApp   the app, talking through an hypd.ipc.AsyncClient (or
                                  anything with its `call` and `events`)
    run_tui(socket_path) -> int   what `hypd tui` runs

It imports Textual and hypd.ipc, never Ax or torch.
"""

from hypd.tui.app import HypdApp, make_app, run_tui

__all__ = ["HypdApp", "make_app", "run_tui"]
