"""Attacks, defenses and security metrics (docs/design.md §3): model level, pure PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import InterEmbedder, SecureVQA, make_generator
from model.security.attacks import (
    LEVEL, AttackSpec, BlackBoxConfig, WhiteBoxConfig, attack_video, black_box_attack, normalised_mos, quantize,
    score_reversed_targets, white_box_attack,
)
from model.config import SamplingConfig
from model.security.defense import ABLATION, DefendedVQA, Defenses
from model.metrics import robustness, robustness_terms, security_metrics
from tests.helpers.micro import MICRO, micro_model

@pytest.fixture(scope="module")
def micro() -> tuple[SecureVQA, InterEmbedder]:
    vqa, inter = micro_model()
    for p in [*vqa.parameters(), *inter.parameters()]:
        p.requires_grad_(False)
    return vqa.eval(), inter


def grid_frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Frames on the 8-bit grid (as decoded), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255


def linear_score(weights: torch.Tensor):
    """A deterministic differentiable 'model': score = <w, x> per sample."""
    def fn(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return (x.flatten(1) * weights.flatten()).sum(1)
    return fn


# ----------------------------------------------------------------------------- target rule, R, metrics


def test_target_rule_hand_computed():
    q = np.array([1.0, 2.0, 3.0, 4.0])
    mos = np.array([2.0, 4.0, 6.0, 8.0])
    q_mos = normalised_mos(mos)
    assert q_mos.tolist() == [0.25, 0.5, 0.75, 1.0]
    t = score_reversed_targets(q, q_mos)
    # mean(q_mos) = 0.625, std = sqrt(0.078125) = 0.279508; mean(q) = 2.5, std(q) = 1.118034
    # low = (0 - 0.625) / 0.279508 * 1.118034 + 2.5 = -2.5 + 2.5 = 0; high = 0.375 / 0.279508 * 1.118034 + 2.5 = 4
    assert t.low == pytest.approx(0.0, abs=1e-12) and t.high == pytest.approx(4.0)
    # median(q_mos) = 0.625: the two videos at or above it go low, the others high
    assert t.target.tolist() == pytest.approx([4.0, 4.0, 0.0, 0.0])
    # ties at the median go low (>=)
    t2 = score_reversed_targets(np.array([0.0, 1.0, 2.0]), np.array([0.2, 0.5, 0.8]))
    assert t2.target[1] == pytest.approx(t2.low)


def test_target_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="spread"):
        score_reversed_targets(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="finite"):
        score_reversed_targets(np.array([1.0, np.nan]), np.array([0.2, 0.4]))
    with pytest.raises(ValueError, match="same length"):
        score_reversed_targets(np.array([1.0, 2.0]), np.array([0.2, 0.4, 0.6]))


def test_robustness_hand_computed():
    q, target = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    q_adv = np.array([1.0, 0.5])  # moved 1 of 2 toward the target; moved 0.5 of 2
    terms = robustness_terms(q, q_adv, target)
    assert terms.tolist() == pytest.approx([math.log(2.0), math.log(4.0)])
    assert robustness(q, q_adv, target) == pytest.approx((math.log(2) + math.log(4)) / 2)
    # an attack that does nothing is maximally robust (the 1e-12 guard keeps it finite)
    assert robustness([0.0], [0.0], [1.0]) == pytest.approx(math.log(1e12))
    # moving the whole way: ln 1 = 0
    assert robustness([0.0], [1.0], [1.0]) == pytest.approx(0.0, abs=1e-9)


def test_security_metrics_values_and_cis():
    rng = np.random.default_rng(1)
    q_mos = rng.uniform(0.2, 1.0, 40)
    q = q_mos * 2 + rng.normal(0, 0.05, 40)
    t = score_reversed_targets(q, q_mos).target
    q_adv = q + 0.5 * (t - q)  # half way for everyone: every term is ln 2
    m = security_metrics(q, q_adv, t, q_mos, n_boot=200)
    assert m["n"] == 40
    assert m["r"] == pytest.approx(math.log(2)) and m["r_low"] == pytest.approx(math.log(2))
    assert m["shift"] == pytest.approx(np.abs(q_adv - q).mean())
    assert m["shift_low"] <= m["shift"] <= m["shift_high"]
    assert m["srcc_clean"] > 0.9 and m["srcc_adv"] < m["srcc_clean"]
    assert m["srcc_clean_low"] <= m["srcc_clean"] <= m["srcc_clean_high"]


# ----------------------------------------------------------------------------- black-box


def test_black_box_stays_in_linf_budget_and_on_grid():
    x = grid_frames(3, 120, 176)
    w = torch.randn(3, 120, 176, generator=torch.Generator().manual_seed(2))
    for gamma in (1, 3, 5):
        cfg = BlackBoxConfig(gamma=gamma * LEVEL)
        res = black_box_attack(x, linear_score(w), torch.full((3,), 100.0), cfg,
                               generator=make_generator(0), defender=make_generator(1))
        d = (res.adversarial - x) / LEVEL
        assert d.abs().max() <= gamma + 1e-4
        assert torch.allclose(d, d.round(), atol=1e-3)  # on the 8-bit grid
        assert ((res.adversarial >= 0) & (res.adversarial <= 1)).all()
        assert d.abs().max() > gamma - 1e-4  # and it did use the budget
        # units: 3 * (120 // 56) * (176 // 56) = 18, one per step; 1 + at most 2 queries per step
        assert (res.queries >= 1 + 18).all() and (res.queries <= 1 + 2 * 18).all()
        # the strip past the last whole patch is never touched
        assert d[:, :, 112:, :].abs().max() == 0 and d[:, :, :, 168:].abs().max() == 0


def test_black_box_accepts_only_strict_improvements():
    """Replay the logged queries with the published rule: the attack's result must be exactly the
    state the rule reaches (noisy scores, so worse and equal candidates do occur)."""
    x = grid_frames(1, 112, 168, seed=3)
    w = torch.randn(3, 112, 168, generator=torch.Generator().manual_seed(4))
    log: list[tuple[torch.Tensor, float]] = []

    def noisy(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = (xb.flatten(1) * w.flatten()).sum(1) + torch.randn(xb.shape[0], generator=g) * 0.3
        s = s.round(decimals=1)  # ties happen: equal loss must be rejected
        log.append((xb[0].clone(), float(s[0])))
        return s

    target = 2.0
    res = black_box_attack(x, noisy, torch.tensor([target]), BlackBoxConfig(),
                           generator=make_generator(5), defender=make_generator(6))
    state, best = log[0][0], abs(log[0][1] - target)
    accepted = rejected = 0
    for cand, s in log[1:]:
        if abs(s - target) < best:
            state, best = cand, abs(s - target)
            accepted += 1
        else:
            rejected += 1
    assert accepted > 0 and rejected > 0
    assert torch.allclose(res.adversarial[0], state, atol=1e-6)
    assert res.loss.item() == pytest.approx(best)
    assert res.queries.item() == len(log)


def test_black_box_never_moves_when_nothing_improves():
    x = grid_frames(2, 112, 112)
    res = black_box_attack(x, lambda xb, g: torch.zeros(xb.shape[0]), torch.ones(2), BlackBoxConfig(),
                           generator=make_generator(0), defender=make_generator(0))
    assert torch.equal(res.adversarial, x)
    assert res.queries.tolist() == [1 + 2 * 12] * 2  # 12 units, both signs tried each step


def test_black_box_repeats_average_queries():
    x = grid_frames(1, 112, 112)
    calls: list[int] = []

    def fn(xb, g):
        calls.append(xb.shape[0])
        return torch.zeros(xb.shape[0])

    res = black_box_attack(x, fn, torch.ones(1), BlackBoxConfig(repeats=4),
                           generator=make_generator(0), defender=make_generator(0))
    assert set(calls) == {4} and res.queries.item() == 4 * (1 + 2 * 12)


# ----------------------------------------------------------------------------- white-box


def test_quantize_keeps_l2_ball_and_linf_box():
    g = torch.Generator().manual_seed(7)
    x = grid_frames(4, 32, 32)
    radius = math.sqrt(3 * 32 * 32) * LEVEL
    delta = torch.randn(4, 3, 32, 32, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius  # on the sphere
    adv = (x + delta).clamp(0, 1)
    q = quantize(x, adv, l2=radius)
    d = q - x
    assert (d.flatten(1).norm(dim=1) <= radius * (1 + 1e-5)).all()
    assert torch.allclose(d / LEVEL, (d / LEVEL).round(), atol=1e-3)
    # plain rounding would have left the ball: the budget step is needed
    naive = ((adv - x) / LEVEL).round() * LEVEL
    assert (naive.flatten(1).norm(dim=1) > radius).any()
    q_inf = quantize(x, (x + 0.05 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1), linf=3 * LEVEL)
    assert ((q_inf - x).abs() <= 3 * LEVEL + 1e-6).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_white_box_stays_in_its_ball(norm):
    x = grid_frames(3, 48, 64, seed=8)
    w = torch.randn(3, 48, 64, generator=torch.Generator().manual_seed(9)) * 100  # steep: pushes to the edge
    cfg = WhiteBoxConfig(norm=norm, steps=30, lr=0.05)
    res = white_box_attack(x, linear_score(w), torch.full((3,), 1e6), cfg, defender=make_generator(0))
    d = res.adversarial - x
    if norm == "l2":
        radius = math.sqrt(3 * 48 * 64) / 255
        norms = d.flatten(1).norm(dim=1)
        assert (norms <= radius * (1 + 1e-5)).all() and (norms > 0.8 * radius).all()
    else:
        assert d.abs().max() <= 3 * LEVEL + 1e-6 and d.abs().max() >= 3 * LEVEL - 1e-6
    assert torch.allclose(d / LEVEL, (d / LEVEL).round(), atol=1e-3)
    assert ((res.adversarial >= 0) & (res.adversarial <= 1)).all()
    assert res.queries.tolist() == [30] * 3


def test_white_box_moves_undefended_score_toward_target(micro):
    vqa, inter = micro
    scorer = DefendedVQA(vqa, inter, Defenses.parse("none"))
    video = grid_frames(4, 72, 96, seed=10)  # (T, 3, H, W)
    with torch.no_grad():
        clean = float(scorer(video[None], generator=make_generator(0))[0])
    for direction in (+1, -1):
        target = clean + direction * 1.0
        spec = AttackSpec(kind="white-box", white_box=WhiteBoxConfig(steps=10))
        res = attack_video(video, lambda v, g: scorer(v, generator=g), target, spec,
                           attacker=make_generator(1), defender=make_generator(2))
        with torch.no_grad():
            adv = float(scorer(res.adversarial[None], generator=make_generator(3))[0])
        assert abs(adv - target) < abs(clean - target) - 1e-4, (clean, adv, target)
        rms = ((res.adversarial - video) / LEVEL).square().mean().sqrt()
        assert rms <= 1.0 + 1e-4


def test_white_box_eot_averages_defender_draws(micro):
    vqa, inter = micro
    batches: list[int] = []
    scorer = DefendedVQA(vqa, inter, Defenses())

    def fn(x, g):
        batches.append(x.shape[0])
        return scorer(x, generator=g)

    x = grid_frames(2, 64, 64)[:, None]  # two one-frame videos
    res = white_box_attack(x, fn, torch.zeros(2), WhiteBoxConfig(steps=2, eot=3), defender=make_generator(0))
    assert batches == [6, 6] and res.queries.tolist() == [6, 6]


# ----------------------------------------------------------------------------- replay


@pytest.mark.parametrize("spec", [pytest.param("black-box:gamma=5", marks=pytest.mark.slow),  # 7 s of CPU
                                  "white-box:steps=3", "white-box:steps=2,eot=2,objective=video"])
def test_attacks_replay_from_seed(micro, spec):
    vqa, inter = micro
    scorer = DefendedVQA(vqa, inter, Defenses())  # randomised: replay needs both generators
    video = grid_frames(2, 112, 112, seed=11)
    a = AttackSpec.parse(spec)

    def run(seed: int) -> torch.Tensor:
        return attack_video(video, lambda v, g: scorer(v, generator=g), 0.5, a,
                            attacker=make_generator(seed), defender=make_generator(seed + 100)).adversarial

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ----------------------------------------------------------------------------- defenses


def test_defense_names_round_trip_and_errors():
    for d in [*ABLATION, Defenses(guardian_draws=4), Defenses(True, False, True)]:
        assert Defenses.parse(d.name) == d
    assert [d.name for d in ABLATION] == ["none", "guardian", "inter", "grid", "securevqa"]
    assert Defenses().only("grid") == Defenses(False, True, False)
    with pytest.raises(ValueError, match="unknown defense"):
        Defenses.parse("guardian+blur")
    with pytest.raises(ValueError, match="draws"):
        Defenses.parse("securevqa@many")


def test_null_attack_changes_nothing():
    video = grid_frames(3, 64, 64)
    res = attack_video(video, lambda v, g: torch.zeros(v.shape[0]), 1.0, AttackSpec.parse("none"),
                       attacker=make_generator(0), defender=make_generator(0))
    assert torch.equal(res.adversarial, video) and res.queries.tolist() == [0]


def test_attack_spec_names_round_trip_and_errors():
    for s in ["black-box", "black-box:gamma=3,repeats=4", "white-box:norm=linf", "white-box:eot=8,clips=1",
              "white-box:objective=video,steps=5,lr=0.01", "black-box:gamma=1,batch=2", "none"]:
        a = AttackSpec.parse(s)
        assert AttackSpec.parse(a.name) == a
    assert AttackSpec.parse("white-box:norm=linf").white_box.budget == pytest.approx(3 / 255)
    assert AttackSpec.parse("black-box:gamma=2").black_box.gamma == pytest.approx(2 / 255)
    assert AttackSpec.parse("black-box:repeats=2").adaptive and not AttackSpec.parse("black-box").adaptive
    with pytest.raises(ValueError, match="unknown attack"):
        AttackSpec.parse("grey-box")
    with pytest.raises(ValueError, match="unknown option"):
        AttackSpec.parse("black-box:eot=4")
    with pytest.raises(ValueError, match="frames"):
        AttackSpec.parse("black-box").__class__(kind="black-box", objective="video")


def test_undefended_scorer_is_deterministic_and_defended_is_random(micro):
    vqa, inter = micro
    video = grid_frames(6, 80, 100)[None]
    with torch.no_grad():
        none = DefendedVQA(vqa, inter, Defenses.parse("none"))
        assert torch.equal(none(video, generator=make_generator(0)), none(video, generator=make_generator(1)))
        for name in ("guardian", "grid", "securevqa"):
            d = DefendedVQA(vqa, inter, Defenses.parse(name))
            a, b = d(video, generator=make_generator(0)), d(video, generator=make_generator(1))
            assert not torch.equal(a, b), name
            assert torch.equal(a, d(video, generator=make_generator(0))), name


def test_switches_change_what_the_model_sees(micro):
    vqa, inter = micro
    video = grid_frames(5, 80, 100)
    d = DefendedVQA(vqa, inter, Defenses.parse("none"))
    assert torch.equal(d.inter_embedding(video.transpose(0, 1) * 255, make_generator(0)),
                       torch.zeros(MICRO.sampling.inter_segments, MICRO.inter_dim))
    with torch.no_grad():
        on = DefendedVQA(vqa, inter, Defenses.parse("inter")).inter_embedding(video.transpose(0, 1) * 255,
                                                                             make_generator(0))
    assert on.abs().sum() > 0
    # a one-frame video: identical segments computed once give the same embedding as all of them
    one = grid_frames(1, 80, 100).transpose(0, 1) * 255
    with torch.no_grad():
        fast = DefendedVQA(vqa, inter, Defenses.parse("inter")).inter_embedding(one, make_generator(0))
        full = inter(_segments(one, MICRO.sampling)[None], guardian=False)[0]  # all 4 segments
    assert torch.allclose(fast, full, atol=1e-5)


def _segments(video: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    from model.transforms import continuous_sample_indices, resize_frames

    idx = continuous_sample_indices(video.shape[1], num_segments=s.inter_segments, segment_len=s.inter_segment_len)
    r = resize_frames(video, size=s.inter_size)
    return r[:, idx].permute(1, 0, 2, 3, 4)


@pytest.mark.slow  # 216 forward passes: 6 s of CPU
def test_guardian_draws_average(micro):
    vqa, inter = micro
    video = grid_frames(3, 64, 64)[None]
    with torch.no_grad():
        one = [float(DefendedVQA(vqa, inter, Defenses(grid=False, inter=False))(video, generator=make_generator(i)))
               for i in range(24)]
        many = [float(DefendedVQA(vqa, inter, Defenses(grid=False, inter=False, guardian_draws=8))(
            video, generator=make_generator(i))) for i in range(24)]
    assert np.std(many) < np.std(one)  # averaging draws shrinks the score's noise


def test_scorer_is_differentiable_through_every_branch(micro):
    vqa, inter = micro
    video = grid_frames(4, 72, 96).requires_grad_()
    DefendedVQA(vqa, inter, Defenses())(video[None], generator=make_generator(0)).sum().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
