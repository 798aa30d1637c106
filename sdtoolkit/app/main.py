"""``python app.py`` / ``sdtoolkit-app``: load the model once and serve the editing page (docs/app.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sdtoolkit as sd
from sdtoolkit.app.actions import Actions
from sdtoolkit.app.sessions import Sessions

EXAMPLES = Path(__file__).resolve().parents[2] / "example_images"
"""The repository's example images (offered in the page when the folder exists)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="sd_1_4",
                   help="sd_1_4, sd_1_5, sd_2_1_base, sd_2_1, sdxl, a hub id, a local diffusers folder, toy (the "
                        "shipped toy model) or tiny (random weights: noise)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="network precision")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 makes the app reachable from other machines")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--examples", default=str(EXAMPLES), help="folder of example images offered in the page")
    p.add_argument("--output_dir", default=None,
                   help="where inversions and edits are written (default: a new folder in the system's temp folder)")
    p.add_argument("--per_session", type=int, default=3, help="inversions kept per browser session (LRU)")
    p.add_argument("--max_sessions", type=int, default=16, help="browser sessions kept (LRU)")
    return p


def check(args: argparse.Namespace) -> None:
    """The flags checked before the model loads."""
    if not 0 < args.port < 65536:
        raise sd.UsageError(f"--port {args.port} is not a port number in [1, 65535]")
    for flag in ("per_session", "max_sessions"):
        if getattr(args, flag) < 1:
            raise sd.UsageError(f"--{flag} {getattr(args, flag)} must be >= 1")
    if args.output_dir is not None and Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise sd.UsageError(f"--output_dir {args.output_dir!r} exists and is not a folder")


def serve(args: argparse.Namespace, block: bool = True):
    """Load the model, build the page and launch it; returns Gradio's (app, local URL, share URL)."""
    from sdtoolkit.app.ui import build, default_out_root  # gradio: imported once the flags are checked

    model = sd.load(args.model, device=args.device, dtype=args.dtype)
    out_root = Path(args.output_dir) if args.output_dir else default_out_root()
    out_root.mkdir(parents=True, exist_ok=True)
    actions = Actions(model, Sessions(out_root / "sessions", args.per_session, args.max_sessions), Path(args.examples))
    page = build(actions, model.model_id, out_root)
    page.queue(default_concurrency_limit=1)
    allowed = [str(out_root)] + ([str(actions.examples)] if actions.examples is not None else [])
    return page.launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=allowed,
                       prevent_thread_lock=not block, quiet=not block, show_error=False)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check(args)
    serve(args)
    return 0


def console(argv: list[str] | None = None) -> int:
    """The entry point: a UsageError or a failed model load is one line and exit status 2."""
    try:
        return main(argv)
    except sd.UsageError as exc:
        print(f"app.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
