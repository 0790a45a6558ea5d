"""The closed-form reference itself is checked before attacks are judged against it."""

import torch
from linear_reference import make_problem, minimal_distance


def test_unboxed_formula_when_box_is_far():
    """Deep inside the box the optimum is the textbook gap / ||w_y - w_j||_q."""
    model, x, y = make_problem(n=64, seed=1)
    x = 0.5 + 0.001 * (x - 0.5)  # tiny margins: the box cannot bind
    with torch.no_grad():
        y = model(x).argmax(1)
    w = model.fc.weight.detach().double()
    logits = x.flatten(1).double() @ w.T + model.fc.bias.detach().double()
    for norm, q in (("l2", 2), ("linf", 1), ("l1", float("inf"))):
        expected = torch.full((len(x),), float("inf"), dtype=torch.float64)
        for j in range(w.shape[0]):
            d = (logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]) / (w[j] - w[y]).norm(p=q, dim=1)
            expected = torch.minimum(expected, torch.where(y == j, float("inf"), d))
        got = minimal_distance(model, x, y, norm)
        assert torch.allclose(got, expected, rtol=1e-6), norm


def test_norm_ordering_of_minimal_distances():
    """For the same image the minimal distances satisfy linf <= l2 <= l1 and l0 >= 1."""
    model, x, y = make_problem(n=32, seed=2)
    d2 = minimal_distance(model, x, y, "l2")
    d1 = minimal_distance(model, x, y, "l1")
    dinf = minimal_distance(model, x, y, "linf")
    # norm ordering holds for the same point set: linf <= l2 <= l1 (for the minimisers too)
    assert (dinf <= d2 + 1e-9).all() and (d2 <= d1 + 1e-9).all()
    assert torch.isfinite(d2).all()
    assert (minimal_distance(model, x, y, "l0") >= 1).all()
