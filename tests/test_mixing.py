"Property tests of llmbind.mixing.MixtureSampler: resume exactness, rank disjointness/coverage, tiny leaves, zero weights."
import json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from llmbind.config import ConfigError, paper_mixture, mixture_leaf_probs
from llmbind.mixing import MixtureSampler

SET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

weights = st.sampled_from([0.0, 0.5, 1.0, 2.0, 9.0])

@st.composite
def trees(draw):
    "Random two-level trees with at least one positive weight per group."
    tree = {}
    for i in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            kids = {f"c{j}": draw(weights) for j in range(draw(st.integers(1, 3)))}
            if sum(kids.values()) == 0: kids["c0"] = 1.0
            tree[f"g{i}"] = {"weight": draw(weights), "children": kids}
        else: tree[f"l{i}"] = draw(weights)
    if all((v["weight"] if isinstance(v, dict) else v) == 0 for v in tree.values()):
        first = next(iter(tree))
        if isinstance(tree[first], dict): tree[first]["weight"] = 1.0
        else: tree[first] = 1.0
    return tree

def sizes_for(tree, draw_size):
    return {leaf: draw_size for leaf in mixture_leaf_probs(tree)}

@SET
@given(trees(), st.integers(1, 7), st.integers(0, 300), st.integers(0, 2**31))
def test_resume_is_exact(tree, size, k, seed):
    sizes = sizes_for(tree, size)
    full = MixtureSampler(tree, sizes, seed=seed).take(k + 200)
    a = MixtureSampler(tree, sizes, seed=seed)
    head = a.take(k)
    state = json.loads(json.dumps(a.state_dict()))
    b = MixtureSampler(tree, sizes, seed=seed).load_state_dict(state)
    assert head + b.take(200) == full

@SET
@given(trees(), st.integers(1, 5), st.integers(1, 4), st.integers(0, 1000))
def test_ranks_disjoint_and_cover(tree, size, world, seed):
    sizes = sizes_for(tree, size)
    n = 120
    per_rank = [MixtureSampler(tree, sizes, seed=seed, rank=r, world_size=world).take(n) for r in range(world)]
    single = MixtureSampler(tree, sizes, seed=seed).take(n * world)
    assert [per_rank[g % world][g // world] for g in range(n * world)] == single
    # draw c of a leaf goes to exactly one rank: tag each (leaf, per-leaf draw number)
    tags = [set() for _ in range(world)]
    counts = {}
    for g, (leaf, _) in enumerate(single):
        c = counts.get(leaf, 0); counts[leaf] = c + 1
        tags[g % world].add((leaf, c))
    for i in range(world):
        for j in range(i + 1, world): assert not (tags[i] & tags[j])
    assert sum(len(t) for t in tags) == n * world

@SET
@given(trees(), st.integers(0, 1000))
def test_zero_weight_never_drawn_and_epochs(tree, seed):
    probs = mixture_leaf_probs(tree)
    sizes = {leaf: (3 if p > 0 else 0) for leaf, p in probs.items()}
    draws = MixtureSampler(tree, sizes, seed=seed).take(600)
    assert all(probs[leaf] > 0 for leaf, _ in draws)
    by = {}
    for leaf, i in draws: by.setdefault(leaf, []).append(i)
    for leaf, idx in by.items():
        for e in range(len(idx) // 3): assert sorted(idx[3 * e:3 * e + 3]) == [0, 1, 2]

def test_size_one_leaf_and_resume_across_epochs():
    sizes = {leaf: 1 for leaf in mixture_leaf_probs(paper_mixture())}
    s = MixtureSampler(paper_mixture(), sizes, seed=5)
    assert all(i == 0 for _, i in s.take(1000))
    st_ = s.state_dict()
    assert sum(st_["leaf_draws"].values()) == 1000

def test_resume_with_ranks():
    sizes = {leaf: 11 for leaf in mixture_leaf_probs(paper_mixture())}
    for r in range(3):
        full = MixtureSampler(paper_mixture(), sizes, seed=9, rank=r, world_size=3).take(700)
        a = MixtureSampler(paper_mixture(), sizes, seed=9, rank=r, world_size=3)
        head = a.take(333)
        b = MixtureSampler(paper_mixture(), sizes, seed=9, rank=r, world_size=3).load_state_dict(a.state_dict())
        assert head + b.take(367) == full

def test_frequencies_match_targets():
    from scipy.stats import chisquare
    sizes = {leaf: 17 for leaf in mixture_leaf_probs(paper_mixture())}
    for seed in (0, 1, 2):
        s = MixtureSampler(paper_mixture(), sizes, seed=seed)
        leaves = [leaf for leaf, _ in s.take(30_000)]
        counts = np.array([leaves.count(l) for l in s.leaves])
        p = np.array(list(s.leaf_probabilities().values()))
        assert chisquare(counts, 30_000 * p).pvalue > 1e-4

def test_bad_trees():
    with pytest.raises(ConfigError): MixtureSampler({"a": -1.0}, {"a": 1})
    with pytest.raises(ConfigError): MixtureSampler({"a": 0.0, "b": 0.0}, {"a": 1, "b": 1})
    with pytest.raises(ConfigError): MixtureSampler({"g": {"weight": 1.0, "children": {"x": 0.0, "y": 0.0}}}, {})
