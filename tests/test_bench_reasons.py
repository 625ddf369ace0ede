"""The bench's explanation of a missed row (bench/run.py): the CPU profile caps the rate
at min(concurrency, cores) / CPU per request, and the busiest process (one GIL: one core
at a time) at 1 / its CPU per request; the row says out of reach only when the lower cap
is below the target."""

from __future__ import annotations

from typing import Any

from bench.report import markdown
from bench.run import LoadRun, Row, cpu_ceiling_reason, edge_ceiling_reason


def run(rps: float, relay: float, enclave: float, generator: float, per_sig: int = 1) -> LoadRun:
    profile = {
        "cpu_us_per_request": {"relay": relay, "enclave": enclave},
        "load_generator_cpu_us_per_request": generator,
        "signatures_per_request": per_sig,
        "cores": 2,
    }
    return LoadRun({"rps": rps}, 3000.0, profile)


def test_one_request_in_flight_uses_one_core_at_most() -> None:
    # 1,000 us of CPU per request: one in flight caps near 1,000/s, eight near 2,000/s.
    text, out = cpu_ceiling_reason(run(700, 500, 450, 50), 1500, concurrency=1)
    assert out
    assert text.startswith("out of reach on this machine")
    assert "1 core at most" in text
    assert "near 1,000 signatures/s" in text
    text, out = cpu_ceiling_reason(run(1200, 500, 450, 50), 1500, concurrency=8)
    assert not out
    assert text.startswith("not out of reach")
    assert "near 2,000 signatures/s" in text
    assert "measured 1,200/s, 60% of that cap" in text


def test_a_batch_counts_signatures_per_request() -> None:
    text, out = cpu_ceiling_reason(run(100, 2700, 3000, 100, per_sig=50), 17000, concurrency=4)
    assert out  # 5,800 us per 50 signatures on 2 cores: about 17,241/s; the enclave 16,667/s
    assert "near 17,241 signatures/s" in text
    assert "the enclave, whose Python runs on one core at a time" in text
    assert "near 16,667 signatures/s at 3000 us per request" in text


def test_the_busiest_process_caps_the_rate_at_one_core() -> None:
    # 7,800 us per batch on 2 cores would allow 12,821/s, but the enclave's 5,000 us on
    # its one core allow 10,000/s: a 11,000/s target is out of reach, a 9,000/s one not.
    text, out = cpu_ceiling_reason(run(190, 2700, 5000, 100, per_sig=50), 11000, concurrency=4)
    assert out
    assert "near 12,821 signatures/s" in text
    assert "near 10,000 signatures/s at 5000 us per request" in text
    text, out = cpu_ceiling_reason(run(170, 2700, 5000, 100, per_sig=50), 9000, concurrency=4)
    assert not out
    assert "measured 8,500/s, 85% of that cap" in text


def test_the_cold_path_is_out_of_reach_only_below_its_cap() -> None:
    _, out = edge_ceiling_reason("account", {"enclave": 12.0, "kms": 10.0}, 2, 100, 80, 70)
    assert out  # 22 ms per account on 2 cores: about 91/s < 100/s
    _, out = edge_ceiling_reason("account", {"enclave": 4.0, "kms": 4.0}, 2, 100, 95, 70)
    assert not out  # 250/s of CPU: the miss is waiting, not CPU


def test_the_table_marks_a_row_out_of_reach() -> None:
    rows: dict[str, Any] = {}
    for key, out in (("a", True), ("b", False)):
        row = Row(key, 0.4, "x eth-account", ">= 1.0", False, reason="why", out_of_reach=out)
        rows[key] = row.to_json()
    document = {
        "generated_at": "now",
        "command": "make bench",
        "seconds": 1,
        "machine": {"cores": 2, "load_average_at_start": [0.1], "eth_keys_backend": "x"},
        "baseline": {"eth_account_sign_per_s": 3000, "libsecp256k1_floor_per_s": 50000},
        "rows": rows,
    }
    table = markdown(document)
    assert "| a | 0.40x | >= 1.0 | **fail** (out of reach here) |" in table
    assert "| b | 0.40x | >= 1.0 | **fail** |" in table
    assert rows["a"]["out_of_reach"] is True
