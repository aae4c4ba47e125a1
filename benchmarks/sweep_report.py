"""Render a sweep JSON (from sweep_sts_dev.py / confirm runs) as a Markdown table.

    python benchmarks/sweep_report.py docs/sweep-gemma-3-270m-dev500.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> None:
    rows = json.loads(Path(path).read_text())
    layers = ["-1", "-2", "-3", "-4", "-6"]
    vanilla = {r["prompt"]: r["scores"] for r in rows if r["tp_layers"] == "vanilla"}
    print(f"STS-B dev, {rows[0]['pairs']} pairs, Spearman x100 of cosine; Δ = TP minus vanilla "
          "with the same prompt at the same output layer.\n")
    print("| prompt | TP layers | <PST> init | " + " | ".join(f"layer {l}" for l in layers)
          + " | best layer | Δ at -1 | Δ at -2 |")
    print("|---" * (len(layers) + 6) + "|")
    for r in rows:
        s, v = r["scores"], vanilla.get(r["prompt"])
        best = max(s, key=s.get)
        d1 = f"{s['-1'] - v['-1']:+.2f}" if v and r["tp_layers"] != "vanilla" else ""
        d2 = f"{s['-2'] - v['-2']:+.2f}" if v and r["tp_layers"] != "vanilla" else ""
        cells = " | ".join(f"{s[l]:.2f}" if l in s else "" for l in layers)
        print(f"| {r['prompt']} | {r['tp_layers']} | {r['init']} | {cells} | {best} ({s[best]:.2f}) | {d1} | {d2} |")


if __name__ == "__main__":
    main(sys.argv[1])
