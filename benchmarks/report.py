"""Rows of the results table, the table itself and ``RESULTS.md`` (whose hand-written "Analysis" is kept)."""

from __future__ import annotations

from pathlib import Path

from . import goals
from .goals import BEFORE, BEFORE_COMMIT

MB = 1 << 20
ANALYSIS = "\n## Analysis"


def row(key: str, stage: str, measure: str, ours: str, value: float | None, reference: str = "—",
        ref_value: float | None = None, note: str = "", **extra: float) -> dict:
    """One measure. ``key`` names it for its goals and its figure before the redesign (see :mod:`.goals`);
    ``extra`` holds numbers a goal may look at besides the measure."""
    return dict(key=key, stage=stage, measure=measure, ours=ours, value=value, reference=reference,
                ref_value=ref_value, note=note, extra=extra)


def skipped(key: str, stage: str, measure: str, why: str) -> dict:
    return row(key, stage, measure, f"skipped: {why}", None)


def fmt_bytes(n: float) -> str:
    if n >= 1024 * MB:
        return f"{n / (1024 * MB):.2f} GB"
    if n >= MB:
        return f"{n / MB:.0f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n:.0f} B"


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}" if x >= 100 else f"{x:.1f} {unit}"


def ratio(r: dict) -> str:
    return f"{r['value'] / r['ref_value']:.2f}x" if r.get("value") is not None and r.get("ref_value") else "—"


def before(r: dict, full: bool) -> str:
    b = BEFORE.get(r["key"])
    return b.text if b and full else "—"


def table(rows: list[dict], full: bool) -> str:
    lines = [f"| stage | measure | ours | before ({BEFORE_COMMIT}) | reference (what) | ratio | goal | met? |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "—"}[goals.met(r, full)]
        if len(goals.goals_of(r["key"])) > 1 and goals.met(r, full) is False:
            met += f" ({'; '.join(goals.missed(r, full))})"
        lines.append(f"| {r['stage']} | {r['measure']} | {r['ours']} | {before(r, full)} | {r['reference']} | "
                     f"{ratio(r)} | {goals.goal_text(r['key'])} | {met} |")
    return "\n".join(lines)


def console(rows: list[dict], full: bool) -> str:
    out = []
    for r in rows:
        met = {True: "met", False: f"NOT MET: {'; '.join(goals.missed(r, full))}", None: ""}[goals.met(r, full)]
        out.append(f"    {r['measure']}: {r['ours']}  vs {r['reference']}  ratio {ratio(r)}  "
                   f"goal {goals.goal_text(r['key'])} {met}".rstrip())
    return "\n".join(out)


def notes(rows: list[dict]) -> str:
    return "\n".join(f"- **{r['stage']}**, {r['measure']}: {r['note']}" for r in rows if r.get("note"))


def load_line(info: dict) -> str:
    """The machine's 1-minute load average at each stage's start and end (other work on a shared machine)."""
    loads = info.get("load") or []
    if not loads:
        return ""
    text = ", ".join(f"{stage} {a:.1f}-{b:.1f}" for stage, a, b in loads)
    return f"**Load** (1-minute load average at each stage's start and end, on {info['usable_cores']} cores): {text}.\n"


def markdown(rows: list[dict], info: dict, command: str, elapsed: float, full: bool, analysis: str = "") -> str:
    v = info["versions"]
    curl = f"; curl {info['curl']}" if info.get("curl") else ""
    text = f"""# Benchmark results

Produced by `{command}` (from the repository root) in {elapsed / 60:.1f} min, at commit {info['commit']}.

**Machine.** {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {fmt_bytes(info['ram'])} RAM,
{info['os']}. Python {v['python']}; {', '.join(f'{k} {x}' for k, x in v.items() if k != 'python')}{curl}.
Everything runs on this machine over loopback: the demo archive (`python -m tglc_builder.demo`) and the S3 server
(moto) each in a process of their own. The machine is shared: other work may have run at the same time.

{load_line(info)}
`ratio` is ours / reference. For a rate (files/s, rows/s) higher is better; for a time, a size or memory lower is
better. Each reference is measured in the same run on the same data. `before` is the same measure in
benchmarks/RESULTS.md at commit {BEFORE_COMMIT}, before the redesign (one plan, streaming units, formats and sources
behind interfaces). Goals are written once, in `benchmarks/goals.py`.

{table(rows, full)}

Details:

{notes(rows)}
"""
    return text + (("\n" + analysis) if analysis else "")


def write(path: Path, rows: list[dict], info: dict, command: str, elapsed: float, full: bool) -> None:
    """Write ``path``, keeping everything from its "## Analysis" heading on (written by hand)."""
    analysis = ""
    if path.exists():
        old = path.read_text()
        if ANALYSIS in old:
            analysis = old[old.index(ANALYSIS) + 1:]
    path.write_text(markdown(rows, info, command, elapsed, full, analysis))
