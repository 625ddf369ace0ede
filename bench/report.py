"""The bench's Markdown table and chart, from the JSON document ``bench.run`` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt


def _value(row: dict[str, Any]) -> str:
    measured = row["measured"]
    if measured is None:
        return "n/a"
    unit = row["unit"]
    if unit == "x eth-account":
        return f"{measured:.2f}x"
    if unit in ("ratio", "calls"):
        return f"{measured:.3g}"
    return f"{measured:,.1f} {unit}"


def _verdict(row: dict[str, Any]) -> str:
    if row["pass"] is None:
        return "info"
    if row["pass"]:
        return "pass"
    return "**fail** (out of reach here)" if row.get("out_of_reach") else "**fail**"


def markdown(document: dict[str, Any]) -> str:
    baseline = document["baseline"]
    lines = [
        f"Measured {document['generated_at']} by `{document['command']}` in "
        f"{document['seconds']} s on {document['machine']['cores']} cores "
        f"(load average at start {document['machine']['load_average_at_start'][0]}). "
        f"Baseline: eth-account {baseline['eth_account_sign_per_s']:,.0f} signatures/s "
        f"({document['machine']['eth_keys_backend']}); libsecp256k1 floor "
        f"{baseline['libsecp256k1_floor_per_s']:,.0f}/s.",
        "",
        "| what | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    for row in document["rows"].values():
        lines.append(f"| {row['what']} | {_value(row)} | {row['target']} | {_verdict(row)} |")
    reasons = [(key, row["reason"]) for key, row in document["rows"].items() if row.get("reason")]
    if reasons:
        lines += ["", "Why the rows that miss their target miss it:", ""]
        lines += [f"- `{key}`: {reason}" for key, reason in reasons]
    return "\n".join(lines) + "\n"


def chart(document: dict[str, Any], path: Path) -> None:
    curve = document["curve"]
    concurrency = [point["concurrency"] for point in curve]
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    throughput.plot(concurrency, [p["rps"] for p in curve], "o-", label="relay sign/transaction")
    throughput.plot(
        concurrency,
        [p["baseline_per_s"] for p in curve],
        "s--",
        label="eth-account in-process (baseline)",
    )
    throughput.set_xscale("log", base=2)
    throughput.set_xticks(concurrency, [str(c) for c in concurrency])
    throughput.set_xlabel("concurrent clients")
    throughput.set_ylabel("signatures per second")
    throughput.set_title("throughput")
    throughput.set_ylim(bottom=0)
    throughput.grid(alpha=0.3)
    throughput.legend()
    latency.plot(concurrency, [p["p50_ms"] for p in curve], "o-", label="p50")
    latency.plot(concurrency, [p["p99_ms"] for p in curve], "^-", label="p99")
    latency.set_xscale("log", base=2)
    latency.set_yscale("log")
    latency.set_xticks(concurrency, [str(c) for c in concurrency])
    latency.set_xlabel("concurrent clients")
    latency.set_ylabel("milliseconds")
    latency.set_title("latency")
    latency.grid(alpha=0.3, which="both")
    latency.legend()
    figure.suptitle(f"nitro-wallet relay, warm key ({document['command']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
