"""`cram generate` with the compiled step against `--eager` on one checkpoint, alternating runs
(issue 22). Writes one JSON object: the command lines, each run's `--json` output, `uptime`
before and after, and the median tokens/s of each kind; prints a markdown table from it.

    python3 docs/results/data/generate_speed.py RUN OUT.json [--runs 3] [--new 512]
    python3 docs/results/data/generate_speed.py --table OUT.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROMPT = "the state space model routes memory to attention when the quick brown fox "


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(run: str, out: str, runs: int, new: int) -> None:
    base = [sys.executable, "-m", "cramkit.cli.main", "generate", run, "--prompt", PROMPT,
            "--max-new-tokens", str(new), "--json"]  # fmt: skip
    cmds = {"compiled": base, "eager": [*base, "--eager"]}
    data = {"commands": {k: " ".join(v[2:]) for k, v in cmds.items()}, "uptime_before": _uptime(), "runs": []}
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    import os

    for i in range(runs + 1):  # run 0 compiles (or loads) the compiled step: kept, not in the medians
        for kind, cmd in cmds.items():
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
            if res.returncode:
                raise SystemExit(res.stderr)
            data["runs"].append({"kind": kind, "index": i, **json.loads(res.stdout)})
    data["uptime_after"] = _uptime()
    for kind in cmds:
        rows = [r["tokens_per_s"] for r in data["runs"] if r["kind"] == kind and r["index"] > 0]
        data[f"median_tokens_per_s_{kind}"] = statistics.median(rows)
    data["speedup"] = data["median_tokens_per_s_compiled"] / data["median_tokens_per_s_eager"]
    with open(out, "w") as fh:
        json.dump(data, fh, indent=2)


def table(path: str) -> str:
    data = json.load(open(path))
    lines = ["| run | step | tokens/s | prefill ms | compile s (not counted) |", "|---|---|---|---|---|"]
    for r in data["runs"]:
        lines.append(f"| {r['index']} | {r['backend']} | {r['tokens_per_s']:.1f} | {r['prefill_seconds'] * 1e3:.1f} | "
                     f"{r['compile_seconds']:.1f} |")  # fmt: skip
    lines += ["", f"Median tokens/s over runs 1..: compiled {data['median_tokens_per_s_compiled']:.1f}, eager "
              f"{data['median_tokens_per_s_eager']:.1f}: **{data['speedup']:.1f}×**. Load: `{data['uptime_before']}` / "
              f"`{data['uptime_after']}`."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    if a.table:
        print(table(a.paths[0]))
    else:
        measure(a.paths[0], a.paths[1], a.runs, a.new)
