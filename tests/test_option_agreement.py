"""One source of truth per option: YAML = schema = signature, and every option reaches the code.

For every architecture, defense and attack:

1. its Hydra schema is the one ``robust_cli.schema.schema_of`` derives from the code (no hand-written
   dataclass that could drift), and its fields and defaults are the signature's;
2. its YAML file names only options of the schema, and only with values that differ from the default
   (a YAML that restates a default is a second source of truth);
3. every option reaches the code: changed alone (through Hydra's compose and the production builder), it
   changes what the object computes. ``CHANGES`` below lists, per option, a changed value and, where an
   option only matters in some setting, that setting. A new option without an entry fails the test, so it
   cannot be added untested.
"""

from __future__ import annotations

import dataclasses
import re
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from robust_cli.config import discover_schemas
from robust_cli.schema import defaults_of, options_of

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {"model": "robust_cli.models", "defense": "robust_cli.defenses", "attack": "robust_cli.attacks"}
RESERVED = {"_target_", "name"}


def _schemas(group: str) -> dict[str, type]:
    return discover_schemas(GROUPS[group])


def _yaml_options(group: str, name: str) -> dict:
    """The option values a YAML file sets (its defaults list and package header aside)."""
    data = yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}
    data.pop("defaults", None)
    return data


@pytest.mark.parametrize("group", list(GROUPS))
def test_every_yaml_has_a_schema_and_every_schema_a_yaml(group):
    yamls = {p.stem for p in (CONF / group).glob("*.yaml")}
    assert yamls == set(_schemas(group)), f"{group}: YAML files and registered schemas differ"


@pytest.mark.parametrize("group", list(GROUPS))
def test_schema_is_derived_from_the_signature(group):
    from robust_cli.models import BUILDER_OPTIONS

    for name, schema in _schemas(group).items():
        obj = getattr(schema, "__robust_target__", None)
        assert obj is not None, f"{group}/{name}: a hand-written schema; derive it with robust_cli.schema.schema_of"
        defaults = defaults_of(schema)
        assert defaults["name"] == name
        assert defaults["_target_"] == f"{obj.__module__}.{obj.__qualname__}"
        expected = {k: d for k, (_, d) in options_of(obj).items()}
        if group == "model":
            expected.update({k: d for k, (_, d) in BUILDER_OPTIONS.items()})
        got = {k: v for k, v in defaults.items() if k not in RESERVED}
        assert set(got) == set(expected), f"{group}/{name}: schema fields {sorted(got)} != {sorted(expected)}"
        for key, default in expected.items():
            if default is inspect.Parameter.empty:
                continue
            want = list(default) if isinstance(default, tuple) else default
            assert got[key] == want, f"{group}/{name}.{key}: schema default {got[key]!r} != signature {want!r}"


@pytest.mark.parametrize("group", list(GROUPS))
def test_yaml_carries_only_what_differs_from_the_signature(group, hydra_compose):
    from omegaconf import OmegaConf

    for name, schema in _schemas(group).items():
        defaults = defaults_of(schema)
        yaml_values = _yaml_options(group, name)
        unknown = set(yaml_values) - set(defaults)
        assert not unknown, f"conf/{group}/{name}.yaml sets unknown options {sorted(unknown)}"
        for key, value in yaml_values.items():
            if key in RESERVED:
                continue
            assert value != defaults[key], (f"conf/{group}/{name}.yaml restates the default {key}={value!r}: "
                                            "delete the line (the signature is the one source)")
        override = f"attack={name}" if group == "attack" else f"{group}={name}"
        cfg = hydra_compose(config_name="eval" if group == "attack" else "train",
                            overrides=[override] + (["run=x"] if group == "attack" else []))
        node = cfg.attack[name] if group == "attack" else cfg[group]
        composed = OmegaConf.to_container(node, resolve=True)
        assert composed == {**defaults, **yaml_values}, f"{group}/{name}: composed config != signature + YAML"


# ---------------------------------------------------------------- every option reaches the code

# {name: {option: (changed value, {setting in which the option matters})}}
MODEL_CHANGES = {
    "mlp": {"widths": ([8, 6], {}), "dropout": (0.5, {"widths": [8, 6]})},
    "lenet5": {"channels": ([4, 8], {}), "hidden": ([32, 16], {}), "dropout": (0.5, {})},
    "allcnn": {"channels": ([8, 16], {}), "batchnorm": (False, {"channels": [8, 16]}),
               "dropout": (0.5, {"channels": [8, 16]}), "input_dropout": (0.5, {"channels": [8, 16]})},
    "resnet34": {"width": (8, {"blocks": [1, 1, 1, 1]}), "blocks": ([1, 1, 1, 2], {"width": 4})},
    "resnext34": {"cardinality": (3, {"width": 4, "blocks": [1, 1, 1]}),
                  "width": (6, {"blocks": [1, 1, 1]}), "blocks": ([1, 1, 2], {"width": 4})},
    "preact_resnet18": {"width": (8, {"blocks": [1, 1, 1, 1]}), "blocks": ([1, 1, 1, 2], {"width": 4})},
    "wrn": {"depth": (16, {"widen_factor": 1}), "widen_factor": (2, {"depth": 10}),
            "dropout": (0.5, {"depth": 10, "widen_factor": 1})},
    "nin": {"channels": ([16, 12, 8], {}), "batchnorm": (True, {"channels": [16, 12, 8]}),
            "dropout": (0.0, {"channels": [16, 12, 8]})},
}
for _options in MODEL_CHANGES.values():
    _options["tanh_head"] = (True, next(iter(_options.values()))[1] | {})


def _override(key: str, value) -> str:
    def item(v):  # a member with options, bb(steps=20), is quoted for Hydra's override grammar
        return f"'{v}'" if isinstance(v, str) and any(c in v for c in "()=, ") else str(v)

    text = "[" + ",".join(item(v) for v in value) + "]" if isinstance(value, list) else str(value)
    return f"{key}={text}"


def _model_output(hydra_compose, name: str, setting: dict) -> tuple[list, torch.Tensor]:
    from robust_cli.data import info_of
    from robust_cli.models import build_model

    overrides = [f"model={name}", "dataset=cifar10"] + [_override(f"model.{k}", v) for k, v in setting.items()]
    cfg = hydra_compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, info_of(cfg.dataset)).train()
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(2)
    return [tuple(p.shape) for p in model.parameters()], model(x).detach()


@pytest.mark.parametrize("name", sorted(MODEL_CHANGES))
def test_every_model_option_changes_the_model(name, hydra_compose):
    schema_options = set(defaults_of(_schemas("model")[name])) - RESERVED
    assert set(MODEL_CHANGES[name]) == schema_options, f"list every option of model={name} in MODEL_CHANGES"
    for option, (value, setting) in MODEL_CHANGES[name].items():
        shapes0, out0 = _model_output(hydra_compose, name, setting)
        shapes1, out1 = _model_output(hydra_compose, name, {**setting, option: value})
        assert shapes0 != shapes1 or not torch.equal(out0, out1), f"model.{option}={value} changed nothing"


_PENALTY = {  # the penalty options of every defense that carries one, in a setting where they act
    "lam": (0.5, {}),
    "penalty_norm": ("l1", {"lam": 0.5}),
    "reduction": ("mean", {"lam": 0.5}),
    "method": ("finite_difference", {"lam": 0.5}),
    "h": (0.05, {"lam": 0.5, "method": "finite_difference"}),
}
DEFENSE_CHANGES = {
    "none": {},
    "at_fgsm": {"eps": (0.3, {}), "clip": (True, {"eps": 0.3}), **_PENALTY},
    "at_l2": {"eps": (0.3, {}), "clip": (True, {"eps": 0.3}), **_PENALTY},
    "tulip": {"eps": (0.3, {}), "clip": (True, {"eps": 0.3}), **_PENALTY, "lam": (0.5, {})},
    "lip": {**_PENALTY, "penalty_norm": ("l1", {}), "reduction": ("mean", {}), "method": ("finite_difference", {}),
            "h": (0.05, {"method": "finite_difference"})},
    "pgd_at": {"norm": ("l2", {}), "eps": (0.1, {}), "steps": (3, {}), "step_size": (0.5, {}),
               "random_start": (False, {}), **_PENALTY},
    "trades": {"beta": (1.0, {}), "norm": ("l2", {}), "eps": (0.1, {}), "steps": (3, {}), "step_size": (0.5, {})},
    "vat": {"alpha": (2.0, {}), "eps": (0.5, {}), "xi": (0.1, {}), "power_iterations": (3, {}),
            "clip": (True, {"eps": 3.0})},
    "margin": {"C": (1.0, {}), "penalty_norm": ("l1", {}), "loss": ("ce", {})},
    "fgsm_mix": {"eps": (0.1, {}), "lam": (0.5, {})},
    # every critic option is tried past the pre-training epoch (pretrain_epochs=0), where it acts; a small
    # critic, one attack step and no cycle attack unless the option under test is one of them (speed)
    "critic": {k: (v, {"pretrain_epochs": 0, "critic_widths": [8], "steps": 1, "lam_rec": 0.0}) for k, v in {
        "lam": 2.0, "lam_rec": 0.5, "lam_grad": 1.0, "steps": 2, "critic_widths": [16], "critic_lr": 0.1,
        "noise_input": 0.3, "noise_hidden": 0.1, "leak": 0.01, "confidence_decay": 0.9, "seed": 1}.items()}
    | {"pretrain_epochs": (1, {"pretrain_epochs": 0, "critic_widths": [8], "steps": 1, "lam_rec": 0.0})},
}
#: options that by design change no number, only how it is computed: checked to reach the object instead
DEFENSE_SAME_RESULT = {("margin", "batched"): lambda d: not d.batched}


def _defense_result(hydra_compose, name: str, setting: dict) -> tuple[object, torch.Tensor, dict]:
    from robust_cli.defenses import build_defense
    from robust_cli.norms import canonicalize_config

    overrides = [f"defense={name}"] + [_override(f"defense.{k}", v) for k, v in setting.items()]
    cfg = canonicalize_config(hydra_compose(config_name="train", overrides=overrides))
    defense = build_defense(cfg.defense)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double().train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=gen)
    torch.manual_seed(2)  # random starts
    out = defense(model, x, y)
    (grad,) = torch.autograd.grad(out.loss, [model[1].weight])
    return defense, grad, out.stats


@pytest.mark.parametrize("name", sorted(DEFENSE_CHANGES))
def test_every_defense_option_changes_the_training_step(name, hydra_compose):
    schema_options = set(defaults_of(_schemas("defense")[name])) - RESERVED
    listed = set(DEFENSE_CHANGES[name]) | {o for (n, o) in DEFENSE_SAME_RESULT if n == name}
    assert listed == schema_options, f"list every option of defense={name} in DEFENSE_CHANGES"
    for option, (value, setting) in DEFENSE_CHANGES[name].items():
        _, g0, s0 = _defense_result(hydra_compose, name, setting)
        _, g1, s1 = _defense_result(hydra_compose, name, {**setting, option: value})
        assert not torch.equal(g0, g1) or s0 != s1, f"defense.{option}={value} changed nothing"
    for (n, option), reached in DEFENSE_SAME_RESULT.items():
        if n == name:
            default = defaults_of(_schemas("defense")[name])[option]
            defense, _, _ = _defense_result(hydra_compose, name, {option: not default})
            assert reached(defense), f"defense.{option} did not reach the object"


def test_schema_of_follows_kwargs_to_the_parent_and_its_dataclass():
    """A subclass restates only the defaults it changes; ``**penalty`` is PenaltyOptions' fields."""
    from robust_cli.defenses.penalty import PenaltyOptions
    from robust_cli.defenses.tulip import Tulip

    options = options_of(Tulip)
    assert options["lam"][1] == 0.1 and options["eps"][1] == 0.01
    penalty = {f.name for f in dataclasses.fields(PenaltyOptions)}
    assert penalty <= set(options)


# {attack: (norm, base setting, {option: (changed value, extra setting)})}
_PD = {  # the primal-dual options shared by pdgd and pdpgd
    "steps": (400, {}), "lr": (0.5, {}), "lr_grid": ([0.05, 0.5], {}), "lr_final": (0.5, {}),
    "lr_decay": ("exponential", {}), "dual_ratio_init": (0.5, {}), "dual_lr": (0.5, {}),
    "dual_lr_final": (0.5, {}), "dual_ema": (0.5, {}), "dual_ratio_min": (0.1, {}), "loss": ("hinge", {}),
    "loss_margin": (1.0, {}), "restarts": (3, {}), "init_range": (0.1, {"restarts": 3}),
    "finetune_steps": (300, {}), "finetune_lr_factor": (0.5, {"finetune_steps": 300}), "targeted": (True, {}),
    "seed": (1, {"restarts": 3}),
}
_SLOW = {"lr": 0.0003, "steps": 100}
_ITERATIVE = {"steps": (3, {}), "step_size": (0.5, {}), "targeted": (True, {}), "loss": ("margin", {}),
              "single_step": (False, {})}
#: minimal's random refiner starts: a far start (noise) and a B&B too short to forget it, so the starts show
_RANDOM_STARTS = {"l2_attacks": ["noise", "bb(steps=1, lr=0.001)"], "refine_starts": 1, "target_starts": 0}
_TARGET_STARTS = {"l2_attacks": ["noise", "bb(steps=1, lr=0.001)"], "refine_starts": 1, "random_starts": 0}
#: FAB's restart options, where its one step fails (eta 1, alpha_max 0.5: three of the six images), so that
#: the restarts find more than a point one rounding away (on one CPU fab_t's single step at eta 1 alone was
#: already the optimum, and its restart options changed nothing)
_FAB_ONE_STEP_FAILS = {"eta": 1.0, "alpha_max": 0.5}
_FAB_RESTARTS = {"restarts": 3, **_FAB_ONE_STEP_FAILS}
ATTACK_CHANGES = {
    "fgsm": ("linf", {}, {"targeted": (True, {}), "loss": ("margin", {})}),
    "fgm": ("l2", {}, {"targeted": (True, {}), "loss": ("margin", {})}),
    "ifgsm": ("linf", {}, _ITERATIVE),
    "bim": ("l2", {}, _ITERATIVE),
    "pgd": ("l2", {"steps": 5, "single_step": False}, {
        **_ITERATIVE, "single_step": (True, {}), "random_start": (False, {"restarts": 3}), "restarts": (3, {}),
                                 "l1_top": (0.3, {"norm": "l1"}), "seed": (1, {"restarts": 3}),
                                 "schedule": ("constant", {})}),
    "deepfool": ("l2", {}, {"steps": (1, {}), "overshoot": (0.5, {}), "candidates": (1, {}), "max_step": (0.05, {})}),
    "noise": ("l2", {}, {"restarts": (3, {}), "search_steps": (2, {}), "seed": (1, {})}),
    "stability": ("l2", {}, {"grid": (3, {}), "search_steps": (1, {})}),
    "pdgd": ("l2", {"steps": 150}, _PD),  # fewer steps stay at the first Adam step's overshoot here
    "pdpgd": ("l2", {"steps": 150}, {
        **_PD, "optimizer": ("sgd", {}), "proximal_steps": (1, {"proximal_exact": False}),
        "proximal_tol": (0.9, {"proximal_exact": False}),
        "proximal_exact": (True, {"norm": "l1"}), "l0_mode": ("element", {"norm": "l0"}),
        "l0_prox": ("l23", {"norm": "l0"})}),
    # --- sparse and black-box attacks, minimal
    "minimal": ("l2", {"l0_attacks": ["sigma_zero"], "l1_attacks": ["fmn"], "l2_attacks": ["ddn"],  # cheap sets
                       "linf_attacks": ["deepfool"]}, {
                           "l0_attacks": (["jsma"], {"norm": "l0"}), "l1_attacks": (["sparsefool"], {"norm": "l1"}),
                           "l2_attacks": (["deepfool"], {}), "linf_attacks": (["pgd"], {"norm": "linf"}),
                           "search_steps": (2, {"norm": "linf", "linf_attacks": ["pgd"]}),
                           "refiners": ([], {"l2_attacks": ["ddn", "bb(steps=2)"]}),
                           "refine_starts": (1, {"l2_attacks": ["ddn", "bb(steps=2)"], "target_starts": 0}),
                           "random_starts": (0, _RANDOM_STARTS), "random_scale": (3.0, _RANDOM_STARTS),
                           "seed": (1, _RANDOM_STARTS),
                           "cold_members": ([], {"l2_attacks": ["deepfool", "fmn"]}),
                           "target_starts": (0, _TARGET_STARTS), "target_classes": (1, _TARGET_STARTS),
                           "target_member": ("ddn", _TARGET_STARTS)}),
    "sigma_zero": ("l0", {"steps": 20}, {"steps": (5, {}), "lr": (0.1, {}), "sigma": (1.0, {}),
                                         "threshold": (0.0, {}), "threshold_lr": (0.5, {})}),
    "jsma": ("l0", {}, {"gamma": (0.02, {}), "saliency": ("margin", {}), "directions": ("increase", {}),
                        "candidates": (1, {})}),
    "vfga": ("l0", {}, {"samples": (3, {}), "max_iter": (1, {}), "targeted": (True, {}),
                        "saturation": ("advlib", {}), "seed": (1, {})}),
    "sparsefool": ("l1", {}, {"steps": (0, {}), "lam": (1.0, {}),
                              "overshoot": (0.5, {"search_steps": 0}), "search_steps": (0, {})}),
    "one_pixel": ("l0", {"popsize": 8, "steps": 3, "max_queries": 200, "corners": False}, {
        "max_pixels": (3, {}), "popsize": (5, {}), "steps": (0, {}), "max_queries": (7, {}),
        "mutation": (1.5, {}), "seed": (1, {}), "corners": (True, {})}),
    "boundary": ("l2", {"max_queries": 300}, {
        "max_queries": (100, {}), "spherical_step": (0.1, {}), "source_step": (0.1, {}),
        "step_adaptation": (3.0, {}), "init_tries": (1, {}), "search_steps": (2, {}), "seed": (1, {})}),
    "prune": ("l0", {"lr": 0.01, "steps": 3}, {"steps": (1, {}), "lr": (1.0, {}), "swaps": (4, {}),
                                               "max_support": (1, {})}),
    "bb": ("l2", {"steps": 6}, {"steps": (1, {"search_steps": 0}), "lr": (0.01, {"search_steps": 0}),
                                "lr_num_decay": (0, {"lr": 0.01, "search_steps": 0}), "momentum": (0.0, {}),
                                "overshoot_frac": (0.5, {}),
                                "search_steps": (0, {}), "step": ("scaled", {"norm": "l1"}), "init": ("fmn", {})}),
    # --- FAB, EAD, DeepFool clip, high-confidence
    **{name: ("l2", {"steps": 1}, {
        "steps": (2, {}), "restarts": (3, _FAB_ONE_STEP_FAILS), "alpha_max": (0.5, {}), "eta": (1.5, {}),
        "beta": (0.5, {"steps": 2}),
        "restart_radius": (0.01, _FAB_RESTARTS), "seed": (1, _FAB_RESTARTS),
        **({"targeted": (True, {}), "nearest": ("eq7", {"norm": "l1"})} if name == "fab"
           else {"target_classes": (1, {})})}) for name in ("fab", "fab_t")},
    "ead": ("l1", {"steps": 10, "search_steps": 2, "const_init": 10.0}, {
        "steps": (5, {}), "search_steps": (1, {}), "lr": (0.05, {}), "beta": (0.001, {}), "const_init": (100.0, {}),
        "confidence": (1.0, {}), "decision": ("en", {}), "fista": (False, {}), "targeted": (True, {})}),
    "high_confidence": ("l2", {}, {"steps": (1, {}), "confidence": (0.99, {}), "max_step": (0.05, {}),
                                   "targeted": (True, {})}),
    # --- APGD, APGD-T, Square, AutoAttack (budget attacks: run at 0.8 x the optimum, so the output is the
    # nearest miss, which every option moves)
    "apgd": ("l2", {"steps": 4}, {
        "steps": (3, {}), "restarts": (2, {}), "loss": ("dlr", {}), "momentum": (0.5, {}),
        "rho": (0.99, {"steps": 30}),
        "random_start": (False, {}), "seed": (1, {})}),
    "apgd_t": ("l2", {"steps": 4, "target_classes": 2}, {
        "steps": (3, {}), "target_classes": (1, {}), "restarts": (2, {}), "momentum": (0.5, {}),
        "rho": (0.99, {"steps": 30}),
        "random_start": (False, {}), "seed": (1, {})}),
    "square": ("linf", {"n_queries": 50}, {"n_queries": (20, {}), "p_init": (0.3, {}), "seed": (1, {})}),
    "autoattack": ("linf", {"steps": 5, "n_queries": 20}, {
        "version": ("plus", {"steps": 1, "n_queries": 2}), "steps": (3, {}), "n_queries": (200, {"steps": 1}),
        "restarts": (2, {"steps": 1}),
        "target_classes": (1, {}), "seed": (1, {"steps": 1})}),
    # --- C&W, DDN, FMN, ALMA
    # (_SLOW: alma's rho schedule acts only while a sample is neither adversarial nor improving)
    "cw": ("l2", {"steps": 30, "search_steps": 3}, {
        "steps": (10, {}), "search_steps": (2, {}), "lr": (0.05, {}), "initial_const": (0.1, {}),
        "confidence": (1.0, {}), "abort_early": (False, {"norm": "linf"}), "targeted": (True, {}),
        "tau_decrease": (0.5, {"norm": "linf"}),
        # from the paper code's c (1e-5) rounds fail, so the factor c grows by on a failure shows
        "const_factor": (10.0, {"norm": "linf", "search_steps": 6, "initial_const": 1e-5})}),
    "ddn": ("l2", {"steps": 20}, {"steps": (10, {}), "gamma": (0.2, {}), "init_norm": (0.1, {}), "lr": (0.3, {}),
                                  "lr_final": (0.5, {}), "targeted": (True, {}), "loss": ("cross_entropy", {})}),
    "fmn": ("l2", {"steps": 20}, {"steps": (10, {}), "lr": (0.3, {}), "lr_final": (0.5, {}), "gamma": (0.2, {}),
                                  "gamma_final": (0.1, {}), "targeted": (True, {}),
                                  "projection": ("ball", {"norm": "l1"})}),
    "alma": ("l2", {"steps": 30}, {
        "steps": (20, {}), "lr": (0.01, {}), "lr_final": (0.5, {}), "mu_init": (10.0, {}), "rho_init": (10.0, {}),
        "check_steps": (3, _SLOW), "tau": (0.5, _SLOW), "gamma": (3.0, {**_SLOW, "check_steps": 1}),
        "alpha": (0.5, {}), "logit_tolerance": (0.5, {}), "targeted": (True, {}), "restarts": (2, {}),
        "restart_radius": (0.1, {"restarts": 2}), "seed": (1, {"restarts": 2})}),
}
#: options that by design change no number (how the work is split), checked to reach the call instead
ATTACK_SAME_RESULT = {("stability", "chunk_size"): 2,
                      # EOT averages passes of a randomised model; on a deterministic one they are all equal
                      ("apgd", "eot"): 2, ("apgd_t", "eot"): 2}


def _attack_output(name: str, norm: str, options: dict) -> torch.Tensor:
    from linear_reference import make_problem, minimal_distance

    from robust_cli.attacks import list_attacks

    fn = list_attacks()[name]
    model, x, y = make_problem(n=6, in_shape=(3, 4, 4), num_classes=5, seed=3)
    extra = {}
    if fn.budget:  # below the optimum: the attack cannot succeed, so its nearest miss shows every option
        extra["eps"] = (minimal_distance(model, x, y, norm) * 0.8).float()
    if name == "stability":
        ref_model, ref_x, _ = make_problem(n=20, in_shape=(3, 4, 4), num_classes=5, seed=4)
        with torch.no_grad():
            extra["reference"] = (ref_x, model(ref_x).argmax(1))
    if name == "prune":  # it only shrinks a start: a random half of the pixels at random values
        g = torch.Generator().manual_seed(0)
        pixels = torch.rand(x.shape[0], 1, *x.shape[2:], generator=g) < 0.5
        extra["x_init"] = torch.where(pixels, torch.rand(x.shape, generator=g), x)
    if name == "vfga":  # its softmax saturated, as on the MNIST LeNet-5, so that `saturation` has ties to break
        with torch.no_grad():
            model.fc.weight.mul_(1000.0)
            model.fc.bias.mul_(1000.0)
    torch.manual_seed(0)  # attacks that draw from the global RNG (noise with seed=None)
    return fn(model, x, y, norm=norm, **extra, **options)


@pytest.mark.parametrize("name", sorted(ATTACK_CHANGES))
def test_every_attack_option_changes_the_attack(name, hydra_compose):
    from omegaconf import OmegaConf

    schema_options = set(defaults_of(_schemas("attack")[name])) - RESERVED
    norm, base, changes = ATTACK_CHANGES[name]
    listed = set(changes) | {o for (n, o) in ATTACK_SAME_RESULT if n == name}
    assert listed == schema_options, f"list every option of attack={name} in ATTACK_CHANGES"

    def options(setting: dict) -> tuple[str, dict]:
        setting = dict(setting)
        run_norm = setting.pop("norm", norm)
        overrides = [f"attack={name}", "run=x"] + [_override(f"attack.{name}.{k}", v) for k, v in setting.items()]
        node = OmegaConf.to_container(hydra_compose(config_name="eval", overrides=overrides).attack[name])
        return run_norm, {k: v for k, v in node.items() if k not in RESERVED}  # what eval passes (selected_attacks)

    for option, (value, setting) in changes.items():
        run_norm, before = options({**base, **setting})
        _, after = options({**base, **setting, option: value})
        assert after[option] == value, f"attack.{name}.{option} did not reach the options"
        out0 = _attack_output(name, run_norm, before)
        out1 = _attack_output(name, run_norm, after)
        assert not torch.equal(out0, out1), f"attack.{name}.{option}={value} changed nothing"


def test_options_that_change_no_number_reach_the_call(monkeypatch):
    """``stability.chunk_size`` splits the nearest-neighbour scan: same result, and the scan gets it."""
    from robust_cli.attacks import stability as stability_module

    real = stability_module.nearest_other_label
    for (name, option), value in ATTACK_SAME_RESULT.items():
        if name != "stability":
            continue  # the EOT passes: test_eot_reaches_the_gradient_passes
        calls: list = []

        def spy(*args, calls=calls):
            calls.append(args)
            return real(*args)

        monkeypatch.setattr(stability_module, "nearest_other_label", spy)
        out0 = _attack_output(name, "l2", {})
        out1 = _attack_output(name, "l2", {option: value})
        assert torch.equal(out0, out1), f"{name}.{option} is documented as result-neutral"
        assert calls[-1][-1] == value and calls[0][-1] != value, f"{name}.{option} did not reach the scan"


def test_eot_reaches_the_gradient_passes(monkeypatch):
    """``apgd.eot`` / ``apgd_t.eot``: the same result on the deterministic linear model, and every gradient
    evaluation gets it (``value_and_gradient`` averages that many passes)."""
    from robust_cli.attacks import apgd as apgd_module

    real = apgd_module.value_and_gradient
    for (name, option), value in ATTACK_SAME_RESULT.items():
        if name == "stability":
            continue
        seen: list[int] = []

        def spy(model, z, objective, eot=1, seen=seen):
            seen.append(eot)
            return real(model, z, objective, eot)

        monkeypatch.setattr(apgd_module, "value_and_gradient", spy)
        out0 = _attack_output(name, "l2", {"steps": 3})
        out1 = _attack_output(name, "l2", {"steps": 3, option: value})
        assert torch.equal(out0, out1), f"{name}.{option}: passes of a deterministic model are all equal"
        assert set(seen[:len(seen) // 2]) == {1} and set(seen[len(seen) // 2:]) == {value}


def test_primal_dual_wrappers_pass_every_option_to_the_engine_by_name(monkeypatch):
    """pdgd/pdpgd hand the engine one options dataclass: each option lands in the field of its own name."""
    from robust_cli.attacks import pdgd as pdgd_module
    from robust_cli.attacks import pdpgd as pdpgd_module

    for module, fn in ((pdgd_module, pdgd_module.pdgd), (pdpgd_module, pdpgd_module.pdpgd)):
        got: dict = {}

        def engine(model, x, y, *, norm, options, primal, x_init=None, got=got):
            got.update(options=options, primal=primal)
            return x

        monkeypatch.setattr(module, "primal_dual", engine)
        _, changes = ATTACK_CHANGES[fn.__name__][1], ATTACK_CHANGES[fn.__name__][2]
        values = {k: v for k, (v, _) in changes.items()}
        fn(nn.Identity(), torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), norm="l2", **values)
        for key, value in values.items():
            assert getattr(got["options"], key) == value, f"{fn.__name__}: {key} did not reach the engine"


@pytest.mark.parametrize("overrides,message", [
    (["attack=pgd", "attack.pgd.steps=-1"], "attack.pgd.steps=-1: must be >= 1"),
    (["attack=pgd", "attack.pgd.step_size=0"], "attack.pgd.step_size=0.0: must be > 0"),
    (["attack=fgsm", "attack.fgsm.loss=foo"], "attack.fgsm.loss='foo': expected one of ce, margin"),
    (["attack=pdpgd", "attack.pdpgd.l0_mode=pixels"], "attack.pdpgd.l0_mode='pixels': expected one of pixel"),
    (["attack=[fgsm,noise]", "attack.noise.restarts=0"], "attack.noise.restarts=0: must be >= 1"),
    (["attack=bb", "attack.bb.lr=0"], "attack.bb.lr=0.0: must be > 0"),  # optional (None: per norm), still checked
])
def test_values_outside_the_signature_fail_at_compose_time(overrides, message, hydra_compose):
    from robust_cli.config import check_config
    from robust_cli.errors import UserError

    cfg = hydra_compose(config_name="eval", overrides=["run=x", *overrides])
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(cfg)


def test_a_bad_value_is_one_line_from_the_command_line(tmp_path):
    from cli_helpers import robust

    res = robust("eval", f"run={tmp_path}", "attack=pgd", "attack.pgd.steps=-1", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["robust: error: attack.pgd.steps=-1: must be >= 1"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_composed_configs_pickle(hydra_compose):
    """DDP workers and submitit jobs receive the config pickled: the derived schemas must be importable."""
    import pickle

    for group, schemas in ((g, _schemas(g)) for g in GROUPS):
        for name in schemas:
            override = f"attack={name}" if group == "attack" else f"{group}={name}"
            cfg = hydra_compose(config_name="eval" if group == "attack" else "train",
                                overrides=[override] + (["run=x"] if group == "attack" else []))
            assert pickle.loads(pickle.dumps(cfg)) == cfg, f"{group}={name}"
