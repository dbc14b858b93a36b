"""Threat model: eps units, refusals with the fix in the message, input checks, projection."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustcompress.attacks import ThreatModel
from robustcompress.attacks.bim import bim_paper_schedule
from robustcompress.attacks.apgd import checkpoints
from robustcompress.data.info import DatasetInfo
from robustcompress.errors import ThreatModelError

IMG = DatasetInfo("img", (1, 4, 4), 3, ("a", "b", "c"), bounds=(0.0, 1.0))
AUDIO = DatasetInfo("aud", (1, 100), 3, ("a", "b", "c"), bounds=(-1.0, 1.0), modality="audio")


def test_eps_forms_agree_in_input_units():
    a = ThreatModel.from_spec("linf", "8/255", IMG)
    b = ThreatModel.from_spec("linf", 8, IMG, eps_scale=255)
    c = ThreatModel.from_spec("Linf", str(8 / 255), IMG)
    assert a.eps == pytest.approx(8 / 255) and b.eps == pytest.approx(8 / 255)
    assert c.eps == pytest.approx(8 / 255)
    assert a.eps_255 == pytest.approx(8)
    assert a.bounds == (0.0, 1.0) and a.shape == (1, 4, 4)


def test_audio_raw_units_and_255_scale_maps_to_box_width():
    raw = ThreatModel.from_spec("linf", 0.002, AUDIO)
    assert raw.eps == pytest.approx(0.002) and raw.bounds == (-1.0, 1.0)
    scaled = ThreatModel.from_spec("linf", 8, AUDIO, eps_scale=255)
    assert scaled.eps == pytest.approx(8 / 255 * 2)


@pytest.mark.parametrize(
    "kw, fragment",
    [
        (dict(eps=8), "8/255"),
        (dict(eps=8), "--eps-scale 255"),
        (dict(eps=-0.1), ">= 0"),
        (dict(eps="8/255", eps_scale=255), "either"),
        (dict(eps=300, eps_scale=255), "exceeds"),
        (dict(eps="eight"), "cannot read"),
        (dict(eps=0.1, norm="l1"), "linf or l2"),
        (dict(eps=float("nan")), "finite"),
    ],
)
def test_wrong_units_are_refused_with_the_fix(kw, fragment):
    kw = dict(kw)
    norm = kw.pop("norm", "linf")
    with pytest.raises(ThreatModelError) as e:
        ThreatModel.from_spec(norm, info=IMG, **kw)
    assert fragment in str(e.value)


def test_l2_budget_larger_than_box_diameter_is_refused():
    ThreatModel.from_spec("l2", 3.9, IMG)  # diameter is sqrt(16) = 4
    with pytest.raises(ThreatModelError, match="diameter"):
        ThreatModel.from_spec("l2", 4.5, IMG)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda x: x * 2 - 1, "normalis"),
        (lambda x: (x * 255).round(), "divide by 255"),
        (lambda x: (x * 255).to(torch.uint8), "dtype"),
        (lambda x: torch.where(x > 0.5, torch.nan, x), "NaN"),
        (lambda x: x[0, 0, 0], "batch"),
        (lambda x: x.view(x.shape[0], 16), "shape"),
    ],
)
def test_check_inputs_refuses_with_the_fix(make, fragment):
    t = ThreatModel.from_spec("linf", "8/255", IMG)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    t.check_inputs(x)
    t.check_inputs(x.clamp(0, 1) + 5e-7)  # round-off tolerance
    with pytest.raises(ThreatModelError) as e:
        t.check_inputs(make(x))
    assert fragment in str(e.value)


def test_paper_schedules():
    assert bim_paper_schedule(8) == (1 / 255, 10)
    assert bim_paper_schedule(4) == (1 / 255, 5)
    assert bim_paper_schedule(16) == (1 / 255, 20)
    assert bim_paper_schedule(2) == (1 / 255, 2)
    assert bim_paper_schedule(76.5)[1] == 80
    # Croce & Hein 2020: w_j = ceil(p_j N), p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@settings(max_examples=40, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.0, 5.0),
)
def test_project_lands_in_ball_and_box_and_is_idempotent(norm, eps, seed, scale):
    t = ThreatModel(norm, eps, (0.0, 1.0))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 5, generator=g, dtype=torch.float64)
    x_adv = x + scale * torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    p = t.project(x_adv, x)
    assert bool((t.norm_of(p - x) <= eps + 1e-9).all())
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert torch.allclose(t.project(p, x), p, atol=1e-12)
    inside = x + t.project_delta((x_adv - x) * 0.0)
    assert torch.equal(t.project(inside, x), x)


def test_linf_projection_is_the_nearest_point():
    # For Linf, ball ∩ box is a box, so the Euclidean projection is coordinate-wise clamping.
    t = ThreatModel("linf", 0.1, (0.0, 1.0))
    x = torch.tensor([[0.05, 0.5, 0.95]])
    x_adv = torch.tensor([[-1.0, 0.55, 2.0]])
    assert torch.allclose(t.project(x_adv, x), torch.tensor([[0.0, 0.55, 1.0]]))


def test_steepest_has_unit_norm():
    g = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    l2 = ThreatModel("l2", 1.0, (0.0, 1.0))
    assert torch.allclose(l2.steepest(g).norm(dim=1), torch.ones(4))
    linf = ThreatModel("linf", 0.1, (0.0, 1.0))
    assert torch.equal(linf.steepest(g), g.sign())
    assert math.isclose(float(linf.norm_of(0.3 * g.sign()).max()), 0.3, rel_tol=1e-6)
