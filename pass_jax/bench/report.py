"""Benchmark outputs: the raw JSON, a Markdown report shaped like the paper's Table 1, plots."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def machine() -> str:
    """The accelerators, or the CPU model and its core count."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{jax.device_count()} x {device.device_kind} ({device.platform})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    return f"CPU: {model}, {os.cpu_count()} cores ({platform.machine()}), no accelerator"


def _chain_records(records: list[dict], temperature: float, method: str = "pass") -> list[dict]:
    """A method's records at one temperature with one sampled draft per position."""
    return [
        r
        for r in records
        if r["method"] == method
        and r["temperature"] == temperature
        and r["candidates"] == 1
        and r["draft_rule"] == "sampled"
    ]


def markdown(results: dict[str, Any], machine: str) -> str:
    """Time per sequence and speedup by temperature and by L, then tau and acceptance."""
    protocol = results["protocol"]
    lines = [
        f"Machine: {machine}. Protocol: {results['num_prompts']} prompts of "
        f"{results['prompt_len']} tokens, {protocol['max_new_tokens']} new tokens, "
        f"top-k {protocol['top_k']}, median of {protocol['repeats']} repeats, batch 1.",
        "",
    ]
    for name, model in results["models"].items():
        records = model["records"]
        temps = protocol["temperatures"]
        lines += [
            f"### {name} ({model['params_millions']:.1f}M parameters)",
            "",
            "Seconds per sequence (speedup over autoregressive):",
            "",
            "| method | " + " | ".join(f"T={t}" for t in temps) + " |",
            "|---" * (len(temps) + 1) + "|",
        ]
        labels = list(dict.fromkeys(r["label"] for r in records if r["temperature"] == temps[0]))
        for label in labels:
            cells = []
            for t in temps:
                match = [r for r in records if r["label"] == label and r["temperature"] == t]
                cells.append(
                    f"{match[0]['seconds_per_sequence']:.3f} ({match[0]['speedup']:.2f}x)"
                    if match
                    else ""
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"L sweep at T={protocol['sweep_temperature']}, and every speculative method:"
            if protocol["sweep_temperature"] in temps
            else "Every speculative method:",
            "",
            "| method | T | s/seq | speedup | projected | tau | tau theory | tau bound | "
            "tokens per call | acceptance by position |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            if r["method"] == "ar":
                continue
            acceptance = ", ".join(f"{a:.2f}" for a in r["acceptance_by_position"])
            lines.append(
                f"| {r['label']} | {r['temperature']} | {r['seconds_per_sequence']:.3f} | "
                f"{r['speedup']:.2f}x | {r['projected_speedup']:.2f}x | {r['tau']:.2f} | "
                f"{r['tau_theory']:.2f} | {r['tau_bound']:.1f} | "
                f"{'+'.join(str(n) for n in r['call_block_lens'])} | {acceptance} |"
            )
        curve = model["forward_cost_relative"]
        loop = model["ar_loop_efficiency"]
        greedy = [r for r in records if "greedy_identical" in r and r["method"] != "ar"]
        if greedy:
            lines += [
                "",
                "Greedy (T=0) output against autoregressive, per sequence: "
                + "; ".join(
                    f"{r['label']}: {100 * r['greedy_identical']:.0f}% identical, "
                    f"{r['greedy_agreed_tokens']:.0f} tokens agree on average"
                    for r in greedy
                )
                + ".",
            ]
        lines += [
            "",
            "Cost of one forward on n new tokens relative to one token: "
            + ", ".join(f"n={n}: {c:.2f}" for n, c in curve.items())
            + ".",
            f"Autoregressive loop: {loop['generate_ms_per_token']:.2f} ms/token in `generate` "
            f"against {loop['forward_ms_per_token']:.2f} ms for one jitted forward "
            f"(overhead {100 * loop['overhead']:+.1f}%).",
            "",
        ]
    return "\n".join(lines)


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """speedup_vs_L.png, speedup_vs_temperature.png, acceptance_by_position.png."""
    protocol = results["protocol"]
    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, model in results["models"].items():
        sweep = _chain_records(model["records"], protocol["sweep_temperature"])
        lookaheads = [r["num_lookahead"] for r in sweep]
        ax.plot(lookaheads, [r["speedup"] for r in sweep], "o-", label=f"{name}: measured")
        ax.plot(
            lookaheads, [r["projected_speedup"] for r in sweep], "x--", label=f"{name}: projected"
        )
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xlabel="L (drafts per iteration)", ylabel="speedup over AR")
    ax.set_title(f"PaSS speedup against L, T={protocol['sweep_temperature']}")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "speedup_vs_L.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, model in results["models"].items():
        for method in ("pass_unk", "pass", "pass_fused", "pass_tree"):
            rows = [
                r
                for t in protocol["temperatures"]
                for r in _chain_records(model["records"], t, method)
                if r["num_lookahead"] == protocol["num_lookahead"]
            ]
            if rows:
                temps = [r["temperature"] for r in rows]
                label = f"{name}: {rows[0]['label']}"
                ax.plot(temps, [r["speedup"] for r in rows], "o-", label=label)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xlabel="temperature", ylabel="speedup over AR", title="Speedup against temperature")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "speedup_vs_temperature.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, model in results["models"].items():
        for temperature in protocol["temperatures"]:
            rows = _chain_records(model["records"], temperature)
            if rows:
                longest = max(rows, key=lambda r: r["num_lookahead"])
                acceptance = longest["acceptance_by_position"]
                positions = range(1, len(acceptance) + 1)
                ax.plot(positions, acceptance, "o-", label=f"{name}, T={temperature}")
    ax.set(xlabel="lookahead position i", ylabel="acceptance (accepted / reached)")
    ax.set_title("Acceptance by lookahead position")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "acceptance_by_position.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(results: dict[str, Any], out_dir: Path, machine: str) -> dict[str, Path]:
    """Writes results.json, results.md and the plots into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    files["json"].write_text(json.dumps(results, indent=2))
    files["markdown"].write_text(markdown(results, machine))
    for path in plots(results, out_dir):
        files[path.stem] = path
    return files
