"""PIE-Bench's table reproduced: each method at its published setting, measured beside the published numbers.

The parts of ``benchmarks/pie_table.py`` (:mod:`sdtoolkit.cli.pie_table` runs them) that are not running or scoring:

* the published numbers, read from ``pie_published.json`` beside this module (method -> metric -> value in the
  table's units, each row citing its table; a method without a published row says why): :func:`load_published`;
* each method's published setting (T = 50 for every row as PIE-Bench's runners, the method's own inner steps and
  guidance — EDICT's 3 —, the reference schedule, the mask-free track) and which command-line overrides move a
  run away from it: :func:`published_setting`, :func:`setting_changes`;
* the plan: UNet passes per image by formula and the GPU time they cost from the per-pass times measured in
  ``benchmarks/RESULTS.md`` (:func:`planned_passes`, :func:`pass_seconds`);
* the table: measured | published | difference per method and editing type, with the UNet passes and seconds per
  image the cases' sidecars recorded and the provenance of every row (:func:`build_table`, :func:`markdown`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from sdtoolkit.core.errors import UsageError
from sdtoolkit.core.schedules import step_plan
from sdtoolkit.core.settings import InversionMethod, Schedule
from sdtoolkit.evaluation.pie_metrics import TABLE_UNITS
from sdtoolkit.jobs.pie import Track
from sdtoolkit.methods.inversions import EdictInversion, EditFriendlyInversion

PUBLISHED_FILE = Path(__file__).with_name("pie_published.json")
TABLE_METHODS: tuple[InversionMethod, ...] = (
    InversionMethod.DDIM, InversionMethod.NULLTEXT, InversionMethod.NPI, InversionMethod.STYLEDIFFUSION,
    InversionMethod.DIRECT, InversionMethod.EDIT_FRIENDLY, InversionMethod.EDICT, InversionMethod.PROXNPI)
"""The methods run by default: PIE-Bench's Prompt-to-Prompt rows this toolkit implements (docs/method.md §5, §9)."""
PUBLISHED_DDIM_STEPS = 50
"""T of every P2P row of PIE-Bench's table (its runners' NUM_DDIM_STEPS)."""
NOT_COMPARABLE = "NOT COMPARABLE WITH THE PUBLISHED TABLE"


# ----------------------------------------------------------------------------------------------------------
# Published numbers and settings
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishedRow:
    """One method's published numbers (``values`` in the table's units) or, with ``row`` None, why there are none."""

    method: str
    row: str | None
    source: str  # the citation of the table the row comes from ("" without a row)
    note: str
    values: Mapping[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One cell: the row and its source key, or "no published row: why"."""
        if self.row is None:
            return f"no published row: {self.note}"
        return self.row + (f" ({self.note})" if self.note else "")


def load_published(path: Path = PUBLISHED_FILE) -> tuple[dict[str, str], dict[str, PublishedRow]]:
    """The sources (key -> citation) and one :class:`PublishedRow` per method of the published-numbers file;
    a UsageError naming the file for an unknown method, metric or source (the file is data, checked once)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    sources: dict[str, str] = data["sources"]
    rows = {}
    for method, entry in data["methods"].items():
        if method not in set(InversionMethod):
            raise UsageError(f"{path}: {method!r} is not a method ({', '.join(InversionMethod)})")
        values = entry.get("values", {})
        unknown = sorted(set(values) - set(TABLE_UNITS))
        if unknown or (entry["row"] is not None and entry.get("source") not in sources):
            raise UsageError(f"{path}: {method}: unknown metric(s) {unknown} or source {entry.get('source')!r}")
        rows[method] = PublishedRow(method, entry["row"], sources.get(entry.get("source"), ""), entry.get("note", ""),
                                    {k: float(v) for k, v in values.items()})
    return sources, rows


def published_setting(method: InversionMethod) -> dict[str, object]:
    """The setting of ``method``'s row: T = 50, the method's own inner steps and guidance (EDICT's 3), one epoch,
    the reference schedule, the mask-free track (docs/pie-bench.md, docs/method.md §9)."""
    return {"num_ddim_steps": PUBLISHED_DDIM_STEPS, "num_inner_steps": method.default_inner_steps, "num_epoch": 1,
            "guidance_scale": method.default_guidance_scale, "schedule": Schedule.REFERENCE.value,
            "track": Track.MASK_FREE.value}


OPTIMISATION_SETTINGS = ("num_inner_steps", "num_epoch", "schedule")
"""Settings that change only what a per-step optimising method learns (InversionMethod.optimises)."""


def setting_changes(method: InversionMethod, overrides: Mapping[str, object]) -> dict[str, object]:
    """The overrides (setting -> value; None: not given) that move ``method`` off its published setting: those that
    differ from it and apply to the method (inner steps, epochs and schedule only to the optimising ones)."""
    published = published_setting(method)
    return {name: value for name, value in overrides.items()
            if value is not None and value != published[name]
            and (method.optimises or name not in OPTIMISATION_SETTINGS)}


def run_setting(method: InversionMethod, overrides: Mapping[str, object]) -> dict[str, object]:
    """The setting a run of ``method`` uses: the published one with the applicable overrides."""
    return {**published_setting(method), **setting_changes(method, overrides)}


def describe_changes(changes: Mapping[str, object]) -> str:
    """``published setting`` or ``NOT at the published setting: num_ddim_steps=3, …``."""
    if not changes:
        return "published setting"
    return "NOT at the published setting: " + ", ".join(f"{k}={v}" for k, v in changes.items())


# ----------------------------------------------------------------------------------------------------------
# The plan: UNet passes per image and their cost
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PassPlan:
    """UNet passes per image of one PIE-Bench case as the runner makes it (a batched [source, target] call counts
    once): the inversion, the training iterations at their cap (forward + backward; early stops make fewer) and the
    optimisation's other per-step passes, the sidecar's reconstruction figures, the edit."""

    inversion: int
    training: int  # optimisation iterations (forward + backward each)
    training_steps: int  # the optimisation's forward-only passes (once per step: the other branch, the step's move)
    reconstruction: int
    edit: int

    @property
    def forward(self) -> int:
        """Forward-only passes."""
        return self.inversion + self.training_steps + self.reconstruction + self.edit

    @property
    def total(self) -> int:
        return self.forward + self.training

    def describe(self) -> str:
        """``inversion + training + reconstruction + edit`` (training left out for methods that do not optimise)."""
        train = f" + {self.training + self.training_steps}" if self.training else ""
        return f"{self.inversion}{train} + {self.reconstruction} + {self.edit}"


def planned_passes(method: InversionMethod, num_ddim_steps: int, num_inner_steps: int, num_epoch: int,
                   schedule: Schedule | str) -> PassPlan:
    """UNet passes per image of ``method`` (docs/method.md §9.6): the DDIM inversion's T, edit-friendly DDPM's and
    EDICT's extra inversion passes (2 and 4 per sampled step); for the optimising methods the iterations at the
    schedule's cap (§3, §3a: ⌈N·e^(−0.1 i)⌉ for StyleDiffusion, N per step for null-text and text-embedding inversion,
    times the epochs) and 2 forward passes per step besides; the sidecar's reconstruction figures (plain DDIM's 2T
    and the method's own, as many as its edit); editing's 2 passes per sampled step (4 for EDICT)."""
    steps = num_ddim_steps
    inversion, edit = steps, 2 * steps
    if method is InversionMethod.EDIT_FRIENDLY:
        sampled = steps - EditFriendlyInversion.skip(steps)
        inversion, edit = steps + 2 * sampled, 2 * sampled
    elif method is InversionMethod.EDICT:
        sampled = steps - EdictInversion.skip(steps)
        inversion, edit = steps + 4 * sampled, 4 * sampled
    training = training_steps = 0
    if method.optimises:
        decaying = method in (InversionMethod.STYLEDIFFUSION, InversionMethod.STYLEDIFFUSION_DIRECT)
        training = num_epoch * sum(step_plan(Schedule(schedule), num_inner_steps, i, decaying).iterations
                                   for i in range(steps))
        training_steps = 2 * steps * num_epoch
    return PassPlan(inversion, training, training_steps, 2 * steps + edit, edit)


@dataclass(frozen=True)
class PassSeconds:
    """Measured seconds of one UNet forward call (batch 2) and of one training iteration (forward + backward)."""

    forward: float
    training: float
    source: str

    def seconds(self, plan: PassPlan) -> float:
        return plan.forward * self.forward + plan.training * self.training


MEASURED_PASS_SECONDS: dict[tuple[str, str], PassSeconds] = {
    ("H100", "bf16"): PassSeconds(
        forward=3.53 / 60, training=0.0888,
        source="benchmarks/RESULTS.md, GPU table, setting (b): 88.8 ms per training iteration, 3.53 s per 30-step "
               "edit combination (60 UNet calls of batch 2), NVIDIA H100 80GB HBM3, bf16, 2026-11-27"),
}
"""Per-pass times measured in benchmarks/RESULTS.md, by a substring of the card's name and the dtype. The fp32
default was not timed on a GPU there: such runs are estimated from their first case."""


def pass_seconds(card: str, dtype: str) -> PassSeconds | None:
    """The measured per-pass times for a card (its name, e.g. torch.cuda.get_device_name()) and dtype, if any."""
    for (name, kind), seconds in MEASURED_PASS_SECONDS.items():
        if name in card and kind == dtype:
            return seconds
    return None


# ----------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodRun:
    """What the table states about one method's run besides its scores (from the runner's manifest and sidecars)."""

    method: str
    setting: str  # describe_changes(...)
    track: str
    weights: str  # the backbone weights' fingerprint
    versions: str
    seed: int | None
    cost: pd.DataFrame  # per case: key, editing_type_id, unet_passes, seconds (NaN where a sidecar lacks them)


def versions_text(versions: Mapping[str, str]) -> str:
    """``torch 2.x, diffusers 0.y, …`` from a manifest's versions."""
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def measured(label: str) -> str:
    return f"{label} measured"


def published(label: str) -> str:
    return f"{label} published"


def difference(label: str) -> str:
    return f"{label} difference"


def build_table(summary: pd.DataFrame, runs: Sequence[MethodRun], rows: Mapping[str, PublishedRow],
                backbones: str, comparable: bool) -> pd.DataFrame:
    """One row per method × editing type of ``summary`` (:func:`sdtoolkit.evaluation.pie_metrics.summarise`):
    cases, cases scored, per metric measured | published | measured − published (published only on the ``all`` row:
    the table reports means over every case), UNet passes and seconds per image (means over the group's cases whose
    sidecar records them), the setting, the published row (or why there is none), track, weights fingerprint,
    library versions, seed, the metric backbones and whether the row compares with the published table:
    ``comparable`` (real metric networks, the whole benchmark), the published setting and every case scored."""
    by_method = {run.method: run for run in runs}
    out = []
    for _, s in summary.iterrows():
        run = by_method[s["method"]]
        pub = rows.get(run.method, PublishedRow(run.method, None, "", "not in the published-numbers file"))
        group = s["editing_type"]
        cost = run.cost if group == "all" else run.cost[run.cost["editing_type_id"] == group.split(" ", 1)[0]]
        first_label = next(iter(TABLE_UNITS.values()))[0]
        row: dict[str, object] = {"method": run.method, "editing type": group, "cases": int(s["cases"]),
                                  "scored": int(s[f"n {first_label}"])}
        for metric, (label, _) in TABLE_UNITS.items():
            value = float(s[label])
            ref = pub.values.get(metric, math.nan) if group == "all" else math.nan
            row[measured(label)] = value
            row[published(label)] = ref
            row[difference(label)] = value - ref
        row["UNet passes / image"] = float(pd.to_numeric(cost["unet_passes"]).mean()) if len(cost) else math.nan
        row["seconds / image"] = float(pd.to_numeric(cost["seconds"]).mean()) if len(cost) else math.nan
        row.update({"setting": run.setting, "published row": pub.describe(), "track": run.track,
                    "weights": run.weights, "versions": run.versions, "seed": run.seed,
                    "metric backbones": backbones,
                    "comparable with the published table": (comparable and run.setting == describe_changes({})
                                                            and row["scored"] == row["cases"])})
        out.append(row)
    return pd.DataFrame(out)


def _cell(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown(table: pd.DataFrame, header: Sequence[str], sources: Mapping[str, str]) -> str:
    """``table.md``: the header lines, the scores (measured | published | Δ per metric), then each method's
    setting and provenance, then the sources of the published numbers."""
    labels = [label for label, _ in TABLE_UNITS.values()]
    cols = ["method", "editing type", "cases (scored)"] + [f"{label} {part}" for label in labels
                                                            for part in ("meas.", "publ.", "Δ")]
    cols += ["UNet passes / image", "s / image"]
    lines = list(header) + ["", "| " + " | ".join(cols) + " |", "|" + "---|" * 2 + "---:|" * (len(cols) - 2)]
    for _, r in table.iterrows():
        cells = [str(r["method"]), str(r["editing type"]), f"{r['cases']} ({r['scored']})"]
        for label in labels:
            cells += [_cell(r[measured(label)]), _cell(r[published(label)]), _cell(r[difference(label)], sign=True)]
        cells += [_cell(r["UNet passes / image"], 0), _cell(r["seconds / image"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| method | setting | published row | track | weights | versions | seed | comparable |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in table.drop_duplicates("method").iterrows():
        lines.append(f"| {r['method']} | {r['setting']} | {r['published row']} | {r['track']} | {r['weights']} | "
                     f"{r['versions']} | {r['seed']} | {'yes' if r['comparable with the published table'] else 'no'} |")
    lines += ["", "Published numbers: " + "; ".join(f"[{k}] {v}" for k, v in sources.items()) + "."]
    return "\n".join(lines) + "\n"
