"""config/instances.yaml and config/profiles.yaml load through the contracts; packing.generate
builds the seed scenario and mixed catalogues deterministically and writes them safely."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

import contracts
from packing import generate

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = ROOT / "config" / "instances.yaml"
PROFILES = ROOT / "config" / "profiles.yaml"

FAMILIES = {
    "c5": ["large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge"],
    "g4dn": ["xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge"],
    "g5": ["xlarge", "12xlarge"],
    "inf1": ["xlarge", "2xlarge", "6xlarge", "24xlarge"],
    "inf2": ["xlarge", "8xlarge", "24xlarge", "48xlarge"],
}
SHAPES = ("bert-base-cased", "bert-large-cased", "distilbert-base-uncased", "all-minilm-l6-v2")
# cores per device of the smallest type of each processor, for "more than one device's worth"
CORES = {"cpu": 2, "gpu": 1, "inf1": 4, "inf2": 2}


@pytest.fixture(scope="module")
def catalogue() -> contracts.InstanceCatalogue:
    return contracts.load(contracts.InstanceCatalogue, INSTANCES)


@pytest.fixture(scope="module")
def mixed() -> dict:
    return generate.mixed_catalogue(2000, seed=11, slo_fraction=0.25)


# ---- config/instances.yaml --------------------------------------------------------------------


def test_instances_load_and_every_family_is_there(catalogue):
    names = catalogue.by_name()
    for family, sizes in FAMILIES.items():
        for size in sizes:
            assert f"{family}.{size}" in names, f"{family}.{size} missing"
    assert len(names) == sum(len(s) for s in FAMILIES.values())


def test_inf1_6xlarge_price_is_the_reference_designs(catalogue):
    t = catalogue.by_name()["inf1.6xlarge"]
    assert t.price_per_hour == 1.18
    assert round(40 * t.price_per_hour, 2) == 47.20
    assert (t.devices, t.cores_per_device, t.device_memory_gib, t.max_pods) == (4, 4, 8, 234)


def test_instance_shapes_match_the_families(catalogue):
    names = catalogue.by_name()
    assert catalogue.cpu_slice_vcpu == 2
    for t in catalogue.instances:
        family = t.name.split(".")[0]
        expected = {"c5": "cpu", "g4dn": "gpu", "g5": "gpu", "inf1": "inf1", "inf2": "inf2"}[family]
        assert t.processor == expected, t.name
        if t.processor == "cpu":
            # slices are derived; device_memory_gib is the raw memory per slice, for the shared checker
            assert t.devices is None
            assert t.device_memory_gib == t.memory_gib / (t.vcpu // catalogue.cpu_slice_vcpu)
            assert t.cores_per_device == catalogue.cpu_slice_vcpu
    assert names["g4dn.12xlarge"].devices == 4
    assert all(names[f"g4dn.{s}"].devices == 1 for s in FAMILIES["g4dn"] if s != "12xlarge")
    assert (names["g5.xlarge"].devices, names["g5.12xlarge"].devices) == (1, 4)
    assert [names[f"inf1.{s}"].devices for s in FAMILIES["inf1"]] == [1, 1, 4, 16]
    assert [names[f"inf2.{s}"].devices for s in FAMILIES["inf2"]] == [1, 1, 6, 12]
    assert {names[f"inf2.{s}"].device_memory_gib for s in FAMILIES["inf2"]} == {32}


def test_overheads_and_platform_are_stated(catalogue):
    assert catalogue.daemonset_overhead.cpu_m > 0 and catalogue.daemonset_overhead.memory_mib > 0
    assert (catalogue.server_base.cpu_m, catalogue.server_base.memory_mib) == (250, 320)  # bench/results/serving.md
    assert catalogue.platform["eks_control_plane"] == 0.10
    assert {"nat_gateways", "internal_nlb", "vpc_endpoints", "system_node_group"} <= set(catalogue.platform)


# ---- config/profiles.yaml ---------------------------------------------------------------------


def test_reference_profiles_cover_every_shape_and_processor():
    refs = contracts.load(contracts.ReferenceProfiles, PROFILES)
    table = generate.reference_table(refs, 128)
    for shape in SHAPES:
        assert set(table[shape]) == set(contracts.PROCESSORS), shape
    for p in refs.profiles:
        assert p.citation.strip()
        if p.processor == "cpu":
            assert p.device_memory_mib == p.host_memory_mib
    seed = table["bert-base-cased"]["inf1"]
    assert (seed.device_memory_mib, seed.host_memory_mib, seed.latency_ms, seed.precision) == (380, 400, 22, "bf16")


# ---- seed_scenario ----------------------------------------------------------------------------


def test_seed_scenario_is_the_reference_design():
    data = generate.seed_scenario()
    models = data["models"]
    assert len(models) == 3040
    assert len({m["id"] for m in models}) == 3040
    assert models[0]["id"] == "bert-0000" and models[-1]["id"] == "bert-3039"
    for m in models:
        assert m["rps"] == 2.05
        assert m["profiles"] == {"inf1": {"device_memory_mib": 380, "host_memory_mib": 400, "latency_ms": 22}}
        assert (m["task"], m["sequence_length"], m["batch_size"], m["precision"]) == (
            "question-answering", 128, 1, "bf16")
        assert m["source"] == f"random:bert-base-cased@{int(m['id'].split('-')[1])}"
    contracts.parse(contracts.ModelCatalogue, data, "seed")
    assert math.isclose(math.fsum(m["rps"] for m in models), 3040 * 2.05)


# ---- mixed_catalogue --------------------------------------------------------------------------


def test_mixed_is_deterministic_per_seed_and_differs_across_seeds(mixed):
    assert generate.mixed_catalogue(2000, seed=11, slo_fraction=0.25) == mixed
    assert generate.mixed_catalogue(2000, seed=12, slo_fraction=0.25) != mixed


def test_mixed_validates_and_mixes_shapes_and_processors(mixed):
    parsed = contracts.parse(contracts.ModelCatalogue, mixed, "mixed")
    assert len(parsed.models) == 2000
    shapes = {m["source"].split(":")[1].split("@")[0] for m in mixed["models"]}
    assert shapes == set(SHAPES)
    processors = {p for m in mixed["models"] for p in m["profiles"]}
    assert len(processors) >= 2
    for m in parsed.models:
        for prof in m.profiles.values():
            assert prof.latency_p90_ms is not None and prof.latency_p90_ms >= prof.latency_ms
        if "cpu" in m.profiles:
            assert m.profiles["cpu"].device_memory_mib == m.profiles["cpu"].host_memory_mib


def test_mixed_has_no_two_identical_profiles(mixed):
    profiles = [tuple(sorted(p.items())) for m in mixed["models"] for p in m["profiles"].values()]
    assert len(profiles) == len(set(profiles))


def test_mixed_profiles_stay_within_a_few_percent_of_the_reference(mixed):
    table = generate.reference_table(contracts.load(contracts.ReferenceProfiles, PROFILES))
    for m in mixed["models"]:
        shape = m["source"].split(":")[1].split("@")[0]
        for proc, prof in m["profiles"].items():
            ref = table[shape][proc]
            assert abs(prof["device_memory_mib"] / ref.device_memory_mib - 1) < 0.05
            assert abs(prof["latency_ms"] / ref.latency_ms - 1) < 0.06


def test_zipf_traffic_sums_to_total_and_is_heavy_tailed():
    for n, total in ((3040, None), (500, 1234.5678), (7, 3.0)):
        data = generate.mixed_catalogue(n, seed=3, total_rps=total)
        want = 2.05 * n if total is None else total
        got = math.fsum(m["rps"] for m in data["models"])
        assert abs(got - want) <= 1e-6 * want, (n, got, want)
    rps = sorted((m["rps"] for m in generate.mixed_catalogue(3040, seed=3)["models"]), reverse=True)
    assert rps[0] > 50 * rps[len(rps) // 2]  # the head dwarfs the median


def test_hottest_models_exceed_one_device(mixed):
    hot = [
        m for m in mixed["models"]
        if any(m["rps"] * p["latency_ms"] / 1000 / CORES[proc] > 1 for proc, p in m["profiles"].items())
    ]
    assert hot, "Zipf traffic should make some models need more than one device"


def test_uniform_traffic_and_processor_subset():
    data = generate.mixed_catalogue(300, seed=5, traffic="uniform", total_rps=600, processors=["inf1", "gpu"])
    assert {m["rps"] for m in data["models"]} == {2.0}
    assert {p for m in data["models"] for p in m["profiles"]} == {"inf1", "gpu"}
    assert all(set(m["profiles"]) == {"inf1", "gpu"} for m in data["models"])


def test_slo_fraction(mixed):
    with_slo = [m for m in mixed["models"] if "slo_p90_ms" in m]
    assert len(with_slo) == 500
    for m in with_slo:
        fastest = min(p["latency_p90_ms"] for p in m["profiles"].values())
        assert m["slo_p90_ms"] >= 2 * fastest - 1e-9
    assert not any("slo_p90_ms" in m for m in generate.mixed_catalogue(50, seed=1)["models"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"traffic": "pareto"},
        {"zipf_s": 0},
        {"total_rps": -1},
        {"slo_fraction": 1.5},
        {"processors": ["tpu"]},
        {"shapes": ["gpt-2"]},
    ],
)
def test_mixed_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        generate.mixed_catalogue(10, seed=0, **kwargs)


# ---- write_catalogue --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_write_round_trips(tmp_path, mixed, suffix):
    small = {"models": mixed["models"][:200]}
    path = generate.write_catalogue(small, tmp_path / f"models{suffix}")
    loaded = contracts.load(contracts.ModelCatalogue, path)
    assert loaded == contracts.parse(contracts.ModelCatalogue, small, "expected")
    assert [p.name for p in tmp_path.iterdir()] == [f"models{suffix}"]  # no temporary left behind


def test_invalid_catalogue_raises_and_writes_nothing(tmp_path):
    bad = generate.seed_scenario(3)
    bad["models"][1]["id"] = "Not A DNS Label"
    target = tmp_path / "bad.yaml"
    with pytest.raises(contracts.ContractError, match=r"models\[1\]\.id"):
        generate.write_catalogue(bad, target)
    assert list(tmp_path.iterdir()) == []

    dup = generate.seed_scenario(2)
    dup["models"][1]["id"] = dup["models"][0]["id"]
    with pytest.raises(contracts.ContractError):
        generate.write_catalogue(dup, tmp_path / "dup.json")
    assert list(tmp_path.iterdir()) == []


def test_invalid_catalogue_leaves_an_existing_file_alone(tmp_path):
    target = generate.write_catalogue(generate.seed_scenario(2), tmp_path / "models.yaml")
    before = target.read_bytes()
    bad = generate.seed_scenario(2)
    bad["models"][0]["rps"] = -1
    with pytest.raises(contracts.ContractError):
        generate.write_catalogue(bad, target)
    assert target.read_bytes() == before


# ---- the `generate` sub-command ---------------------------------------------------------------


def _cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="packing")
    generate.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_writes_what_it_says(tmp_path, capsys):
    out = tmp_path / "mixed.json"
    args = _cli().parse_args(
        ["generate", "--kind", "mixed", "--models", "120", "--seed", "4", "--processors", "inf1,cpu",
         "--slo-fraction", "0.5", "--total-rps", "300", "--out", str(out)]
    )
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "120 models" in line and "300.000 rps" in line and str(out) in line
    loaded = contracts.load(contracts.ModelCatalogue, out)
    assert len(loaded.models) == 120
    assert {p for m in loaded.models for p in m.profiles} == {"inf1", "cpu"}

    seed_out = tmp_path / "seed.yaml"
    args = _cli().parse_args(["generate", "--models", "40", "--out", str(seed_out)])
    assert args.func(args) == 0
    assert len(contracts.load(contracts.ModelCatalogue, seed_out).models) == 40


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--kind", "mixed", "--models", "0", "--out", "x.json"],
        ["generate", "--kind", "mixed", "--processors", "cpu,tpu", "--out", "x.json"],
        ["generate", "--kind", "mixed", "--slo-fraction", "2", "--out", "x.json"],
        ["generate", "--kind", "mixed", "--traffic", "pareto", "--out", "x.json"],
        ["generate", "--kind", "seed"],  # --out is required
    ],
)
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli().parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_rejects_mixed_options_for_seed_and_a_missing_reference(tmp_path, capsys):
    args = _cli().parse_args(["generate", "--kind", "seed", "--zipf-s", "2", "--out", str(tmp_path / "s.yaml")])
    with pytest.raises(SystemExit):
        args.func(args)
    assert "--zipf-s only applies to --kind mixed" in capsys.readouterr().err

    args = _cli().parse_args(["generate", "--kind", "mixed", "--reference-profiles", str(tmp_path / "none.yaml"),
                              "--out", str(tmp_path / "m.yaml")])
    with pytest.raises(SystemExit):
        args.func(args)
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "m.yaml").exists()
