import numpy as np
import pytest
import torch

from c2ir.detectors import FitData, build_detector, detector_types
from c2ir.errors import C2IRError, NotFittedError
from c2ir.metrics import auroc
from c2ir.stats import compute_class_stats


def _bundle(n, k=3, shift=0.0, seed=0, dim=16):
    """Toy features: class-dependent clusters; `shift` moves everything far away."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    centers = torch.randn(k, dim, generator=torch.Generator().manual_seed(123)) * 3
    pen = centers[labels] + torch.randn(n, dim, generator=g) * 0.5 + shift
    pen = pen.abs()
    logits = pen @ torch.randn(dim, k, generator=torch.Generator().manual_seed(7)) * 0.1
    logits[torch.arange(n), labels] += 5.0 if shift == 0 else 0.0
    return {"logits": logits, "penultimate": pen, "layer/a": pen[:, :8], "layer/b": pen[:, 8:],
            "labels": labels, "spatial/a": pen[:, None, :8].repeat(1, 4, 1), "spatial/b": pen[:, None, 8:].repeat(1, 4, 1)}


def _ctx(fit):
    stats = compute_class_stats(fit, fit["labels"], ["a", "b"], 3, 64)
    head = torch.nn.Linear(16, 3)
    return FitData(layers=["a", "b"], impressions=fit, id_train=fit, class_stats=stats,
                   layer_weights=torch.tensor([0.5, 0.5]), head=head)


@pytest.mark.parametrize("kind,params", [
    ("c2ir", {"fit_on": "impressions", "logit_score": "none", "ipm": "mean_l2"}),
    ("c2ir", {"fit_on": "impressions", "logit_score": "energy", "normalize": "impression_std"}),
    ("mahalanobis", {"fit_on": "impressions"}),
    ("mahalanobis", {"fit_on": "id_train", "multi_layer": True}),
    ("knn", {"fit_on": "id_train", "k": 5}),
])
def test_far_shift_is_detected(kind, params):
    fit, test_id, far = _bundle(300, seed=0), _bundle(150, seed=1), _bundle(150, shift=25.0, seed=2)
    det = build_detector(kind, {"type": kind, **params}).fit(_ctx(fit))
    assert auroc(det.score(test_id), det.score(far)) > 0.99


def test_logit_detectors_on_confident_vs_flat_logits():
    conf = {"logits": torch.eye(5).repeat(20, 1) * 10}
    flat = {"logits": torch.zeros(100, 5) + torch.randn(100, 5) * 0.01}
    for kind in ("msp", "maxlogit", "energy"):
        det = build_detector(kind, {"type": kind})
        assert auroc(det.score(conf), det.score(flat)) == 1.0


def test_fitted_data_scores_as_id():
    fit = _bundle(300)
    for kind, params in [("knn", {"k": 1}), ("mahalanobis", {}), ("c2ir", {"logit_score": "none"})]:
        det = build_detector(kind, {"type": kind, "fit_on": "impressions", **params}).fit(_ctx(fit))
        s_fit, s_far = det.score(fit), det.score(_bundle(100, shift=25.0, seed=5))
        assert np.median(s_fit) < np.min(s_far)
    knn = build_detector("knn", {"type": "knn", "fit_on": "impressions", "k": 1}).fit(_ctx(fit))
    assert np.allclose(knn.score(fit), 0.0, atol=1e-3)  # every point is its own nearest neighbour


def test_score_before_fit_is_a_typed_error():
    for kind in ("c2ir", "knn", "mahalanobis", "react", "nmd"):
        with pytest.raises(NotFittedError):
            build_detector(kind, {"type": kind, "fit_on": "impressions"}).score(_bundle(4))


def test_full_access_detector_without_train_data_says_so():
    fit = _bundle(30)
    ctx = _ctx(fit)
    ctx.id_train = None
    with pytest.raises(C2IRError, match="id_train"):
        build_detector("knn", {"type": "knn", "fit_on": "id_train"}).fit(ctx)


def test_react_clips_at_fit_percentile():
    fit = _bundle(200)
    det = build_detector("react", {"type": "react", "fit_on": "impressions", "percentile": 90}).fit(_ctx(fit))
    assert det.threshold == pytest.approx(float(torch.quantile(fit["penultimate"].flatten(), 0.9)), rel=1e-4)


def test_nmd_is_zero_at_running_means():
    from c2ir.models.small_cnn import SmallCNN

    model = SmallCNN(1, 10, 4).eval()
    det = build_detector("nmd", {"type": "nmd"}).fit(FitData(model=model))
    feats = {f"bn/{n}": m.running_mean[None].clone() for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert det.score(feats)[0] == pytest.approx(0.0, abs=1e-6)


def test_every_detector_has_a_config():
    from c2ir.config import config_dir

    types = set()
    for f in (config_dir() / "detectors").glob("*.yaml"):
        import yaml
        (cfg,) = yaml.safe_load(f.read_text()).values()
        types.add(cfg["type"])
    assert types == set(detector_types())


def _odin_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def _odin(**params):
    return build_detector("odin", {"type": "odin", **params}).fit(FitData())


def test_odin_without_perturbation_is_negative_tempered_msp():
    model, norm = _odin_model(), (lambda x: (x - 0.5) / 0.25)
    images = torch.randint(0, 256, (7, 3, 2, 2), dtype=torch.uint8)
    scores = _odin(temperature=10.0, epsilon=0.0).score_images(model, norm, images, batch_size=3)
    with torch.no_grad():
        expected = -torch.softmax(model(norm(images.float() / 255)).double() / 10.0, dim=1).max(1).values
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)


def test_odin_perturbation_raises_the_top_softmax_and_leaves_the_model_as_given():
    model, norm = _odin_model(), (lambda x: x)
    model.train()
    model[1].weight.requires_grad_(False)
    images = torch.rand(16, 3, 2, 2)
    plain = _odin(temperature=1.0, epsilon=0.0).score_images(model, norm, images)
    stepped = _odin(temperature=1.0, epsilon=0.01).score_images(model, norm, images)
    assert np.all(stepped < plain)  # the step moves every input towards its predicted class: more ID
    assert model.training and not model[1].weight.requires_grad and model[1].bias.requires_grad
    assert model[1].weight.grad is None and model[1].bias.grad is None
    # uint8 pixels and their [0, 1] floats give the same scores; so does any batch size
    u8 = torch.randint(0, 256, (5, 3, 2, 2), dtype=torch.uint8)
    det = _odin(temperature=1000.0, epsilon=0.0014)
    np.testing.assert_allclose(det.score_images(model, norm, u8, batch_size=2),
                               det.score_images(model, norm, u8.float() / 255, batch_size=5), rtol=1e-6)


def test_every_detector_scores_images_and_only_feature_detectors_score_features():
    """`score_images` is on every detector: for one that scores features it is the forward pass its `needs`
    name, then `score` (equal to scoring a full pass); one that scores images refuses cached features."""
    from c2ir.data.imageset import Normalizer
    from c2ir.extraction import extract_features
    from c2ir.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    model, norm, layers = SmallCNN(1, 3, 4).eval(), Normalizer([0.5], [0.25]), ["act1", "act2", "act3"]
    images = torch.randint(0, 256, (9, 1, 8, 8), dtype=torch.uint8)
    full = extract_features(model, images, norm, layers, model.fc, spatial_grid=2)
    for kind, params in (("mahalanobis", {"fit_on": "impressions", "multi_layer": True}), ("nmd", {}), ("energy", {})):
        fit = {**full, "labels": torch.arange(9) % 3}
        det = build_detector(kind, {"type": kind, **params}).fit(
            FitData(model=model, layers=layers, impressions=fit, head=model.fc))
        got = det.score_images(model, norm, images, layers=layers, head=model.fc)
        np.testing.assert_array_equal(got, det.score(full), err_msg=kind)
    odin = _odin()
    assert odin.score_images(_odin_model(), lambda x: x, torch.rand(4, 3, 2, 2)).shape == (4,)
    with pytest.raises(C2IRError, match="needs input gradients: it scores images"):
        odin.score({"logits": torch.zeros(4, 3)})


def test_posterior_weighted_deviation_is_the_softmax_average():
    from c2ir.detectors.c2ir import posterior_weighted
    dev = torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64)
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    out = posterior_weighted(dev, logits)
    assert torch.allclose(out, torch.tensor([2.0, 2.0], dtype=torch.float64))
    # a confident prediction reduces to the predicted class's deviation
    sharp = posterior_weighted(torch.tensor([[1.0, 5.0]], dtype=torch.float64), torch.tensor([[30.0, 0.0]]))
    assert torch.allclose(sharp, torch.tensor([1.0], dtype=torch.float64))


def test_c2ir_posterior_class_weighting():
    fit, test_id, far = _bundle(300, seed=0), _bundle(150, seed=1), _bundle(150, shift=25.0, seed=2)
    base = {"type": "c2ir", "logit_score": "none", "normalize": "none"}
    arg = build_detector("c2ir", base).fit(_ctx(fit))
    post = build_detector("c2ir", {**base, "class_weighting": "posterior"}).fit(_ctx(fit))
    # with raw deviations the score is linear in them: sum_k p_k(x) * (arg-max score had x been predicted k)
    per_class = []
    for k in range(3):
        forced = {**test_id, "logits": torch.nn.functional.one_hot(torch.full((150,), k), 3).float() * 100}
        per_class.append(arg.score(forced))
    probs = torch.softmax(test_id["logits"].double(), dim=1).numpy()
    assert np.allclose(post.score(test_id), (probs * np.stack(per_class, 1)).sum(1))
    assert auroc(post.score(test_id), post.score(far)) > 0.99
    with pytest.raises(C2IRError, match="class_weighting='soft'"):
        build_detector("c2ir", {**base, "class_weighting": "soft"})


def test_select_weight_prefers_the_best_then_the_smaller():
    from c2ir.detectors.c2ir import select_variant, select_weight
    assert select_weight({0.0: 80.0, 1.0: 90.0, 4.0: 85.0}) == 1.0
    assert select_weight({4.0: 90.0, 0.5: 90.0, 1.0: 70.0}) == 0.5
    crit = {("mean_standardized", 1.0): 90.0, ("mahalanobis", 0.5): 90.0, ("mahalanobis", 2.0): 80.0}
    assert select_variant(crit, ["mean_standardized", "mahalanobis"]) == ("mean_standardized", 1.0)  # ties: IPM order
    assert select_variant(crit, ["mahalanobis", "mean_standardized"]) == ("mahalanobis", 0.5)
    assert select_variant({**crit, ("mahalanobis", 4.0): 91.0}, ["mean_standardized", "mahalanobis"]) == ("mahalanobis", 4.0)
    tri = {("mahalanobis", "max", 1.0): 90.0, ("mahalanobis", "sum", 2.0): 90.0, ("mean_standardized", "max", 0.5): 80.0}
    assert select_variant(tri, ["mean_standardized", "mahalanobis"]) == ("mahalanobis", "sum", 2.0)  # ties: sum first
    assert select_variant({**tri, ("mean_standardized", "max", 0.5): 95.0},
                          ["mean_standardized", "mahalanobis"]) == ("mean_standardized", "max", 0.5)


def test_c2ir_max_without_a_logit_term_is_the_deviations_alone():
    """`max` with no logit term has nothing to take the max with: it is used as `sum` at weight 0, so the
    threshold's reference and the scores follow the same rule."""
    ctx = _tiny_fit_data()
    paper = build_detector("c2ir_paper", {"type": "c2ir", "logit_score": "none", "combination": "max",
                                          "select_ipm": False}).fit(ctx)
    assert paper.combination_used == "sum" and paper.weight_used == 0.0
    plain = build_detector("c2ir_paper", {"type": "c2ir", "logit_score": "none", "select_ipm": False}).fit(ctx)
    assert np.allclose(paper.reference, plain.reference) and np.allclose(paper.score(ctx.impressions),
                                                                         plain.score(ctx.impressions))
    assert paper.reference.min() < 0   # not clipped at 0 by a zero logit term
    chosen = build_detector("c2ir_paper", {"type": "c2ir", "logit_score": "none", "combination": "max"}).fit(ctx)
    assert chosen.combination_used == "sum" and {c for _, c, _ in chosen.selection} == {"sum"}   # select_ipm on
    with pytest.raises(C2IRError, match="dev_imp"):
        broken = build_detector("c2ir", {"type": "c2ir", "combination": "max", "select_logit_weight": False,
                                         "select_ipm": False}).fit(ctx)
        broken.dev_imp = None
        broken.score(ctx.impressions)


def test_combine_max_known_answer():
    from c2ir.detectors.c2ir import combine_max
    dev_imp = torch.tensor([1.0, 3.0], dtype=torch.float64)          # mean 2, std sqrt(2)
    dev, logit_z = torch.tensor([2.0, 2.0 + 10 * 2 ** 0.5, 0.0], dtype=torch.float64), torch.tensor([1.0, -5.0, 0.25])
    assert torch.allclose(combine_max(dev, dev_imp, logit_z, 2.0), torch.tensor([2.0, 10.0, 0.5], dtype=torch.float64))
    # a confidently wrong logit term (-5) does not pull down the input whose deviations are extreme (z = 10)
    assert torch.allclose(combine_max(dev, dev_imp, None, 2.0), (dev - 2.0) / 2 ** 0.5)
    assert torch.allclose(combine_max(dev, dev_imp, logit_z, 0.0), (dev - 2.0) / 2 ** 0.5)


def _tiny_fit_data(with_images: bool = True):
    from c2ir.data.imageset import Normalizer
    from c2ir.extraction import extract_features
    from c2ir.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    model, norm, layers = SmallCNN(1, 3, 4).eval(), Normalizer([0.5], [0.25]), ["act1", "act2", "act3"]
    images, targets = torch.rand(24, 1, 8, 8), torch.arange(24) % 3
    imp = extract_features(model, images, norm, layers, model.fc)
    imp["labels"] = targets
    return FitData(model=model, layers=layers, impressions=imp, head=model.fc, layer_weights=torch.ones(3) / 3,
                   class_stats=compute_class_stats(imp, targets, layers, 3),
                   impression_images=images if with_images else None, normalizer=norm if with_images else None)


def test_c2ir_selects_its_ipm_and_energy_weight_on_proxies():
    from c2ir.detectors.c2ir import LOGIT_WEIGHT_GRID, SELECTABLE_IPM

    ctx = _tiny_fit_data()
    imp = ctx.impressions
    det = build_detector("c2ir", {"type": "c2ir"}).fit(ctx)   # both selections are on by default
    assert set(det.selection) == {(i, "sum", w) for i in ("mean_standardized", SELECTABLE_IPM) for w in LOGIT_WEIGHT_GRID}
    assert all(0 <= c <= 100 for c in det.selection.values())
    best = max(det.selection[v] for v in det.eligible)   # the best candidate within blurred_tolerance
    assert det.selection[(det.ipm_used, "sum", det.weight_used)] == best and det.logit_weight == 1.0
    assert det.proxy_criteria(ctx) == det.selection   # the criterion is deterministic
    fixed = build_detector("c2ir", {"type": "c2ir", "ipm": det.ipm_used, "logit_weight": det.weight_used,
                                    "select_logit_weight": False, "select_ipm": False}).fit(ctx)
    assert np.allclose(det.score(imp), fixed.score(imp))      # scoring uses the chosen IPM and weight
    assert np.allclose(det.reference, fixed.reference)        # ... and so does the threshold's reference
    assert len(det.reference) == 24 and det.fit_summary()["reference"] == 24
    again = build_detector("c2ir", {"type": "c2ir"})
    again.load_state(det.state())
    assert (again.ipm_used, again.weight_used) == (det.ipm_used, det.weight_used)
    assert np.allclose(again.score(imp), det.score(imp)) and np.allclose(again.reference, det.reference)
    summary = det.fit_summary()
    assert summary["ipm"] == det.ipm_used and summary["selected"] and len(summary["criterion"]) == 14
    assert summary["combination"] == "sum"


def test_within_tolerance_keeps_the_candidates_that_keep_the_deviations_view():
    from c2ir.detectors.c2ir import within_tolerance

    parts = {("a", "sum", 0.0): {"blurred": 99.0, "mixed": 10.0}, ("a", "sum", 4.0): {"blurred": 97.5, "mixed": 40.0},
             ("a", "sum", 16.0): {"blurred": 60.0, "mixed": 70.0}, ("b", "sum", 16.0): {"blurred": 90.0, "mixed": 80.0}}
    alone = {"a": 99.0, "b": 91.0}
    assert within_tolerance(parts, alone, 2.0) == [("a", "sum", 0.0), ("a", "sum", 4.0), ("b", "sum", 16.0)]
    assert within_tolerance(parts, alone, 1.0) == [("a", "sum", 0.0), ("b", "sum", 16.0)]
    assert within_tolerance(parts, alone, 0.0) == [("a", "sum", 0.0)]
    assert within_tolerance(parts, alone, None) == list(parts)   # no limit: the rule before blurred_tolerance


def test_c2ir_blurred_tolerance_limits_the_candidates():
    """The fit chooses the best criterion among the candidates whose blurred-proxy AUROC stays within the tolerance
    of their IPM's deviations alone; none: among all (the former rule); the summary says which competed."""
    ctx = _tiny_fit_data()
    free = build_detector("c2ir", {"type": "c2ir", "blurred_tolerance": None}).fit(ctx)
    assert free.selection[(free.ipm_used, "sum", free.weight_used)] == max(free.selection.values())
    assert set(free.eligible) == set(free.selection)
    tight = build_detector("c2ir", {"type": "c2ir", "blurred_tolerance": 0.0}).fit(ctx)
    assert tight.selection == free.selection and tight.guard_auroc == free.guard_auroc   # same evidence, other candidates
    assert 0 < len(tight.eligible) < len(tight.selection)
    for ipm in ("mean_standardized", "mahalanobis"):
        alone = tight.guard_auroc[(ipm, "sum", 0.0)]
        assert {v for v in tight.selection if v[0] == ipm and v in tight.eligible} == \
            {v for v in tight.selection if v[0] == ipm and tight.guard_auroc[v] >= alone}
    chosen = (tight.ipm_used, "sum", tight.weight_used)
    assert chosen in tight.eligible and tight.selection[chosen] == max(tight.selection[v] for v in tight.eligible)
    rows = tight.fit_summary()["criterion"]
    assert tight.fit_summary()["blurred_tolerance"] == 0.0 and all(r["blurred_auroc"] is not None for r in rows)
    assert {(r["ipm"], r["combination"], r["logit_weight"]) for r in rows if r["eligible"]} == set(tight.eligible)
    assert not tight.fell_back and tight.fit_summary()["tolerance_fell_back"] is False
    with pytest.raises(C2IRError, match="blurred_tolerance"):
        build_detector("c2ir", {"type": "c2ir", "blurred_tolerance": -1.0})


def test_c2ir_tolerance_falls_back_to_every_candidate_and_says_so(caplog):
    """A weight fixed above 0 that no IPM keeps within the tolerance: every candidate competes, with a warning and
    `tolerance_fell_back` in the summary (the pure rule: select_within_tolerance)."""
    from c2ir.detectors.c2ir import select_within_tolerance

    crit, guard = {("a", "sum", 16.0): 60.0, ("b", "sum", 16.0): 70.0}, {("a", "sum", 16.0): 50.0, ("b", "sum", 16.0): 40.0}
    assert select_within_tolerance(crit, guard, {"a": 99.0, "b": 99.0}, 2.0, ["a", "b"]) == \
        (("b", "sum", 16.0), list(crit), True)
    assert select_within_tolerance(crit, guard, {"a": 51.0, "b": 99.0}, 2.0, ["a", "b"]) == \
        (("a", "sum", 16.0), [("a", "sum", 16.0)], False)
    ctx = _tiny_fit_data()
    with caplog.at_level("WARNING"):
        det = build_detector("c2ir", {"type": "c2ir", "select_logit_weight": False, "logit_weight": 16.0,
                                      "blurred_tolerance": 0.0}).fit(ctx)
    assert det.fell_back and det.fit_summary()["tolerance_fell_back"] and set(det.eligible) == set(det.selection)
    assert "chose among all of them" in caplog.text and det.weight_used == 16.0


def test_c2ir_reference_shift_follows_the_logit_term():
    """The threshold's shift: REFERENCE_SHIFT with a logit term of weight > 0, 0 for the deviations alone (no logit
    term, or weight 0), the configured value otherwise; end to end it picks the threshold rule."""
    from c2ir.detectors.c2ir import REFERENCE_SHIFT
    from c2ir.threshold import data_free_threshold

    def make(**params):
        det = build_detector("c2ir", {"type": "c2ir", **params})
        return det
    assert make().reference_shift_used == REFERENCE_SHIFT == 1.4   # before fitting: the configured weight 1.0
    assert make(logit_score="none").reference_shift_used == 0.0
    assert make(select_logit_weight=False, logit_weight=0.0).reference_shift_used == 0.0
    assert make(logit_score="none", reference_shift=0.7).reference_shift_used == 0.7
    ctx = _tiny_fit_data()
    no_data = lambda *_: None  # noqa: E731
    shifted = make(select_ipm=False, select_logit_weight=False, logit_weight=2.0).fit(ctx)
    plain = make(select_ipm=False, select_logit_weight=False, logit_weight=2.0, reference_shift=0.0).fit(ctx)
    assert data_free_threshold(shifted, 0.95, no_data, None, no_data).rule == "pseudo_real_shifted"
    assert data_free_threshold(plain, 0.95, no_data, None, no_data).rule == "pseudo_real_cross_fitted"
    assert data_free_threshold(shifted, 0.95, no_data, None, no_data).value < \
        data_free_threshold(plain, 0.95, no_data, None, no_data).value
    with pytest.raises(C2IRError, match="reference_shift"):
        make(reference_shift=-0.5)


def test_c2ir_selects_the_combination_rule_and_max_round_trips():
    from c2ir.detectors.c2ir import LOGIT_WEIGHT_GRID

    ctx = _tiny_fit_data()
    imp = ctx.impressions
    det = build_detector("c2ir", {"type": "c2ir", "select_combination": True, "select_ipm": False}).fit(ctx)
    assert set(det.selection) == ({("mean_standardized", "sum", w) for w in LOGIT_WEIGHT_GRID}
                                  | {("mean_standardized", "max", w) for w in LOGIT_WEIGHT_GRID if w})
    assert det.selection[(det.ipm_used, det.combination_used, det.weight_used)] == max(det.selection.values())
    fixed = build_detector("c2ir", {"type": "c2ir", "combination": "max", "logit_weight": 2.0,
                                    "select_logit_weight": False, "select_ipm": False}).fit(ctx)
    assert fixed.selection == {} and fixed.fit_summary()["combination"] == "max"
    assert np.allclose(fixed.reference, fixed._reference(fixed._fold_scores(fixed._fold_sets(ctx), fixed.ipm,
                                                                             fixed.weights), "max", 2.0))
    again = build_detector("c2ir", {"type": "c2ir"})
    again.load_state(fixed.state())
    assert again.combination_used == "max" and np.allclose(again.score(imp), fixed.score(imp))
    # the score is the `max` rule itself, not the weighted sum
    from c2ir.detectors.c2ir import combine, combine_max
    from c2ir.detectors.c2ir import LOGIT_SCORES

    e = LOGIT_SCORES["energy"](imp["logits"]).double()
    z = (e - fixed.logit_imp.double().mean()) / fixed.logit_imp.double().std()
    dev = combine(fixed.layer_deviations(imp), fixed.loc, fixed.spread, fixed.weights)
    assert np.allclose(fixed.score(imp), combine_max(dev, fixed.dev_imp, z, 2.0).numpy())
    summed = build_detector("c2ir", {"type": "c2ir", "logit_weight": 2.0, "select_logit_weight": False,
                                     "select_ipm": False}).fit(ctx)
    assert not np.allclose(summed.score(imp), fixed.score(imp))
    legacy = {k: v for k, v in fixed.state().items() if k != "combination_used"}   # saved before the name was stored
    old = build_detector("c2ir", {"type": "c2ir"})
    old.load_state(legacy)
    assert old.combination_used == "max"
    with pytest.raises(C2IRError, match="combination"):
        build_detector("c2ir", {"type": "c2ir", "combination": "mean"})


def test_c2ir_paper_and_fallbacks_use_the_configured_values():
    ctx = _tiny_fit_data()
    paper = build_detector("c2ir", {"type": "c2ir", "logit_score": "none", "select_ipm": False}).fit(ctx)
    assert not paper.selection and paper.ipm_used == "mean_standardized" and paper.reference is not None
    only_ipm = build_detector("c2ir", {"type": "c2ir", "logit_score": "none"}).fit(ctx)
    assert {w for _, _, w in only_ipm.selection} == {0.0}
    fallback = build_detector("c2ir", {"type": "c2ir", "logit_weight": 2.0}).fit(_tiny_fit_data(with_images=False))
    assert fallback.weight_used == 2.0 and not fallback.selection and fallback.reference is None
    assert not build_detector("c2ir", {"type": "c2ir", "logit_score": "none"}).select_logit_weight
    wass = build_detector("c2ir", {"type": "c2ir", "ipm": "wasserstein"})
    assert not wass.select_logit_weight and not wass.select_ipm


def test_c2ir_distribution_ipm_gets_a_cross_fitted_reference_too():
    from c2ir.extraction import extract_features

    ctx = _tiny_fit_data()
    imp = extract_features(ctx.model, ctx.impression_images, ctx.normalizer, ctx.layers, ctx.head, spatial_grid=2)
    imp["labels"] = ctx.impressions["labels"]
    ctx.impressions, ctx.class_stats = imp, compute_class_stats(imp, imp["labels"], ctx.layers, 3, 16)
    det = build_detector("c2ir", {"type": "c2ir", "ipm": "wasserstein"}).fit(ctx)
    assert not det.selection and det.ipm_used == "wasserstein" and len(det.reference) == 24
    assert np.isfinite(det.reference).all()


def test_c2ir_criterion_on_raw_held_back_impressions():
    """`criterion_reference=raw`: the criterion compares the proxies with the raw held-back impressions (a fold
    set of its own); the threshold's reference stays the softened ones; the per-proxy parts average to it."""
    ctx = _tiny_fit_data()
    soft = build_detector("c2ir", {"type": "c2ir", "select_ipm": False}).fit(ctx)
    raw = build_detector("c2ir", {"type": "c2ir", "select_ipm": False, "criterion_reference": "raw"}).fit(ctx)
    folds_ = raw._fold_sets(ctx)
    assert set(folds_[0]["sets"]) == {"reference", "reference_raw", "patch_permuted", "blurred", "mixed"}
    assert raw.selection != soft.selection and raw.fit_summary()["criterion_reference"] == "raw"
    parts = raw.proxy_criteria(ctx, per_proxy=True)
    assert all(set(p) == {"patch_permuted", "blurred", "mixed"} for p in parts.values())
    assert all(abs(np.mean(list(parts[v].values())) - raw.selection[v]) < 1e-9 for v in raw.selection)
    scored = raw._fold_scores(folds_, raw.ipm_used, raw.weights)
    assert np.allclose(raw.reference, raw._reference(scored, raw.combination_used, raw.weight_used))
    assert not np.allclose(raw.reference, raw._reference([{**r, "reference": r["reference_raw"]} for r in scored],
                                                         raw.combination_used, raw.weight_used))
    with pytest.raises(C2IRError, match="criterion_reference"):
        build_detector("c2ir", {"type": "c2ir", "criterion_reference": "blurred"})
