"""model/metrics.py: calibration, the capping path and metrics, against numbers worked out by hand
(pure numpy, milliseconds)."""

import numpy as np
import pytest

from mlc_pipeline.model.metrics import (
    CapPoint, allowed_other, calibrate_capped, calibrate_thresholds, cap_warning, capping_path, evaluate,
    fpr_at_tpr95, operating_curve, pick_capped, predict_matrix, probe_by_query, targets_from_labels,
)
from mlc_pipeline.report.tables import compare_table

# Two classes, four validation images each. Column 0 separates at 0.8 | 0.3, column 1 at 0.15 | 0.1.
PROBS = np.array([[0.9, 0.2], [0.8, 0.15], [0.3, 0.1], [0.2, 0.05]])
TARGETS = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])


def test_per_class_f1_puts_each_threshold_in_its_own_gap():
    t = calibrate_thresholds(PROBS, TARGETS, "per-class-f1")
    np.testing.assert_allclose(t, [0.55, 0.125])  # midpoints of the gaps, far from the 0.5 default


def test_ties_stay_on_one_side_of_the_threshold():
    # 0.7 is both a positive and a negative: the cut can't split them. Accepting both (F1 2/3)
    # beats accepting neither (F1 0).
    t = calibrate_thresholds(np.array([0.7, 0.7, 0.2]), np.array([1, 0, 0]), "per-class-f1")
    np.testing.assert_allclose(t, [0.45])


def test_f1_tolerance_takes_the_highest_nearly_best_cut():
    scores, truth = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3]), np.array([1, 1, 1, 0, 1, 0])
    # F1 accepting the top 1..6: 0.4, 0.667, 0.857, 0.75, 0.889 (best), 0.8
    np.testing.assert_allclose(calibrate_thresholds(scores, truth, "per-class-f1", f1_tolerance=0), [0.35])
    np.testing.assert_allclose(calibrate_thresholds(scores, truth, "per-class-f1", f1_tolerance=0.05), [0.65])
    np.testing.assert_allclose(calibrate_thresholds(scores, truth, "global-f1", f1_tolerance=0.05), [0.65])
    with pytest.raises(ValueError, match="f1_tolerance"):
        calibrate_thresholds(scores, truth, "per-class-f1", f1_tolerance=1.5)


def test_global_f1_shares_one_threshold():
    # Flattened and ranked, micro F1 peaks (0.8: 4 TP of 6 accepted, 4 positives) between 0.15 and 0.1.
    t = calibrate_thresholds(PROBS, TARGETS, "global-f1")
    np.testing.assert_allclose(t, [0.125, 0.125])


def test_target_precision_keeps_the_largest_set_that_meets_it():
    scores, truth = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0])
    # precision by accepted count: 1, 1, 2/3, 3/4, 3/5
    np.testing.assert_allclose(calibrate_thresholds(scores, truth, "target-precision", 0.75), [0.55])
    np.testing.assert_allclose(calibrate_thresholds(scores, truth, "target-precision", 0.9), [0.75])


def test_unreachable_precision_accepts_nothing():
    t = calibrate_thresholds(np.array([0.9, 0.1]), np.array([0, 1]), "target-precision", 0.9)
    assert t[0] > 0.9
    # float32 sigmoids reach exactly 1.0 (logits above ~17): "nothing" must be above those too
    scores = np.array([1.0, 1.0, 1.0, 1.0, 0.3, 0.2], dtype=np.float32)
    t = calibrate_thresholds(scores, np.array([1, 0, 0, 0, 0, 1]), "target-precision", 0.95)
    assert not (scores >= t[0]).any()


def test_uncalibratable_class_keeps_default(caplog):
    t = calibrate_thresholds(np.array([[0.9, 0.2], [0.1, 0.3]]), np.array([[1, 0], [0, 0]]), "per-class-f1")
    assert t[1] == 0.5 and "class column 1 has 0 positives" in caplog.text
    caplog.clear()          # named when the caller says what the columns are ("class column 2" was "other")
    calibrate_thresholds(np.array([[0.9, 0.2], [0.1, 0.3]]), np.array([[1, 0], [0, 0]]), "per-class-f1",
                         classes=["bees", "other"])
    assert "class 'other' has 0 positives out of 2 validation images: keeping threshold 0.50" in caplog.text


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="threshold mode"):
        calibrate_thresholds(PROBS, TARGETS, "best")
    with pytest.raises(ValueError, match="target_precision"):
        calibrate_thresholds(PROBS, TARGETS, "target-precision")
    with pytest.raises(ValueError, match="same shape"):
        calibrate_thresholds(PROBS, TARGETS[:, :1], "per-class-f1")


def test_evaluate_sigmoid_by_hand():
    probs = np.array([
        [0.9, 0.1],   # a        -> {a}     right
        [0.8, 0.7],   # a, b     -> {a, b}  right
        [0.2, 0.6],   # a        -> {b}     wrong: a missed, b false
        [0.1, 0.2],   # other    -> {}      rejected
        [0.6, 0.1],   # other    -> {a}     accepted (a false positive)
        [0.3, 0.9],   # probe    -> {b}     accepted
        [0.1, 0.1],   # probe    -> {}
        [0.2, 0.3],   # probe    -> {}
    ])
    targets = np.array([[1, 0], [1, 1], [1, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]])
    probe = np.array([0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    m = evaluate(probs, targets, np.array([0.5, 0.5]), ["a", "b"], is_unknown_mask=probe)
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    assert (a["precision"], a["recall"], a["support"]) == pytest.approx((2 / 3, 2 / 3, 3))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["unknown_accepted"] == pytest.approx(0.5)
    assert m["probe_accepted"] == pytest.approx(1 / 3)
    # max-prob score; 5% quantile of labelled scores [0.6, 0.8, 0.9] = 0.62 -> unknowns 0.2, 0.6 below
    assert m["fpr95_unknown"] == 0.0 and m["fpr95_probe"] == pytest.approx(1 / 3)
    assert (m["n_labelled"], m["n_unknown"], m["n_probe"]) == (3, 2, 3)


def test_evaluate_softmax_uses_argmax_and_other_rejects():
    classes = ["a", "b", "other"]
    probs = np.array([[0.7, 0.2, 0.1],   # a -> a
                      [0.3, 0.3, 0.4],   # other -> other (rejected)
                      [0.2, 0.5, 0.3],   # other -> b (accepted)
                      [0.1, 0.2, 0.7]])  # probe -> other
    targets = targets_from_labels([["a"], [], [], []], classes)
    m = evaluate(probs, targets, None, classes, is_unknown_mask=np.array([0, 0, 0, 1], bool), head="softmax")
    assert set(m["per_class"]) == {"a", "b"}  # "other" is not a class to score
    assert m["per_class"]["a"]["f1"] == 1.0 and m["per_class"]["b"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["accuracy"] == 1.0 and m["unknown_accepted"] == 0.5 and m["probe_accepted"] == 0.0


def test_a_class_with_no_test_image_and_none_taken_for_it_is_not_counted_zero():
    """Its F1 was 0, which sank macro F1 for what the test set cannot measure (a small dataset whose
    split left a class out of test). A class with no image but taken for one is still scored 0."""
    classes = ["a", "b", "c", "other"]
    probs = np.array([[0.9, 0.1, 0.1, 0.1],      # a -> a
                      [0.1, 0.1, 0.1, 0.1],      # other -> nothing
                      [0.1, 0.1, 0.8, 0.1]])     # other -> c (a false positive of c)
    targets = targets_from_labels([["a"], [], []], classes)
    m = evaluate(probs, targets, np.full(4, 0.5), classes)
    assert m["per_class"]["b"]["f1"] is None and m["per_class"]["b"]["support"] == 0
    assert m["per_class"]["c"]["f1"] == 0.0
    assert m["macro_f1"] == pytest.approx(0.5) and m["classes_unscored"] == ["b"]


def test_other_column_is_never_a_claimed_label():
    classes = ["a", "other"]
    pred = predict_matrix(np.array([[0.1, 0.9], [0.8, 0.9]]), np.array([0.5, 0.5]), classes)
    assert pred.tolist() == [[False, False], [True, False]]


def test_fpr_at_tpr95_counts_negatives_at_or_above_the_cut_that_keeps_95_percent():
    # 21 positives 0.00..1.00: the 5% quantile is exactly 0.05; a negative scoring it counts as accepted
    score = np.concatenate([np.linspace(0, 1, 21), [0.05, 0.04, 0.9, 0.01]])
    positives = np.arange(25) < 21
    assert fpr_at_tpr95(score, positives, ~positives) == pytest.approx(0.5)
    assert fpr_at_tpr95(score, positives, np.zeros(25, bool)) is None
    assert fpr_at_tpr95(score, np.zeros(25, bool), ~positives) is None


def test_missing_groups_give_none_not_zero():
    m = evaluate(np.array([[0.9]]), np.array([[1]]), np.array([0.5]), ["a"])
    assert m["unknown_accepted"] is None and m["probe_accepted"] is None and m["accuracy"] == 1.0


def test_targets_from_labels():
    t = targets_from_labels([["a"], [], ["a", "b"]], ["a", "b", "other"])
    assert t.tolist() == [[1, 0, 0], [0, 0, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="not in the model's classes"):
        targets_from_labels([["zebra"]], ["a"])


def test_compare_table():
    m = evaluate(np.array([[0.9], [0.6]]), np.array([[1], [0]]), np.array([0.5]), ["a"])
    table = compare_table([("sigmoid, negatives", m)])
    assert "| sigmoid, negatives | 0.667 | 100.0% | 100.0% | n/a |" in table
    assert table.count("\n") == 3


def test_probe_acceptance_by_query_says_what_was_mistaken_for_what():
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.1, 0.8], [0.7, 0.9], [0.1, 0.1]])
    out = probe_by_query(probs, ["fish", "fish", "flower", "flower", "house"], [0.5, 0.5], ["a", "b"])
    assert out == {"fish": {"n": 2, "accepted": 0.5, "accepted_as": {"a": 1}},
                   "flower": {"n": 2, "accepted": 1.0, "accepted_as": {"a": 1, "b": 2}},
                   "house": {"n": 1, "accepted": 0.0, "accepted_as": {}}}
    # an explicit "other" column is never a claimed class
    out = probe_by_query(np.array([[0.1, 0.9]]), ["x"], [0.5, 0.5], ["a", "other"])
    assert out == {"x": {"n": 1, "accepted": 0.0, "accepted_as": {}}}


# Capping unknown acceptance. Two classes; rows 0-3 are class images, rows 4-7 "other" images.
# Other row 4 scores high on class a only (cheap to reject: no positive of a sits near it),
# other row 5 scores like the weakest positive of b (rejecting it costs b a true positive).
CAP_PROBS = np.array([[0.95, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.6],
                      [0.7, 0.1], [0.1, 0.65], [0.2, 0.3], [0.1, 0.2]])
CAP_TARGETS = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0]])
CLASSES = ["a", "b"]


def accepted_other(thresholds):
    return int((CAP_PROBS[4:] >= thresholds).any(axis=1).sum())


def test_capping_path_removes_one_other_image_at_a_time_cheapest_first():
    start = np.array([0.4, 0.25])             # accepts rows 4, 5 and 6 among the "other" images
    path = capping_path(CAP_PROBS, CAP_TARGETS, CLASSES, start=start)
    assert [p.accepted for p in path] == [3, 2, 1, 0] and all(p.n_other == 4 for p in path)
    assert accepted_other(path[0].thresholds) == 3
    # Rows 4 (0.7 on a, below both positives of a) and 6 (0.3 on b, below both positives of b) cost
    # nothing; row 5 last: b's threshold must pass 0.65, above the 0.6 positive, the one step that
    # costs F1.
    np.testing.assert_allclose(path[1][2], [0.8, 0.25])
    np.testing.assert_allclose(path[2][2], [0.8, 0.45])
    np.testing.assert_allclose(path[3][2], [0.8, 0.775])


def test_calibrate_capped_takes_the_best_point_under_the_cap():
    start = np.array([0.4, 0.25])
    np.testing.assert_allclose(calibrate_capped(CAP_PROBS, CAP_TARGETS, CLASSES, 0.25, start=start), [0.8, 0.45])
    np.testing.assert_allclose(calibrate_capped(CAP_PROBS, CAP_TARGETS, CLASSES, 0.0, start=start), [0.8, 0.775])
    # F1 along this path: 0.73, 0.83, 0.90, 0.83 (3, 2, 1, 0 accepted): under any cap that allows one
    # image the 0.90 point wins, the start (3 accepted at 0.73) being worse on both axes
    np.testing.assert_allclose(calibrate_capped(CAP_PROBS, CAP_TARGETS, CLASSES, 1.0, start=start), [0.8, 0.45])
    # each point carries its validation macro F1, worked out by hand: at the start a = 4/5 (row 4 a
    # false positive), b = 4/6 (rows 5 and 6); then a = 1; then b = 4/5; then b = 2/3 (row 3 lost)
    path = capping_path(CAP_PROBS, CAP_TARGETS, CLASSES, start=start)
    np.testing.assert_allclose([p.valid_f1 for p in path], [11 / 15, 5 / 6, 0.9, 5 / 6])
    with pytest.raises(ValueError, match="max_accepted"):
        calibrate_capped(CAP_PROBS, CAP_TARGETS, CLASSES, 1.5)


def test_the_cap_is_met_to_within_a_tenth_of_itself():
    # 5% of 39 is 1.95 images: the strict reading allowed 1 (2.6%), the tenth allows 2 (5.1%)
    assert allowed_other(0.05, 39, tolerance=0.0) == 1 and allowed_other(0.05, 39) == 2
    assert allowed_other(0.05, 45) == 2 and allowed_other(0.05, 40) == 2 and allowed_other(0.05, 36) == 1
    # never more than 1.1 times the cap: 5% of 10 allows none (1 would be 10%), 5% of 19 one (5.3%),
    # and a cap of 0 stays 0
    assert allowed_other(0.05, 10) == 0 and allowed_other(0.05, 19) == 1 and allowed_other(0.0, 1000) == 0
    assert allowed_other(1.0, 7) == 7
    assert all(allowed_other(0.05, n) / n <= 0.055 for n in range(1, 500))


def test_pick_capped_on_39_other_images_takes_the_two_image_point():
    # a path that goes 3 -> 2 -> 0 accepted of 39 (one raise can drop two images, as on real photos)
    path = [CapPoint(3, 39, np.array([0.1]), 0.9), CapPoint(2, 39, np.array([0.2]), 0.8),
            CapPoint(0, 39, np.array([0.9]), 0.5)]
    np.testing.assert_allclose(pick_capped(path, 0.05), [0.2])
    np.testing.assert_allclose(pick_capped(path, 0.05, tolerance=0.0), [0.9])   # the old collapse


def test_a_looser_cap_never_picks_a_point_worse_on_both_axes_than_a_tighter_one():
    """The curve23 audit's path: 5/10 "other" accepted at F1 0.639, 4 at 0.602, 2 at 0.556, 1 at
    0.566, 0 at 0.450. A cap of 0.2 took the first point under it (2/10, 0.556) while 0.1 took 1/10 at
    0.566: worse on both axes. The best F1 under the cap is taken now (ties: fewer accepted)."""
    vocab = ["a", "b", "other"]
    rng = np.random.default_rng(48)
    lab = np.array([0] * 12 + [1] * 12 + [2] * 10)
    targets = np.zeros((len(lab), 3), int)
    targets[np.arange(len(lab)), lab] = 1
    probs = rng.uniform(0, 1, (len(lab), 3))
    probs[lab == 0, 0] += 0.3
    probs[lab == 1, 1] += 0.3
    probs = np.clip(probs, 0, 1)
    path = capping_path(probs, targets, vocab)
    f1 = [p.valid_f1 for p in path]
    assert [p.accepted for p in path] == [5, 4, 2, 1, 0] and f1[3] > f1[2], "not the audit's path: a useless test"
    accepted = lambda thr: int((probs[lab == 2][:, :2] >= thr[:2]).any(1).sum())
    assert accepted(calibrate_capped(probs, targets, vocab, 0.2)) == 1 == accepted(calibrate_capped(probs, targets,
                                                                                                   vocab, 0.1))
    for cap in np.linspace(0, 1, 21):               # over every cap: never dominated by a tighter cap's point
        loose, tight = pick_capped(path, cap), pick_capped(path, cap / 2)
        i, j = (next(k for k, p in enumerate(path) if p.thresholds is t) for t in (loose, tight))
        assert not (path[j].accepted <= path[i].accepted and f1[j] > f1[i]), (cap, i, j)
    tie = [CapPoint(2, 10, np.array([0.1]), 0.5), CapPoint(1, 10, np.array([0.2]), 0.6),
           CapPoint(0, 10, np.array([0.9]), 0.6)]
    np.testing.assert_allclose(pick_capped(tie, 0.2), [0.9])    # a tie: fewer accepted


def test_a_cap_that_costs_a_class_is_a_warning():
    # class a's positives score 0.6 and 0.5, an "other" image 0.9: a cap of 0 switches a off
    probs = np.array([[0.6, 0.1], [0.5, 0.1], [0.1, 0.8], [0.1, 0.7], [0.9, 0.1], [0.1, 0.1]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]])
    path = capping_path(probs, targets, CLASSES)
    start = path[0].thresholds
    text = cap_warning(probs, targets, CLASSES, start, pick_capped(path, 0.0), 0.0)
    assert text and "max_unknown_accepted 0 costs 0.40 of validation macro F1 (0.90 without the cap, 0.50 under" in text
    # half of the two "other" images allowed: the F1 point itself, no cost, no warning
    assert cap_warning(probs, targets, CLASSES, start, pick_capped(path, 0.5), 0.5) is None


def test_a_cap_with_no_other_image_to_measure_it_on_is_a_warning():
    """It was a log line only: metrics.json, the report and `mlc models` showed a cap of 0.05 for a
    model that nothing had capped (audit realphoto22 #3)."""
    probs = np.array([[0.6, 0.1], [0.5, 0.1], [0.1, 0.8], [0.1, 0.7]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    path = capping_path(probs, targets, CLASSES)
    text = cap_warning(probs, targets, CLASSES, path[0].thresholds, pick_capped(path, 0.05), 0.05)
    assert text and text.startswith("train.max_unknown_accepted 0.05 was not applied: the validation split "
                                    "holds no 'other' image"), text


def test_capping_a_saturated_score_terminates():
    probs = np.array([[1.0], [1.0], [0.2]], dtype=np.float32)   # an "other" row scoring exactly 1.0
    t = calibrate_capped(probs, np.array([[1], [0], [0]]), ["a"], 0.0, start=np.array([0.5]))
    assert t[0] > 1.0


def test_without_other_rows_the_cap_changes_nothing():
    start = np.array([0.4, 0.25])
    t = calibrate_capped(CAP_PROBS[:4], CAP_TARGETS[:4], CLASSES, 0.0, start=start)
    np.testing.assert_allclose(t, start)
    assert "was not applied" in cap_warning(CAP_PROBS[:4], CAP_TARGETS[:4], CLASSES, start, t, 0.0)


def test_operating_curve_scores_each_point_and_marks_the_chosen_one():
    start = np.array([0.4, 0.25])
    path = capping_path(CAP_PROBS, CAP_TARGETS, CLASSES, start=start)
    probe = np.array([False] * 8 + [True, True])
    probs = np.vstack([CAP_PROBS, [[0.5, 0.1], [0.1, 0.1]]])
    targets = np.vstack([CAP_TARGETS, [[0, 0], [0, 0]]])
    curve = operating_curve(path, probs, targets, CLASSES, probe, chosen=path[2].thresholds)
    assert [p["valid_other_accepted"] for p in curve] == [0.75, 0.5, 0.25, 0.0]
    # the validation F1 the cap picks by is recorded beside the test figures (here the same rows)
    assert [p["valid_macro_f1"] for p in curve] == pytest.approx([11 / 15, 5 / 6, 0.9, 5 / 6])
    assert [p["chosen"] for p in curve] == [False, False, True, False]
    assert [p["probe_accepted"] for p in curve] == [0.5, 0.0, 0.0, 0.0]
    # First point: a accepts rows 0, 1, 4 (F1 4/5); b accepts 2, 3, 5, 6 (F1 4/6).
    assert curve[0]["macro_f1"] == pytest.approx((4 / 5 + 4 / 6) / 2)
    assert curve[0]["unknown_accepted"] == pytest.approx(3 / 4)
    # Last: a exact (F1 1), b keeps only row 2 (F1 2/3), no "other" image accepted.
    assert curve[-1]["macro_f1"] == pytest.approx((1 + 2 / 3) / 2) and curve[-1]["unknown_accepted"] == 0.0
