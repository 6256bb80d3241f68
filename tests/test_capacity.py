"""charts/capacity.py: node group maximums and the HPA maximums that must fit them."""
from __future__ import annotations

import pytest

from charts.capacity import hpa_max_for, node_group_max


@pytest.mark.parametrize("desired,burst,expected", [
    (0, 2.0, 0), (1, 1.0, 1), (1, 1.5, 2), (2, 1.5, 3), (3, 2.0, 6), (10, 1.1, 11), (7, 1.01, 8),
])
def test_node_group_max(desired, burst, expected):
    assert node_group_max(desired, burst) == expected


@pytest.mark.parametrize("args", [(-1, 2.0), (3, 0.9)])
def test_node_group_max_refuses_nonsense(args):
    with pytest.raises(ValueError):
        node_group_max(*args)


@pytest.mark.parametrize("replicas,per_node,spare,configured,expected", [
    (1, 1, 0, 3, 1),   # no spare node: the HPA cannot grow (and never drops below the plan's replicas)
    (1, 1, 1, 3, 2),   # one spare inf1.xlarge (one chip) holds one more pod
    (1, 4, 1, 3, 3),   # one spare inf1.6xlarge holds four: the configured maximum binds
    (2, 1, 3, 6, 5),
    (4, 1, 0, 3, 4),   # configured below the plan's replicas: the minimum wins
])
def test_hpa_max_for(replicas, per_node, spare, configured, expected):
    assert hpa_max_for(replicas, per_node, spare, configured) == expected


@pytest.mark.parametrize("args", [(0, 1, 0, 1), (1, 0, 0, 1), (1, 1, -1, 1), (1, 1, 0, 0)])
def test_hpa_max_for_refuses_nonsense(args):
    with pytest.raises(ValueError):
        hpa_max_for(*args)
