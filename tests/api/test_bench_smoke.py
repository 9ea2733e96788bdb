"""CI runs the API benchmark in smoke mode: it must start a server, load it and emit its JSON line."""

import json
import subprocess
import sys
from pathlib import Path


def test_api_benchmark_smoke():
    bench = Path(__file__).resolve().parents[2] / "bench" / "api.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "api" and line["smoke"] is True and "seed=1" in out.stderr
    assert line["signed_orders"]["ok"] > 0 and line["signed_orders"]["statuses"].keys() == {"200"}
    assert line["baseline"]["ok"] > 0
    # the lean load generator (bench/_lean_http.py): closed loop for capacity, then open loop at half of it
    assert line["signed_orders"]["loop"] == "closed" and line["signed_orders"]["client"] == "lean"
    open_loop = line["signed_orders_open_loop"]
    assert open_loop["loop"] == "open" and open_loop["ok"] > 0 and open_loop["statuses"].keys() == {"200"}, open_loop
    assert open_loop["offered_per_s"] == max(1, round(line["signed_orders"]["throughput_per_s"] * 0.5))
    assert line["p99_us_open_loop"] == open_loop["p99_us"] and line["goal"]["order_p99_figure"] == "p99_us_open_loop"
    assert line["goal_met"] == (line["ratios"]["signed_rest_orders_to_ping"] >= 0.5 and open_loop["p99_us"] <= 10_000)
    for figure in ("baseline", "signed_orders", "signed_orders_open_loop"):  # the server's CPU per request beside the client's
        assert line[figure]["cpu_us_per_request"]["engine_process"] > 0 and line[figure]["client_cpu_us_per_request"] > 0
    for figure in ("ws_api_orders", "ws_api_orders_pipelined"):  # one logon per connection, then unsigned orders
        assert line[figure]["ok"] > 0 and line[figure]["statuses"].keys() == {"200"}, line[figure]
    assert line["ratios"]["ws_api_orders_to_ping"] > 0
    fan = line["ws_fanout"]
    assert fan["diff_messages_received"] == fan["expected_messages"] > 0
    assert fan["gaps"] == 0 and fan["server_fanout"]["messages"] > 0


def test_api_benchmark_gateways_open_loop_smoke():
    """Each gateway deployment gets the open-loop figure the one-process server gets: offered at half
    of that deployment's own closed-loop capacity, with the engine's and the gateways' CPU per request,
    and its p99 at the top of the line by gateway count (the goal judged per deployment)."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "api.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke", "--gateways-only", "--gateways", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["mode"] == "gateways-only" and line["smoke"] is True
    [entry] = line["gateways"]
    closed, open_loop = entry["signed_orders"], entry["signed_orders_open_loop"]
    assert closed["loop"] == "closed" and closed["ok"] > 0
    assert open_loop["loop"] == "open" and open_loop["ok"] > 0 and open_loop["statuses"].keys() == {"200"}, open_loop
    assert open_loop["offered_per_s"] == max(1, round(closed["throughput_per_s"] * 0.5))
    assert open_loop["cpu_us_per_request"]["engine_process"] > 0 and open_loop["cpu_us_per_request"]["gateway_processes"] > 0
    assert entry["p99_us_open_loop"] == open_loop["p99_us"] == line["p99_us_open_loop_by_gateways"]["1"]
    assert line["goal_met_by_gateways"]["1"] == (entry["signed_rest_orders_to_ping"] >= 0.5 and open_loop["p99_us"] <= 10_000)
    assert line["goal"]["order_p99_figure"] == "p99_us_open_loop"
