"""Tiny random planning cases (hypothesis) that a brute force can solve, and the builders of
their models and instance types, for the optimality and bound tests."""
from __future__ import annotations

from typing import Any, Dict

from hypothesis import strategies as st


def inline(dev: float, host: float, latency: float) -> dict:
    return {"device_memory_mib": dev, "host_memory_mib": host, "latency_ms": latency}


def inf1_type(name: str, price: float, vcpu: int, memory_gib: float, devices: int, device_gib: float, cores: int,
              max_pods: int) -> dict:
    return {"name": name, "processor": "inf1", "price_per_hour": price, "vcpu": vcpu, "memory_gib": memory_gib,
            "devices": devices, "device_memory_gib": device_gib, "cores_per_device": cores, "max_pods": max_pods}


def tiny_model(i: int, rps: float, **profiles) -> dict:
    return {"id": f"m{i}", "rps": rps, "profiles": {p: inline(*v) for p, v in profiles.items()}}


# Two cases the property test found (kept as explicit examples of it): at commits 903fe78 and
# 78a34d7 the integer master's aggregate host-memory row accepted pods that the nodes could not
# hold one by one, and placement opened more nodes than it had counted.
@st.composite
def tiny_cases(draw) -> Dict[str, Any]:
    processors = draw(st.sampled_from([("inf1",), ("cpu",), ("inf1", "cpu"), ("cpu", "inf1")]))
    max_util = draw(st.sampled_from([0.6, 0.83, 1.0]))
    max_dev_gib = draw(st.sampled_from([None, None, 1.0, 1.5, 2.0]))
    catalogue: Dict[str, Any] = {
        "cpu_slice_vcpu": 2,
        "server_base": {"cpu_m": draw(st.sampled_from([0, 100, 250])), "memory_mib": draw(st.sampled_from([50, 200, 400]))},
        "daemonset_overhead": {"cpu_m": draw(st.sampled_from([0, 50])), "memory_mib": draw(st.sampled_from([0, 30, 120]))},
        "platform": draw(st.sampled_from([{}, {"eks_control_plane": 0.1}, {"eks_control_plane": 0.1, "nat": 0.135}])),
        "instances": [],
    }
    for k in range(draw(st.integers(1, 3))):
        proc = draw(st.sampled_from(processors))
        price = draw(st.integers(50, 2000)) / 1000
        max_pods = draw(st.integers(4, 20))
        if proc == "inf1":
            catalogue["instances"].append({
                "name": f"inf1.t{k}", "processor": "inf1", "price_per_hour": price,
                "vcpu": draw(st.sampled_from([4, 8, 16])), "memory_gib": draw(st.sampled_from([2, 3, 4, 6, 8])),
                "devices": draw(st.integers(1, 4)), "device_memory_gib": draw(st.sampled_from([1, 2, 4])),
                "cores_per_device": draw(st.integers(1, 4)), "max_pods": max_pods,
            })
        else:
            catalogue["instances"].append({
                "name": f"c5.t{k}", "processor": "cpu", "price_per_hour": price,
                "vcpu": draw(st.sampled_from([2, 4, 8])), "memory_gib": draw(st.sampled_from([2, 4, 8])),
                "cores_per_device": 2, "max_pods": max_pods,
            })
    models = []
    for i in range(draw(st.integers(2, 6))):
        mine = draw(st.sampled_from([processors] + [(p,) for p in processors])) if len(processors) > 1 else processors
        lat0 = draw(st.integers(2, 120))
        # Utilisation at most 0.9 of the cap on every shape (cores >= 1, latencies within 1.1 x lat0):
        # no model is hot, as the brute force assumes.
        frac = draw(st.integers(2, 90)) / 100
        rps = round(frac * max_util / 1.1 * 1000 / lat0, 4)
        profiles = {}
        for j, p in enumerate(mine):
            lat = float(lat0) if j == 0 else round(lat0 * draw(st.integers(50, 110)) / 100, 3)
            host = draw(st.one_of(st.integers(10, 300), st.integers(300, 2000)))
            dev = 0 if p == "cpu" else draw(st.integers(50, 1800))
            profiles[p] = {"device_memory_mib": dev, "host_memory_mib": host, "latency_ms": lat}
        models.append({"id": f"m{i}", "rps": rps, "profiles": profiles})
    return {"models": models, "catalogue": catalogue, "max_util": max_util, "max_dev_gib": max_dev_gib}
