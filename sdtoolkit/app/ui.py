"""The page: Gradio controls wired to :class:`sdtoolkit.app.actions.Actions`, one model, one run at a time.

Every heavy button shares one queue slot (``concurrency_id="model"``): a waiting user sees their place in the
queue. A :class:`sdtoolkit.UsageError` becomes its one-line message in the status box (``#status``), the other
outputs stay as they were, and the server logs that line, no traceback. Progress: the API's bars
(``sdtoolkit.BarState``), the CLI's tqdm bars, drawn by Gradio's progress bar.
"""
from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Callable

import gradio as gr

import sdtoolkit as sd
from sdtoolkit.app.actions import CONTROLS, Actions, tau_list, words_of
from sdtoolkit.app.sessions import folder_name

__all__ = ["build"]

LOG = logging.getLogger("sdtoolkit.app")
TAUS = ("tau_v", "tau_c", "tau_s", "tau_u")
TAU_HELP = {
    "tau_v": "fraction of steps whose target value path reads the learned M_t input",
    "tau_c": "fraction of steps with the source's cross-attention injected",
    "tau_s": "fraction of steps with the source's self-attention injected",
    "tau_u": "fraction of steps with the unconditional self-attention injected (P2Plus)",
}
AUTO = "auto (by word counts)"


def _reporter(progress: gr.Progress) -> Callable[["sd.BarState"], None]:
    """The API's progress callback drawing each bar in the page: count of total and the bar's text."""
    def report(state: "sd.BarState") -> None:
        progress((int(state.n), int(state.total) if state.total else None), desc=state.text())
    return report


def _handled(outputs: int) -> Callable:
    """Wrap a handler returning ``(note, results…)``: its UsageError becomes ``(message, skip…)`` for its
    ``outputs`` results (the status box first), logged as one line."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except sd.UsageError as exc:
                message = " ".join(str(exc).split())
                LOG.warning("refused: %s", message)
                return (f"**Error:** {message}", *(gr.skip() for _ in range(outputs)))
        return handler
    return wrap


def _edit_type(choice: str) -> str | None:
    return None if choice == AUTO else choice


def build(actions: Actions, model_name: str, out_root: Path) -> gr.Blocks:
    """The app's page on ``actions`` (one loaded model); generated edits are written under ``out_root``."""
    examples = actions.example_names()
    defaults = sd.RECOMMENDED_TAUS
    with gr.Blocks(title="StyleDiffusion editor", delete_cache=(900, 3600)) as page:
        gr.Markdown(f"# StyleDiffusion: edit a real image with a prompt\nModel: `{model_name}`. Invert an image "
                    "(Source), then edit it with a changed prompt (Edit). Every edit shows the command line that "
                    "remakes it from the downloaded inversion.")
        status = gr.Markdown(elem_id="status")
        with gr.Tab("Source"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label=CONTROLS["image_path"], file_types=["image"], type="filepath",
                                     elem_id="upload")
                    example = gr.Dropdown(examples, value=None, label="…or an example", elem_id="example")
                    prompt = gr.Textbox(label=CONTROLS["prompt"], placeholder="a photo of a cat", elem_id="prompt")
                    method = gr.Dropdown(list(sd.METHODS), value="stylediffusion", label=CONTROLS["inversion"])
                    schedule = gr.Dropdown(list(sd.SCHEDULES), value="reference", label=CONTROLS["schedule"])
                    first = sd.method_defaults("stylediffusion")
                    with gr.Row():
                        inner = gr.Number(first["num_inner_steps"], label=CONTROLS["num_inner_steps"], precision=0,
                                          info="the method's published value", elem_id="inner")
                        steps = gr.Number(first["num_ddim_steps"], label=CONTROLS["num_ddim_steps"], precision=0,
                                          info="the method's published value", elem_id="steps")
                        guidance = gr.Number(first["guidance_scale"], label=CONTROLS["guidance_scale"],
                                             info="the method's published value", elem_id="guidance")
                    with gr.Row():
                        seed = gr.Number(0, label=CONTROLS["seed"], precision=0)
                        resolution = gr.Number(0, label=CONTROLS["resolution"], precision=0,
                                               info="0: the model's", elem_id="resolution")
                        keep_aspect = gr.Checkbox(False, label=CONTROLS["keep_aspect"])
                    invert_btn = gr.Button("Invert", variant="primary", elem_id="invert")
                with gr.Column():
                    panels = gr.Image(label="input | VAE reconstruction | reconstruction", format="png",
                                      interactive=False, elem_id="reconstruction")
                    figures = gr.JSON(label="figures", elem_id="figures")
                    bundle = gr.File(label="download the inversion (source image, safetensors + JSON sidecar)",
                                     interactive=False, elem_id="bundle")
        with gr.Tab("Edit"):
            with gr.Row():
                with gr.Column():
                    inversion = gr.Dropdown([], value=None, label=CONTROLS["index"], elem_id="inversion", allow_custom_value=True,
                                            info="this session's inversions, newest first")
                    source_prompt = gr.Textbox(label="source prompt of the inversion", interactive=False)
                    target = gr.Textbox(label=CONTROLS["target"], elem_id="target")
                    edit_type = gr.Radio([AUTO, "Replacement", "Refinement"], value=AUTO,
                                         label=CONTROLS["edit_type"], elem_id="edit_type")
                    sliders = {name: gr.Slider(0, 1, value=float(defaults[name]), step=0.05, label=CONTROLS[name],
                                               info=TAU_HELP[name], elem_id=name) for name in TAUS}
                    with gr.Row():
                        blend_src = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label=f"{CONTROLS['blend_word']}: source",
                                                elem_id="blend_src")
                        blend_tgt = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label=f"{CONTROLS['blend_word']}: target",
                                                elem_id="blend_tgt")
                    with gr.Row():
                        rw_word = gr.Dropdown([], value=None, label=f"{CONTROLS['eq_params']}: word", allow_custom_value=True)
                        rw_factor = gr.Number(2.0, label=f"{CONTROLS['eq_params']}: factor")
                    with gr.Row():
                        tc_word = gr.Dropdown([], value=None, label="tau_c per word: word", allow_custom_value=True)
                        tc_value = gr.Slider(0, 1, value=0.3, step=0.05, label="tau_c per word: fraction")
                    edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
                with gr.Column():
                    edited = gr.Image(label="edited", format="png", interactive=False, elem_id="edited")
                    command = gr.Textbox(label="the same edit from the command line (after unzipping the inversion)",
                                         interactive=False, elem_id="command", buttons=["copy"])
                    edit_files = gr.File(label="download the edit (PNG + JSON sidecar)", file_count="multiple",
                                         interactive=False)
                    grid = gr.Image(label="input | VAE reconstruction | reconstruction | edited", format="png",
                                    interactive=False)
                    overlay = gr.Image(label="LocalBlend mask over the edit (red: may change)", format="png",
                                       interactive=False, elem_id="overlay")
                    src_maps = gr.Image(label="cross-attention per token: source", format="png", interactive=False)
                    tgt_maps = gr.Image(label="cross-attention per token: target", format="png", interactive=False)
            with gr.Accordion("Sweep: every combination of tau lists", open=False):
                lists = {name: gr.Textbox(str(defaults[name]), label=f"{CONTROLS[name]} values",
                                          elem_id=f"sweep_{name}") for name in TAUS}
                sweep_btn = gr.Button("Sweep", elem_id="sweep")
                gallery = gr.Gallery(label="sweep", columns=4, format="png", elem_id="gallery")
                sweep_files = gr.File(label="download the sweep", file_count="multiple", interactive=False)
        with gr.Tab("Generated image"):
            gr.Markdown("P2Plus on an image the model generates from a seed (no inversion), as `p2plus.py`.")
            with gr.Row():
                with gr.Column():
                    g_prompt = gr.Textbox(label=CONTROLS["prompt"], elem_id="g_prompt")
                    g_target = gr.Textbox(label=CONTROLS["target"], elem_id="g_target")
                    g_type = gr.Radio([AUTO, "Replacement", "Refinement"], value=AUTO, label=CONTROLS["edit_type"])
                    with gr.Row():
                        g_seed = gr.Number(2720, label=CONTROLS["seed"], precision=0)
                        g_steps = gr.Number(50, label=CONTROLS["num_ddim_steps"], precision=0)
                        g_guidance = gr.Number(7.5, label=CONTROLS["guidance_scale"])
                    g_sliders = {name: gr.Slider(0, 1, value=float(sd.P2PLUS_TAUS[name]), step=0.05,
                                                 label=CONTROLS[name], info=TAU_HELP[name]) for name in TAUS[1:]}
                    with gr.Row():
                        g_blend_src = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                                  label=f"{CONTROLS['blend_word']}: source")
                        g_blend_tgt = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                                  label=f"{CONTROLS['blend_word']}: target")
                    g_btn = gr.Button("Generate and edit", variant="primary", elem_id="generate")
                with gr.Column():
                    g_grid = gr.Image(label="generated | edited", format="png", interactive=False, elem_id="g_grid")
                    g_src_maps = gr.Image(label="cross-attention per token: source", format="png", interactive=False)
                    g_tgt_maps = gr.Image(label="cross-attention per token: target", format="png", interactive=False)
                    g_files = gr.File(label="download", file_count="multiple", interactive=False)

        def published(method_name: str):
            values = sd.method_defaults(method_name)
            return values["num_inner_steps"], values["num_ddim_steps"], values["guidance_scale"]

        quiet = dict(queue=False, show_progress="hidden")
        one_at_a_time = dict(concurrency_id="model", concurrency_limit=1)  # every button that runs the model
        method.change(published, method, [inner, steps, guidance], **quiet)

        # ---- word pickers follow the prompts (once typed: on leaving the box or Enter) ---------------------------
        def choices(text: str, chosen: list[str] | None):
            words = words_of(text)
            return gr.update(choices=words, value=[w for w in chosen or () if w in words])

        def single(text: str, chosen: str | None):
            words = words_of(text)
            return gr.update(choices=words, value=chosen if chosen in words else None)

        def follow_target(text, blend_words, reweighted, per_word):
            return choices(text, blend_words), single(text, reweighted), single(text, per_word)

        gr.on([target.blur, target.submit], follow_target, [target, blend_tgt, rw_word, tc_word],
              [blend_tgt, rw_word, tc_word], **quiet)
        source_prompt.change(choices, [source_prompt, blend_src], blend_src, **quiet)
        gr.on([g_prompt.blur, g_prompt.submit], choices, [g_prompt, g_blend_src], g_blend_src, **quiet)
        gr.on([g_target.blur, g_target.submit], choices, [g_target, g_blend_tgt], g_blend_tgt, **quiet)

        def pick(request: gr.Request, label: str | None):
            kept = actions.sessions.get(request.session_hash, label)
            return kept.inverted.config.prompt if kept else ""

        inversion.input(pick, [inversion], source_prompt, **quiet)

        # ---- invert ----------------------------------------------------------------------------------------------
        @_handled(5)
        def do_invert(file, example_name, text, method_name, schedule_name, inner_steps, num_steps, scale, seed_value,
                      size, aspect, request: gr.Request, progress=gr.Progress()):
            image = actions.image_file(file, example_name)
            view = actions.invert(request.session_hash, image, text, method=method_name, schedule=schedule_name,
                                  num_inner_steps=_int(inner_steps), num_ddim_steps=_int(num_steps),
                                  guidance_scale=None if scale is None else float(scale), seed=_int(seed_value) or 0,
                                  resolution=_int(size) or None, keep_aspect=bool(aspect), progress=_reporter(progress))
            labels = actions.sessions.labels(request.session_hash)
            return (" ".join(view.messages), view.panels, view.figures, str(view.bundle),
                    gr.update(choices=labels, value=view.label), text)

        invert_btn.click(do_invert, [upload, example, prompt, method, schedule, inner, steps, guidance, seed,
                                     resolution, keep_aspect],
                         [status, panels, figures, bundle, inversion, source_prompt],
                         api_name="invert", **one_at_a_time)

        # ---- edit and sweep ----------------------------------------------------------------------------------
        def edit_args(kind, src_words, tgt_words, word, factor, per_word, per_word_value) -> dict:
            """The edit's keywords of :meth:`Actions.edit` from the Edit tab's controls."""
            return dict(edit_type=_edit_type(kind), blend=(src_words or (), tgt_words or ()),
                        reweight={word: float(factor)} if word else None,
                        tau_c_words={per_word: float(per_word_value)} if per_word else None)

        shared = [inversion, target, edit_type, blend_src, blend_tgt, rw_word, rw_factor, tc_word, tc_value]

        @_handled(7)
        def do_edit(label, text, kind, src_words, tgt_words, word, factor, per_word, per_word_value, tv, tc, ts, tu,
                    request: gr.Request, progress=gr.Progress()):
            view = actions.edit(request.session_hash, label, text, taus=dict(zip(TAUS, (tv, tc, ts, tu))),
                                progress=_reporter(progress),
                                **edit_args(kind, src_words, tgt_words, word, factor, per_word, per_word_value))
            out = view.edited[0]
            return ("", out.edited, view.command, [str(p) for p in view.files], out.grid, out.blend_overlay,
                    out.source_attention, out.attention)

        edit_btn.click(do_edit, [*shared, *sliders.values()],
                       [status, edited, command, edit_files, grid, overlay, src_maps, tgt_maps],
                       api_name="edit", **one_at_a_time)

        @_handled(2)
        def do_sweep(label, text, kind, src_words, tgt_words, word, factor, per_word, per_word_value, tv, tc, ts, tu,
                     request: gr.Request, progress=gr.Progress()):
            taus = {name: tau_list(value, CONTROLS[name]) for name, value in zip(TAUS, (tv, tc, ts, tu))}
            view = actions.edit(request.session_hash, label, text, taus=taus, sweep=True, progress=_reporter(progress),
                                **edit_args(kind, src_words, tgt_words, word, factor, per_word, per_word_value))
            return ("", [(e.edited, " ".join(f"{k} {v}" for k, v in e.taus.as_dict().items())) for e in view.edited],
                    [str(p) for p in view.files])

        sweep_btn.click(do_sweep, [*shared, *lists.values()], [status, gallery, sweep_files],
                        api_name="sweep", **one_at_a_time)

        # ---- generated ------------------------------------------------------------------------------------------
        @_handled(4)
        def do_generate(text, text_target, kind, seed_value, num_steps, scale, tc, ts, tu, src_words, tgt_words,
                        request: gr.Request, progress=gr.Progress()):
            view = actions.generated(text, text_target, seed=_int(seed_value) or 0, edit_type=_edit_type(kind),
                                     taus=dict(zip(TAUS[1:], (tc, ts, tu))), blend=(src_words or (), tgt_words or ()),
                                     num_ddim_steps=_int(num_steps) or 50, guidance_scale=float(scale),
                                     out=out_root / "generated" / folder_name(request.session_hash),
                                     progress=_reporter(progress))
            out = view.edited
            return "", out.grid, out.source_attention, out.attention, [str(p) for p in view.files]

        g_btn.click(do_generate, [g_prompt, g_target, g_type, g_seed, g_steps, g_guidance, *g_sliders.values(),
                                  g_blend_src, g_blend_tgt], [status, g_grid, g_src_maps, g_tgt_maps, g_files],
                    api_name="generate", **one_at_a_time)
    return page


def _int(value) -> int | None:
    """A number field's value as an int (None when empty)."""
    return None if value is None or value == "" else int(value)


def default_out_root() -> Path:
    """A fresh folder in the system's temp folder (Gradio serves outputs from there; nothing else is served)."""
    return Path(tempfile.mkdtemp(prefix="sdtoolkit-app-"))
