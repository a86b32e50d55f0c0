"""Relative weight changes (lesson 10): names to module types, exact norms, aggregation, snapshots."""

import math

import pytest
import torch

from course_lib.weight_changes import (
    LAYER_TYPES,
    MODULE_TYPES,
    ChangeTracker,
    base_weights,
    by_module,
    group_change,
    layer_grid,
    layer_of,
    module_type,
    relative_changes,
    trajectory,
)


def test_every_pocket_weight_has_a_module_type_and_the_layered_ones_a_layer(pocket):
    model, _ = pocket
    names = [n for n, _ in model.named_parameters()]
    kinds = [module_type(n) for n in names]
    assert None not in kinds and set(kinds) == set(MODULE_TYPES)
    assert len(names) == 6 * len(LAYER_TYPES) + 2  # 6 layers of 9, the (tied) embedding, the final norm
    assert {layer_of(n) for n in names if module_type(n) in LAYER_TYPES} == set(range(6))
    assert layer_of("model.embed_tokens.weight") is None and module_type("model.norm.weight") == "final_norm"
    assert module_type("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None


def test_relative_change_is_the_frobenius_ratio_and_only_where_the_weights_moved(pocket):
    model, _ = pocket
    base = base_weights(model)
    with torch.no_grad():
        model.model.layers[2].self_attn.q_proj.weight.mul_(1.1)  # dW = 0.1 W: relative change 0.1 exactly
        model.model.layers[4].mlp.down_proj.weight[0, 0] += 3.0  # one entry: ||dW|| = 3
    table = relative_changes(model, base)
    grid = layer_grid(table)
    assert grid.loc["q", 2] == pytest.approx(0.1, rel=1e-5)
    down = base["model.layers.4.mlp.down_proj.weight"]
    assert grid.loc["down", 4] == pytest.approx(3.0 / down.norm().item(), rel=1e-5)
    assert table["rel_change"].gt(0).sum() == 2  # nothing else moved
    row = table.set_index("name").loc["model.layers.4.mlp.down_proj.weight"]
    assert row["rms_change"] == pytest.approx(3.0 / math.sqrt(down.numel()), rel=1e-5)
    # all layers together: the concatenation's ratio, not the mean of the layers' ratios
    q_sq = sum(base[f"model.layers.{i}.self_attn.q_proj.weight"].pow(2).sum().item() for i in range(6))
    q2_sq = base["model.layers.2.self_attn.q_proj.weight"].pow(2).sum().item()
    assert by_module(table).loc["q", "rel_change"] == pytest.approx(math.sqrt(0.01 * q2_sq / q_sq), rel=1e-5)
    assert group_change(table, ["q"], [2]) == pytest.approx(0.1, rel=1e-5)
    assert list(by_module(table).index) == list(MODULE_TYPES)
    with pytest.raises(ValueError, match="no weight matrix"):
        group_change(table, ["q"], [17])


def test_a_model_without_the_base_weights_is_refused_with_what_to_do(pocket):
    model, _ = pocket
    with pytest.raises(KeyError, match="merge_and_unload"):
        relative_changes(model, {"model.layers.9.self_attn.q_proj.weight": torch.ones(2)})


def test_the_tracker_records_every_nth_step_and_the_trajectory_ends_at_the_whole_run(pocket):
    model, _ = pocket
    tracker = ChangeTracker(model, every=2)
    q = model.model.layers[0].self_attn.q_proj.weight
    for step in range(1, 5):
        with torch.no_grad():
            q.add_(0.01 * torch.ones_like(q))  # a little more each step
        tracker({"step": step})
    assert sorted(tracker.snapshots) == [2, 4]
    path = trajectory(tracker.table(), "q", 0)
    assert list(path["progress"]) == [0.5, 1.0]
    assert path["rel_change"].iloc[1] == pytest.approx(2 * path["rel_change"].iloc[0], rel=1e-4)
    callback = tracker.trainer_callback()
    callback.on_step_end(None, type("State", (), {"global_step": 6})(), None)
    assert 6 in tracker.snapshots
    with pytest.raises(ValueError, match="every"):
        ChangeTracker(model, every=0)
