"""The latency benchmark's pure parts: the design of its points, its predictions (batch-1 and batching), its
text, its store key, and its report redone from stored measurements."""
from __future__ import annotations

import math

import pytest

from bench.latency import (
    ALL_ROWS,
    BATCHED,
    BATCHES_FORM,
    FAST,
    SLOW,
    UNBATCHED,
    ModelProfile,
    counted,
    finish,
    markdown,
    planned_rates,
    planned_utilisation,
    pods,
    predict,
    predict_batching,
    predict_old,
    ratio,
    request_cpu_ms,
    served_curves,
    store_key,
    summarise_rows,
    text_with_tokens,
    within,
)
from contracts import ContractError, Plan
from loadtest.report import OpenLoopResult, open_server_rates, server_rows
from loadtest.stats import Sample
from packing.model.latency import BatchCurve, BatchStream, batching_p90s_ms


def _by_batch(p50: float, p90: float) -> dict:
    """A cpu-like batch curve: b rows cost (0.55 + 0.45 b) times one."""
    return {str(b): {"p50_ms": p50 * (0.55 + 0.45 * b), "p90_ms": p90 * (0.55 + 0.45 * b)} for b in (1, 2, 4, 8)}


PROFILES = {SLOW: ModelProfile(20.0, 22.0, _by_batch(20.0, 22.0)), FAST: ModelProfile(5.0, 6.0, _by_batch(5.0, 6.0))}


def test_planned_rates_meet_the_utilisation_they_were_asked_for() -> None:
    single = planned_rates(0.4, 1, {SLOW: 1.0}, PROFILES)
    assert single[SLOW] == pytest.approx(20.0)  # 0.4 x 1 core x 1000 / 20 ms
    mixed = planned_rates(0.6, 2, {SLOW: 0.5, FAST: 0.5}, PROFILES)
    assert mixed[SLOW] == pytest.approx(mixed[FAST])  # half of the requests each
    assert planned_utilisation(mixed, 2, PROFILES) == pytest.approx(0.6)


def test_planned_rates_refuse_a_bad_design() -> None:
    with pytest.raises(ValueError, match="shares"):
        planned_rates(0.5, 1, {SLOW: 0.5, FAST: 0.4}, PROFILES)
    with pytest.raises(ValueError, match="utilisation"):
        planned_rates(1.0, 1, {SLOW: 1.0}, PROFILES)


def test_pods_cover_one_and_two_workers_single_and_mixed_batched_and_not() -> None:
    runs = pods()
    assert {(p.workers, len(p.models), p.max_batch_size) for p in runs} == {
        (w, n, b) for w in (1, 2) for n in (1, 2) for b in (1, 8)}
    assert all(math.isclose(sum(p.shares), 1.0) for p in runs)
    assert len({p.name for p in runs}) == len(runs)


def test_prediction_at_no_load_is_the_service_p90_plus_the_servers_own_work() -> None:
    quiet = predict({SLOW: 1e-9}, 1, PROFILES, 3.0)
    assert quiet[SLOW] == pytest.approx(22.0 + 3.0, rel=1e-3)
    busy = predict({SLOW: 30.0}, 1, PROFILES, 3.0)
    assert busy[SLOW] > quiet[SLOW]


def test_in_a_mix_the_fast_model_waits_behind_the_slow_one() -> None:
    alone = predict({FAST: 60.0}, 1, PROFILES, 0.0)[FAST]
    rates = planned_rates(0.3, 1, {SLOW: 0.5, FAST: 0.5}, PROFILES)
    mixed = predict(rates, 1, PROFILES, 0.0)
    assert planned_utilisation({FAST: 60.0}, 1, PROFILES) == pytest.approx(0.3)
    assert mixed[FAST] > alone
    assert mixed[SLOW] > mixed[FAST]


def test_the_old_rule_adds_an_mmc_wait_to_the_slowest_p90() -> None:
    assert predict_old({SLOW: 1e-9, FAST: 1e-9}, 1, PROFILES) == pytest.approx(22.0, rel=1e-6)
    assert predict_old({SLOW: 40.0}, 1, PROFILES) > 22.0 * 3  # M/M/1 at 0.8


def test_text_with_tokens_reaches_the_target_exactly() -> None:
    # words of two tokens each, two special tokens: only the one-token filler can make an odd total
    def count(text: str) -> int:
        return 2 + sum(1 if w == "a" else 2 for w in text.split())

    text = text_with_tokens(count, 11, ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"])
    assert count(text) == 11
    assert text.startswith("alpha beta gamma delta")
    assert text_with_tokens(lambda t: 2 + len(t.split()), 2, ["x"]) == ""


def test_text_with_tokens_says_when_the_target_cannot_be_met() -> None:
    with pytest.raises(ValueError, match="exactly 1 tokens"):
        text_with_tokens(lambda t: 2 + len(t.split()), 1, ["x"])


def test_store_key_changes_with_whatever_shapes_the_artifacts() -> None:
    base = store_key("models: []", ["--reps", "3"], {"tracing/a.py": b"x"}, "2.13.0")
    assert base == store_key("models: []", ["--reps", "3"], {"tracing/a.py": b"x"}, "2.13.0")
    assert base != store_key("models: [x]", ["--reps", "3"], {"tracing/a.py": b"x"}, "2.13.0")
    assert base != store_key("models: []", ["--reps", "4"], {"tracing/a.py": b"x"}, "2.13.0")
    assert base != store_key("models: []", ["--reps", "3"], {"tracing/a.py": b"y"}, "2.13.0")
    assert base != store_key("models: []", ["--reps", "3"], {"tracing/a.py": b"x"}, "2.14.0")


def test_counted_leaves_out_the_warm_up_and_counts_errors() -> None:
    samples = [
        {"model": SLOW, "due_s": 0.5, "latency_ms": 999.0, "ok": True},
        {"model": SLOW, "due_s": 2.5, "latency_ms": 10.0, "ok": True},
        {"model": SLOW, "due_s": 3.0, "latency_ms": 12.0, "ok": False},
        {"model": FAST, "due_s": 4.0, "latency_ms": 4.0, "ok": True},
    ]
    got = counted(samples, 2.0)
    assert got[SLOW] == ([10.0], 2)
    assert got[FAST] == ([4.0], 1)


def test_ratio_band_and_request_cpu() -> None:
    assert ratio(12.0, 10.0) == pytest.approx(1.2)
    assert ratio(12.0, math.inf) is None and ratio(None, 10.0) is None
    assert within(0.8) and within(1.25) and not within(1.26) and not within(None)
    assert request_cpu_ms(25.0, 21.5) == pytest.approx(3.5)
    assert request_cpu_ms(20.0, 21.5) == 0.0


def test_batched_pods_are_predicted_by_the_batching_model_from_the_profiles_curve() -> None:
    rates = planned_rates(0.8, 1, {SLOW: 0.5, FAST: 0.5}, PROFILES)
    batched = predict(rates, 1, PROFILES, 3.0, max_batch_size=8)
    streams = [BatchStream(rates[m], BatchCurve.of(PROFILES[m].by_batch, PROFILES[m].p50_ms, PROFILES[m].p90_ms), extra_ms=3.0)
               for m in (SLOW, FAST)]
    assert [batched[SLOW], batched[FAST]] == pytest.approx(batching_p90s_ms(1, streams, 8))
    one = predict(rates, 1, PROFILES, 3.0)
    # batches of the curve's cheaper rows carry the load at u 0.8 with far less queueing
    assert batched[SLOW] < 0.8 * one[SLOW] and batched[FAST] < 0.8 * one[FAST]
    assert predict(rates, 1, PROFILES, 3.0, max_batch_size=1) == one
    state = predict_batching(rates, 1, PROFILES, 3.0, 8)
    assert all(1.0 < b < 8.0 for b in state.mean_batch)


def test_a_profile_without_a_batch_curve_assumes_no_batching_gain() -> None:
    flat = {SLOW: ModelProfile(20.0, 22.0)}  # a results JSON from before by_batch was kept
    curved = {SLOW: PROFILES[SLOW]}
    rates = {SLOW: 40.0}  # u 0.8 at batch 1
    assert predict(rates, 1, flat, 0.0, 8)[SLOW] > predict(rates, 1, curved, 0.0, 8)[SLOW]
    assert flat[SLOW].curve().at([4])[0][0] == pytest.approx(80.0)


def test_as_served_curves_keep_the_lone_request_and_add_the_profiles_further_rows() -> None:
    served = {SLOW: ModelProfile(24.0, 27.0)}
    got = served_curves(PROFILES, served, 3.0)[SLOW]
    assert (got.p50_ms, got.p90_ms) == (24.0, 27.0)
    two = got.by_batch["2"]
    assert two["p50_ms"] == pytest.approx(24.0 + 0.45 * 20.0 + 3.0)
    assert two["p90_ms"] == pytest.approx(27.0 + 0.45 * 22.0 + 3.0)
    assert "1" not in got.by_batch


def _row(r: float, old: float, batch1: float = 1.0) -> dict:
    return {"model": SLOW, "requests": 600, "rate_rps": 10.0, "predicted_p90_ms": 30.0, "measured_p90_ms": 30.0 * r,
            "ratio": r, "batch1_p90_ms": 30.0 * r / batch1, "batch1_ratio": batch1, "mmc_p90_ms": 30.0 * r / old, "mmc_ratio": old}


def test_summary_and_markdown_state_each_group() -> None:
    points = [{"pod": "minilm-w1-b8", "max_batch_size": 8, "workers": 1, "utilisation": 0.2, "rate_rps": 10.0, "rows": [_row(1.0, 0.5)]},
              {"pod": "minilm-w1-b1", "max_batch_size": 1, "workers": 1, "utilisation": 0.8, "rate_rps": 40.0, "duration_s": 15.2,
               "rows": [_row(1.4, 0.3, 1.4)]},
              {"pod": "minilm-w1-b8", "max_batch_size": 8, "workers": 1, "utilisation": 0.8, "rate_rps": 40.0,
               "rows": [_row(0.5, 0.3, 0.2)]}]
    summary = summarise_rows(points)
    assert summary[ALL_ROWS]["rows"] == 3 and summary[ALL_ROWS]["within"] == 1  # every row judged, the batched one at 0.8 too
    assert summary[BATCHED]["within"] == 1 and summary[BATCHED]["batch1_within"] == 1
    assert summary[BATCHES_FORM]["rows"] == 1 and summary[BATCHES_FORM]["batch1_min"] == pytest.approx(0.2)
    assert summary[UNBATCHED]["max"] == pytest.approx(1.4)
    results = {
        "created_at": "2026-12-03T14:20:00Z", "machine": "test", "loadavg_before": "0.1", "loadavg_after": "0.2", "wall_s": 600.0,
        "sources": {SLOW: "package:x"}, "profiles": {SLOW: {"p50_ms": 20.0, "p90_ms": 22.0}}, "traced": True,
        "pinning": {"profile": 0, "generator_note": "core 1"}, "text_tokens": 128, "requests_per_point": 600, "warmup_s": 2.0, "seed": 11,
        "request_cpu": {"requests": 300, "forward": {SLOW: {"p50_ms": 20.0, "p90_ms": 22.0, "cpu_ms": 19.5, "spaced_p50_ms": 20.5,
                                                           "spaced_cpu_ms": 20.0}},
                        "by_model": {SLOW: {"server_cpu_ms_per_request": 23.0, "request_cpu_ms": 3.5, "http_p50_ms": 24.5,
                                            "latency_overhead_ms": 4.5, "spaced_server_cpu_ms_per_request": 24.0,
                                            "spaced_request_cpu_ms": 4.0, "spaced_http_p50_ms": 26.5,
                                            "spaced_latency_overhead_ms": 6.0}}, "measured_ms": 3.5},
        "request_cpu_ms_used": 3.5, "request_cpu_ms_source": "catalogue", "points": points, "summary": summary, "plot": "latency.png",
    }
    text = markdown(results)
    assert "| minilm-w1-b1 | 0.8 | 40.0 | 15 | minilm | 600 | 30.0 | 42.0 | 1.40 ✗ |" in text
    assert "**3.50 ms**" in text and "latency minilm 26.50 − 20.50 = 6.00 ms" in text
    assert f"- {ALL_ROWS}: 1 of 3 ratios within 0.8–1.25 (range 0.50–1.40); batch-1 model: 1 of 3 (range 0.20–1.40)" in text


# ---- the load test's predicted-vs-measured P90 (loadtest/report.py), which this benchmark's figures back ----
def _plan(servers: list) -> Plan:
    return Plan.model_validate({
        "schema": 1, "inputs": {}, "options": {}, "solver": {}, "instances": {"c5.xlarge": 2}, "cost_per_hour": 0.34,
        "platform_per_hour": 0.0, "lower_bound_per_hour": 0.34, "gap": 0.0, "solve_seconds": 0.0, "created_at": "2026-01-01T00:00:00Z",
        "servers": [{"id": sid, "instance_type": "c5.xlarge", "processor": "cpu", "replicas": replicas,
                     "placements": [{"instance_index": i, "device_index": r} for r in range(replicas)], "models": models,
                     "requests": {"cpu_m": 2000, "memory_mib": 1024}, "memory_budget_mib": 512,
                     "predicted": {"utilisation": util, "p90_ms": 40.0}} for i, (sid, models, replicas, util) in enumerate(servers)],
        "profile_sources": {}})


def _open(scale: float) -> OpenLoopResult:
    planned = {"a": 10.0, "b": 10.0, "c": 20.0}
    samples = [Sample(m, s, 0.1 * i, 0.1 * i + 0.030, 200) for i, (m, s) in enumerate([("a", "one"), ("c", "two")] * 20)]
    return OpenLoopResult(samples, (0.0, 4.0), scale, 4.0, {m: r * scale for m, r in planned.items()}, planned)


def test_the_plans_p90_is_compared_only_at_the_rate_it_was_predicted_at() -> None:
    plan = _plan([("one", ["a", "b"], 1, 0.4), ("two", ["c"], 2, 0.3)])
    at_scale = {r["server"]: r for r in server_rows(_open(1.0), plan, shared_by_replicas=False)}
    assert at_scale["one"]["compared"] and at_scale["one"]["ratio"] == pytest.approx(30.0 / 40.0)
    # one local process for a 2-replica server gets all its traffic: twice the planned rate per pod
    assert at_scale["two"]["pod_sent_rps"] == pytest.approx(20.0) and at_scale["two"]["pod_planned_rps"] == pytest.approx(10.0)
    assert at_scale["two"]["ratio"] is None
    through_gateway = {r["server"]: r for r in server_rows(_open(1.0), plan, shared_by_replicas=True)}
    assert through_gateway["two"]["ratio"] == pytest.approx(30.0 / 40.0)
    light = {r["server"]: r for r in server_rows(_open(0.2), plan, shared_by_replicas=False)}
    assert light["one"]["measured_p90_ms"] == pytest.approx(30.0) and light["one"]["ratio"] is None
    half = {r["server"]: r for r in server_rows(_open(0.5), plan, shared_by_replicas=False)}
    assert half["two"]["ratio"] == pytest.approx(30.0 / 40.0) and half["one"]["ratio"] is None


def test_open_server_keeps_one_servers_rates() -> None:
    plan = _plan([("busy", ["a"], 1, 0.82), ("mid", ["b"], 1, 0.45), ("low", ["c"], 1, 0.1), ("two", ["d"], 2, 0.6)])
    server_of = {"a": "busy", "b": "mid", "c": "low", "d": "two"}
    rates = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0}
    assert open_server_rates(rates, server_of, plan, "auto") == ("mid", {"a": 0.0, "b": 4.0, "c": 0.0, "d": 0.0})
    assert open_server_rates(rates, server_of, plan, "low")[1] == {"a": 0.0, "b": 0.0, "c": 3.0, "d": 0.0}
    saturated = _plan([("busy", ["a"], 1, 0.82), ("busier", ["b"], 1, 0.9)])
    assert open_server_rates(rates, server_of | {"b": "busier"}, saturated, "auto")[0] == "busy"
    with pytest.raises(ContractError, match="not a server of the routes"):
        open_server_rates(rates, server_of, plan, "nope")
    with pytest.raises(ContractError, match="give --plan"):
        open_server_rates(rates, server_of, None, "auto")


def test_an_unstable_prediction_reads_as_infinite_and_is_left_off_the_plot(tmp_path) -> None:
    from bench.latency import fmt, plot

    assert fmt(None, unbounded=True) == "∞" and fmt(None) == "–" and fmt(12.345) == "12.3"
    unstable = dict(_row(1.0, 1.0), predicted_p90_ms=None, ratio=None)
    points = [{"pod": "mixed-w1-b8", "max_batch_size": 8, "workers": 1, "utilisation": 0.8, "rate_rps": 80.0,
               "rows": [unstable, _row(1.1, 0.7), dict(_row(1.1, 0.7), model="pod")]}]
    png = plot({"points": points}, tmp_path / "latency.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert summarise_rows(points)[ALL_ROWS]["within"] == 2


def test_derive_rows_predicts_at_the_rate_sent_and_adds_the_pod_row() -> None:
    from bench.latency import derive_rows

    measured = {m: {"requests": 300, "ok": 299, "p50_ms": 20.0, "p90_ms": p90, "p99_ms": 50.0} for m, p90 in ((SLOW, 33.0), (FAST, 21.0))}
    point = {"models": [SLOW, FAST], "workers": 1, "sent_rps": {SLOW: 10.0, FAST: 10.0}, "measured": measured}
    rows = derive_rows(point, PROFILES, 2.0)
    assert [r["model"] for r in rows] == [SLOW, FAST, "pod"]
    expected = predict({SLOW: 10.0, FAST: 10.0}, 1, PROFILES, 2.0)
    assert rows[0]["predicted_p90_ms"] == pytest.approx(expected[SLOW]) and rows[0]["errors"] == 1
    assert rows[2]["measured_p90_ms"] == 33.0 and rows[2]["predicted_p90_ms"] == pytest.approx(max(expected.values()))
    assert rows[0]["served_ratio"] is None
    served = {SLOW: ModelProfile(24.0, 27.0), FAST: ModelProfile(9.0, 10.0)}
    with_served = derive_rows(point, PROFILES, 2.0, served)
    assert with_served[1]["served_p90_ms"] == pytest.approx(predict(point["sent_rps"], 1, served, 0.0)[FAST])
    overloaded = dict(point, sent_rps={SLOW: 60.0, FAST: 60.0})
    assert derive_rows(overloaded, PROFILES, 2.0)[0]["predicted_p90_ms"] is None


def test_a_batched_point_gets_both_models_and_the_report_is_redone_from_json(tmp_path) -> None:
    """The --from-json path on a tiny stored run: a batched and an unbatched point, predictions by the pod's
    MAX_BATCH_SIZE, the batch-1 model beside them, the table and the plot written."""
    from bench.latency import derive_rows

    measured = {SLOW: {"requests": 600, "ok": 600, "p50_ms": 30.0, "p90_ms": 45.0, "p99_ms": 60.0}}
    sent = {SLOW: 36.0}  # u 0.72 at batch 1
    points = [{"pod": f"minilm-w1-b{b}", "models": [SLOW], "workers": 1, "max_batch_size": b, "utilisation": 0.8, "rate_rps": 36.0,
               "sent_rps": sent, "duration_s": 16.7, "measured": measured} for b in (8, 1)]
    batched_rows, single_rows = (derive_rows(p, PROFILES, 3.0) for p in points)
    assert batched_rows[0]["predicted_p90_ms"] == pytest.approx(predict(sent, 1, PROFILES, 3.0, 8)[SLOW])
    assert batched_rows[0]["batch1_p90_ms"] == pytest.approx(single_rows[0]["predicted_p90_ms"])
    assert batched_rows[0]["predicted_p90_ms"] < batched_rows[0]["batch1_p90_ms"]
    assert batched_rows[0]["predicted_batch"] > 1.0 and single_rows[0]["predicted_batch"] == 1.0
    spaced = {"spaced_http_p50_ms": 24.0, "spaced_http_p90_ms": 27.0}
    results = {
        "created_at": "2026-12-03T14:20:00Z", "machine": "test", "loadavg_before": "0.1", "loadavg_after": "0.2", "wall_s": 60.0,
        "sources": {SLOW: "package:x"}, "profiles": {SLOW: {"p50_ms": 20.0, "p90_ms": 22.0, "by_batch": PROFILES[SLOW].by_batch}},
        "traced": False, "pinning": {"profile": 0, "generator_note": "core 1"}, "text_tokens": 32, "requests_per_point": 600,
        "warmup_s": 2.0, "seed": 11,
        "request_cpu": {"requests": 300, "forward": {SLOW: {"p50_ms": 20.0, "p90_ms": 22.0, "cpu_ms": 19.5, "spaced_p50_ms": 20.5,
                                                           "spaced_cpu_ms": 20.0}},
                        "by_model": {SLOW: {"server_cpu_ms_per_request": 23.0, "request_cpu_ms": 3.5, "http_p50_ms": 24.5,
                                            "latency_overhead_ms": 4.5, "spaced_server_cpu_ms_per_request": 24.0,
                                            "spaced_request_cpu_ms": 4.0, "spaced_latency_overhead_ms": 3.5, **spaced}},
                        "measured_ms": 3.5},
        "request_cpu_ms_used": 3.0, "request_cpu_ms_source": "catalogue", "points": points, "notes": [],
    }
    out = tmp_path / "latency.json"
    assert finish(results, out) == 0
    text = out.with_suffix(".md").read_text()
    batched, single = ([c.strip() for c in line.strip("|").split("|")] for pod in ("b8", "b1")
                       for line in text.splitlines() if line.startswith(f"| minilm-w1-{pod} |"))
    assert float(batched[6]) == pytest.approx(batched_rows[0]["predicted_p90_ms"], abs=0.05)
    assert float(batched[10]) == pytest.approx(batched_rows[0]["batch1_p90_ms"], abs=0.05)
    assert float(single[6]) == pytest.approx(float(single[10]))  # a MAX_BATCH_SIZE 1 pod: the batch-1 model itself
    assert float(batched[14]) < float(single[14])  # as-served figures batch too
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert results["summary"][ALL_ROWS]["rows"] == 2
