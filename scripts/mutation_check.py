"""Mutation check: plant small editing bugs one at a time in a temporary copy of the repository and run the tests
aimed at each; print which test caught it, exit 1 if a bug survives or a patch no longer applies.

Each mutant is an exact textual patch (``old`` must occur exactly once in its file, else the script FAILS: a
patch that stopped applying after a refactor is reported instead of silently testing nothing). The copy holds the
tracked files (``git ls-files``); tests run with ``PYTHONPATH`` set to the copy, one torch thread, offline;
``--jobs`` mutants run at once, each in its own copy. Maintained mutation tools (mutmut, cosmic-ray)
generate thousands of operator mutants and rerun whole suites; this check wants a few named, plausible method
bugs (wrong timestep, union vs intersection, off-by-one windows) with the tests aimed at each, in minutes on a CPU.

    python scripts/mutation_check.py            # all mutants, as many at once as the machine has cores
    python scripts/mutation_check.py --only tau_u   # those whose name contains "tau_u"
    python scripts/mutation_check.py --only SDXL --only v-prediction   # repeat --only: any of the texts
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PINNED = "tests/test_pinned.py"
GUARDS = "tests/test_guards.py"
METHODS = "tests/test_pinned_methods.py"
OUTPUTS = "tests/test_pinned_outputs.py"
BACKBONES = "tests/test_pinned_backbones.py"
SCHEDULES = "tests/test_schedules.py"
PIE_ROWS = "tests/test_pie_inversions.py"
API_TESTS = "tests/test_api.py"
APP = "tests/test_app.py"


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``old`` (exactly once) by ``new`` in ``path``; ``tests`` are pytest arguments."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # the seven of issue 15
    Mutant("inversion_step moves from alpha_t[i-1]", "sdtoolkit/core/ddim.py",
           "return ddim_transfer(z, model_output, schedule.alpha_prev[i], schedule.alpha_t[i], schedule.prediction_type)",
           "return ddim_transfer(z, model_output, schedule.alpha_t[i - 1], schedule.alpha_t[i], schedule.prediction_type)",
           ("tests/test_ddim.py", PINNED)),
    Mutant("DDIM inversion predicts eps at timesteps[i+1]", "sdtoolkit/methods/inversions.py",
           "eps = models.predict(z, schedule.timesteps[i], text,",
           "eps = models.predict(z, schedule.timesteps[min(i + 1, num - 1)], text,",
           (PINNED,)),
    Mutant("LocalBlend: intersection of the word masks", "sdtoolkit/control/controllers.py",
           "return masks.any(dim=0, keepdim=True).float()", "return masks.all(dim=0, keepdim=True).float()",
           (PINNED,)),
    Mutant("LocalBlend: 3x3 max-pool removed", "sdtoolkit/control/controllers.py",
           "maps = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)", "maps = maps",
           (PINNED,)),
    Mutant("tau_u compared with <=", "sdtoolkit/control/controllers.py",
           "return call.step < self.n_u and self._self_layer(layer)",
           "return call.step <= self.n_u and self._self_layer(layer)",
           (PINNED,)),
    Mutant("tau_u injected in the last tau_u*T steps", "sdtoolkit/control/controllers.py",
           "return call.step < self.n_u and self._self_layer(layer)",
           "return call.step >= self.cross_alpha.shape[0] - 1 - self.n_u and self._self_layer(layer)",
           (PINNED,)),
    Mutant("equalizer (--eq_params) ignored", "sdtoolkit/jobs/edit.py",
           "equalizer=equalizer, local_blend=blend,", "equalizer=None, local_blend=blend,",
           (PINNED,)),
    # more of our own
    Mutant("guidance sign flipped", "sdtoolkit/core/ddim.py",
           "return uncond + guidance_scale * (cond - uncond)",
           "return cond + guidance_scale * (uncond - cond)",
           (PINNED,)),
    Mutant("LocalBlend threshold 0.5", "sdtoolkit/control/controllers.py",
           "threshold: float = 0.3", "threshold: float = 0.5",
           (PINNED,)),
    Mutant("LocalBlend starts one step late", "sdtoolkit/control/controllers.py",
           "if step < self.start_step:", "if step <= self.start_step:",
           (PINNED,)),
    Mutant("LocalBlend reads the unedited target maps", "sdtoolkit/control/controllers.py",
           "self.store.store(out, layer, call)", "self.store.store(probs, layer, call)",
           (PINNED,)),
    Mutant("tau_s off by one (<=)", "sdtoolkit/control/controllers.py",
           "return call.step < self.n_s and self._self_layer(layer)",
           "return call.step <= self.n_s and self._self_layer(layer)",
           (PINNED,)),
    Mutant("Replacement mapper transposed", "sdtoolkit/control/controllers.py",
           'torch.einsum("hpw,bwn->bhpn", base,', 'torch.einsum("hpw,bnw->bhpn", base,',
           (PINNED,)),
    Mutant("Refinement alphas ignored", "sdtoolkit/control/controllers.py",
           'out = mapped * on["alphas"] + replace * (1 - on["alphas"])', "out = mapped",
           (PINNED,)),
    Mutant("per-word tau_c cannot shorten a word's window", "sdtoolkit/core/words.py",
           "                alpha[:, target, positions] = 0.0\n", "",
           (PINNED,)),
    Mutant("sampling reads M_{i-1} at step i", "sdtoolkit/methods/inversions.py",
           "self._cache[i] = self.mapping.nets[i](self.features.float())",
           "self._cache[i] = self.mapping.nets[max(i - 1, 0)](self.features.float())",
           (PINNED,)),
    Mutant("training ignores --attn_pairing reference", "sdtoolkit/methods/training.py",
           "gt = trace.maps[reference_pairing(i) if settings.attn_pairing is AttnPairing.REFERENCE else i]",
           "gt = trace.maps[i]",
           (PINNED,)),
    Mutant("training target one step off", "sdtoolkit/methods/training.py",
           "target = trace.latents[num - i - 1]\n                gt =", "target = trace.latents[num - i]\n                gt =",
           (PINNED,)),
    Mutant("NaN guard on sampled latents removed", "sdtoolkit/methods/sampler.py",
           "            watch.add(z, i)\n", "",
           (f"{GUARDS}::test_sampling_stops_at_the_first_non_finite_latent",)),
    # issue 18: the schedules and the windowed optimisation loop
    Mutant("reference early stop: no rewind inside a window", "sdtoolkit/methods/training.py",
           "torch._foreach_copy_(detached, ring[(kept - 1) % plan.window])", "pass",
           (f"{SCHEDULES}::test_windowed_reference_stop_rewinds_to_the_per_iteration_result",)),
    Mutant("fast schedule: learning-rate warm-up ignored", "sdtoolkit/core/schedules.py",
           "return self.lr * min(1.0, (j + 1) / self.warmup) if self.warmup else self.lr", "return self.lr",
           (SCHEDULES,)),
    Mutant("fast schedule: plateau reads the last loss, not the window's best", "sdtoolkit/core/schedules.py",
           "now = min(losses[-self.window:])", "now = losses[-1]",
           (SCHEDULES,)),
    Mutant("fast schedule: no floor on the last steps", "sdtoolkit/core/schedules.py",
           "StepPlan(max(cap, FAST_FLOOR),", "StepPlan(cap,", (SCHEDULES,)),
    # issue 28: every constant of the fast schedule is pinned (the plan's literals and one toy case's outcome)
    *(Mutant(f"fast schedule: {label}", "sdtoolkit/core/schedules.py", f"\n{constant} = {old}\n",
             f"\n{constant} = {new}\n", (SCHEDULES,))
      for label, constant, old, new in (("plateau 5 % -> 50 %", "FAST_PLATEAU", "0.05", "0.5"),
                                        ("windows of 2 -> 3", "FAST_WINDOW", "2", "3"),
                                        ("step-0 windows of 5 -> 4", "FAST_WINDOW_FIRST", "5", "4"),
                                        ("warm-up 2 -> 3", "FAST_WARMUP", "2", "3"),
                                        ("floor 5 -> 4", "FAST_FLOOR", "5", "4"),
                                        ("floor 5 -> 6", "FAST_FLOOR", "5", "6"))),
    Mutant("fast schedule: M_0 keeps the default init", "sdtoolkit/methods/training.py",
           "    if starts_from_text(settings.schedule):\n", "    if False:\n",
           (f"{SCHEDULES}::test_training_starts_M0_from_the_text_except_in_the_reference_schedule",)),
    Mutant("--dtype auto picks bf16", "sdtoolkit/core/models.py",
           "    if dtype in (None, \"auto\"):\n        return torch.float32",
           "    if dtype in (None, \"auto\"):\n        return torch.bfloat16",
           ("tests/test_saved_results.py::test_default_precision_is_fp32_as_the_reference",)),
    # issue 20: the Python API
    Mutant("API edit_generated takes the library's taus, not p2plus.py's", "sdtoolkit/api.py",
           "_taus(taus, P2PLUS_TAUS, names)", "_taus(taus, {}, names)",
           ("tests/test_api.py::test_edit_generated_equals_p2plus",)),
    # issue 22: what each method computes
    Mutant("attention-map loss weighted 0", "sdtoolkit/methods/training.py",
           "loss = loss + F.mse_loss(recorder.maps[name].float(), gt_maps[name].float())",
           "loss = loss + 0 * F.mse_loss(recorder.maps[name].float(), gt_maps[name].float())",
           (METHODS,)),
    Mutant("null-text optimises the conditional embedding", "sdtoolkit/methods/inversions.py",
           "    name = InversionMethod.NULLTEXT\n    branch = Branch.UNCOND",
           "    name = InversionMethod.NULLTEXT\n    branch = Branch.COND",
           (METHODS,)),
    Mutant("PIE-Bench 4-panel: reconstruction right-most", "sdtoolkit/jobs/pie.py",
           "for image in (reconstruction, edited)]", "for image in (edited, reconstruction)]",
           (OUTPUTS,)),
    Mutant("SDXL time ids (h, w, h, w, 0, 0)", "sdtoolkit/core/models.py",
           "torch.tensor([[h, w, 0, 0, h, w]]", "torch.tensor([[h, w, h, w, 0, 0]]",
           (BACKBONES,)),
    Mutant("v-prediction handled as epsilon", "sdtoolkit/core/ddim.py",
           "return make_schedule(num_steps, ac, steps_offset, PredictionType.parse(cfg[\"prediction_type\"]))",
           "return make_schedule(num_steps, ac, steps_offset, PredictionType.EPSILON)",
           (BACKBONES,)),
    Mutant("SDXL pooled embedding dropped (zeros)", "sdtoolkit/core/models.py",
           '"text_embeds": pooled.expand(batch, -1).to(self.dtype)',
           '"text_embeds": torch.zeros_like(pooled.expand(batch, -1)).to(self.dtype)',
           (BACKBONES,)),
    Mutant("NPI: unconditional branch reads the null embedding", "sdtoolkit/methods/inversions.py",
           "return self.source_text.expand(batch, -1, -1)", "return self.null.expand(batch, -1, -1)",
           (METHODS,)),
    Mutant("grid_img: reconstruction and edited swapped", "sdtoolkit/jobs/edit.py",
           "row = [source.pil, vae_rec, rec, edited]", "row = [source.pil, vae_rec, edited, rec]",
           (OUTPUTS,)),
    Mutant("CSV edited/ copy is the grid image", "sdtoolkit/cli/stylediffusion_csv.py",
           'p.name.startswith("edited_img-")', 'p.name.startswith("grid_img-")',
           (OUTPUTS,)),
    Mutant("storemask background mask = foreground", "sdtoolkit/cli/storemask.py",
           "fg_png, bg_png = to_png(fg), to_png(1 - fg)", "fg_png, bg_png = to_png(fg), to_png(fg)",
           (OUTPUTS,)),
    # PIE-Bench's other rows (issue 21)
    Mutant("PIE rows: direct correction also applied to the target row", "sdtoolkit/methods/inversions.py",
           "return torch.cat([source, z[1:]])",
           "return torch.cat([source, self.latent_after(schedule, i, z).expand_as(z[1:])])",
           (PIE_ROWS,)),
    Mutant("PIE rows: edit-friendly source row at the target's guidance", "sdtoolkit/methods/inversions.py",
           "row_scales(z.shape[0], self.source_guidance, guidance_scale, z)",
           "row_scales(z.shape[0], guidance_scale, guidance_scale, z)",
           (PIE_ROWS,)),
    Mutant("PIE rows: EDICT sampling ignores the leapfrog order", "sdtoolkit/methods/inversions.py",
           "if (i - self.first_step) % 2 == 0:", "if True:",
           (PIE_ROWS,)),
    Mutant("PIE rows: EDICT mixing weight swapped", "sdtoolkit/core/ddim.py",
           "x_new = p * x + (1.0 - p) * y", "x_new = (1.0 - p) * x + p * y",
           (PIE_ROWS,)),
    Mutant("PIE rows: ProxNPI pulls to the inversion at every timestep", "sdtoolkit/methods/inversions.py",
           "if schedule.timesteps[i] < self.recon_t:", "if True:",
           (PIE_ROWS,)),
    # the browser app (issue 27): what its page relies on from the API, and its sessions
    Mutant("progress: bars never report to the listener", "sdtoolkit/core/progress.py",
           "self._listener = _LISTENER.get()", "self._listener = None",
           (API_TESTS + "::test_progress_callbacks_get_the_clis_bars_with_step_iterations_and_loss",)),
    Mutant("edit command forgets the inversion's --model_dir", "sdtoolkit/core/settings.py",
           'if str(self.model_dir) != ".":', "if False:",
           (API_TESTS + "::test_edit_type_rule_blend_mask_and_command",)),
    Mutant("app sessions drop the most recently used inversion", "sdtoolkit/app/sessions.py",
           "label, old = mine.popitem(last=False)", "label, old = mine.popitem(last=True)",
           (APP + "::test_sessions_keep_the_most_recently_used_inversions_and_say_what_they_drop",)),
)


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # caught | SURVIVED | PATCH FAILED | ERROR
    detail: str
    seconds: float


def tracked_copy(*dests: Path) -> None:
    """Copy the tracked files of the repository (as in the work tree) into each of ``dests``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        rel = name.decode()
        src = REPO / rel
        if src.is_file():
            for dest in dests:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)


def check_patch(root: Path, m: Mutant) -> str | None:
    """None when ``m.old`` occurs exactly once in its file; otherwise why not."""
    path = root / m.path
    if not path.is_file():
        return f"{m.path} does not exist"
    count = path.read_text(encoding="utf-8").count(m.old)
    return None if count == 1 else f"{m.path}: the text to replace occurs {count} times (want exactly 1)"


def run_tests(root: Path, tests: tuple[str, ...], timeout: int, workers: int = 0) -> subprocess.CompletedProcess:
    """pytest on ``tests`` in ``root`` (stop at the first failure); ``workers`` > 0: that many xdist workers."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-n", str(workers), "-p", "no:cacheprovider", *tests],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def failed_test(output: str) -> str:
    """The first ``FAILED tests/…::name`` of pytest's summary (the test that caught the mutant)."""
    m = re.search(r"^FAILED (\S+)", output, re.M)
    return m.group(1).split(" - ")[0] if m else "?"


def mutate(root: Path, m: Mutant, timeout: int) -> Outcome:
    start = time.perf_counter()
    why = check_patch(root, m)
    if why:
        return Outcome(m, "PATCH FAILED", why, 0.0)
    path = root / m.path
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace(m.old, m.new), encoding="utf-8")
    try:
        proc = run_tests(root, m.tests, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.perf_counter() - start
    if proc.returncode == 1:
        return Outcome(m, "caught", failed_test(proc.stdout), seconds)
    if proc.returncode == 0:
        return Outcome(m, "SURVIVED", "all targeted tests passed", seconds)
    return Outcome(m, "ERROR", f"pytest exit status {proc.returncode}: {proc.stdout[-300:]}", seconds)


def table(outcomes: list[Outcome]) -> str:
    rows = ["| planted bug | result | caught by | s |", "|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {o.mutant.name} | {o.status} | `{o.detail}` | {o.seconds:.0f} |" if o.status == "caught"
                    else f"| {o.mutant.name} | **{o.status}** | {o.detail} | {o.seconds:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", default=None,
                   help="run the mutants whose name contains this text (repeat: any of the texts)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    p.add_argument("--no_baseline", action="store_true", help="skip the unmutated run of the targeted tests")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="mutants tested at once, each in its own copy of the tree (one torch thread each)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        print(f"mutation_check: error: --jobs {args.jobs}: want at least 1", file=sys.stderr)
        return 2
    mutants = [m for m in MUTANTS if args.only is None or any(text in m.name for text in args.only)]
    if not mutants:
        print(f"mutation_check: error: no mutant name contains any of {args.only!r}", file=sys.stderr)
        return 2
    jobs = min(args.jobs, len(mutants))
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        trees = [Path(tmp) / str(k) for k in range(jobs)]
        tracked_copy(*trees)
        roots: queue.Queue[Path] = queue.Queue()
        for tree in trees:
            roots.put(tree)
        root = trees[0]
        broken = [(m, why) for m in mutants if (why := check_patch(root, m))]
        for m, why in broken:
            print(f"PATCH FAILED: {m.name}: {why}", file=sys.stderr)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            proc = run_tests(root, tests, args.timeout * 2, workers=jobs if jobs > 1 else 0)
            if proc.returncode != 0:
                print(f"the unmutated copy fails its targeted tests ({failed_test(proc.stdout)}):\n{proc.stdout[-2000:]}",
                      file=sys.stderr)
                return 1
            print(f"baseline: targeted tests pass unmutated ({' '.join(tests)})", flush=True)

        def one(m: Mutant) -> Outcome:
            tree = roots.get()  # a copy no other mutant is using
            try:
                outcome = mutate(tree, m, args.timeout)
            finally:
                roots.put(tree)
            print(f"{outcome.status:>12}  {m.name}  ({outcome.detail})", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(one, mutants))
    print()
    print(table(outcomes))
    bad = [o for o in outcomes if o.status != "caught"]
    print(f"\n{len(outcomes) - len(bad)} of {len(outcomes)} planted bugs caught"
          + (f"; {len(bad)} not: {', '.join(o.mutant.name for o in bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
