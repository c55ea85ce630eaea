"""The learnt reader's pure pieces (CTC, network, ONNX file, threshold, promotion, model
file checks) and one real training run on seeded generated captchas."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from labelled_captchas import fixed_captchas
from onnx import TensorProto, helper

from scrapy_capsolver_ocr.engines.learnt import LearnUnavailableError, require_learn
from scrapy_capsolver_ocr.engines.learnt.ctc import (
    ctc_loss,
    ctc_loss_and_gradient,
    labelling_probability,
    log_softmax,
)
from scrapy_capsolver_ocr.engines.learnt.inputs import HEIGHT, batch, network_input
from scrapy_capsolver_ocr.engines.learnt.labels import CLOUD, LOCAL
from scrapy_capsolver_ocr.engines.learnt.metadata import (
    BEST_PATH,
    FORMAT_VERSION,
    TEXT_PROBABILITY,
    ModelInfo,
)
from scrapy_capsolver_ocr.engines.learnt.model import (
    LearntModel,
    best_path_groups,
    read_probabilities,
)
from scrapy_capsolver_ocr.engines.learnt.network import count, folded, forward, initial_parameters
from scrapy_capsolver_ocr.engines.learnt.onnx_file import onnx_bytes
from scrapy_capsolver_ocr.engines.learnt.threshold import (
    HeldoutScore,
    Scored,
    at_threshold,
    choose_threshold,
    promotion,
    scored,
)
from scrapy_capsolver_ocr.engines.learnt.training import (
    Label,
    TrainingProgress,
    _split,
    default_epochs,
    train_model,
)
from scrapy_capsolver_ocr.engines.local import InvalidImageError
from scrapy_capsolver_ocr.engines.local.gate import Alphabet, Reading, read_best_path, softmax


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    merged = [k for index, k in enumerate(path) if index == 0 or k != path[index - 1]]
    return tuple(k for k in merged if k != 0)


def brute_force_loss(logits: np.ndarray, label: list[int]) -> float:
    """-log of the summed probability of every frame path that collapses to ``label``."""
    probabilities = np.exp(log_softmax(logits))
    frames, classes = probabilities.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=frames):
        if collapse(path) == tuple(label):
            total += math.prod(probabilities[t, k] for t, k in enumerate(path))
    return -math.log(total)


def test_ctc_loss_is_the_sum_over_all_alignments() -> None:
    random = np.random.default_rng(1)
    logits = random.normal(size=(3, 5, 3))
    labels = [[1, 2], [1, 1], [2]]  # a repeat needs a blank between its characters
    loss, _ = ctc_loss_and_gradient(logits, labels)
    expected = [brute_force_loss(logits[i], labels[i]) for i in range(3)]
    np.testing.assert_allclose(loss, expected, rtol=1e-9)


def test_ctc_gradient_matches_finite_differences() -> None:
    random = np.random.default_rng(2)
    logits = random.normal(size=(2, 6, 4))
    labels = [[1, 3, 3], [2]]
    _, gradient = ctc_loss_and_gradient(logits, labels)
    step = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (
            ctc_loss_and_gradient(up, labels)[0][index[0]]
            - ctc_loss_and_gradient(down, labels)[0][index[0]]
        ) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, atol=1e-6)


def test_a_label_too_long_for_the_frames_has_infinite_loss_and_no_gradient() -> None:
    logits = np.zeros((2, 3, 3))
    loss, gradient = ctc_loss_and_gradient(logits, [[1, 1, 1], [1]])
    assert math.isinf(loss[0]) and math.isfinite(loss[1])
    assert not gradient[0].any() and gradient[1].any()


def test_network_gradient_through_autograd_matches_finite_differences() -> None:
    import autograd.numpy as anp
    from autograd import grad

    parameters = {
        name: values.astype(np.float64) for name, values in initial_parameters(4, 0).items()
    }
    images = np.random.default_rng(3).uniform(-1, 1, size=(2, HEIGHT, 16, 1))
    labels = [[1, 2], [3]]

    def loss(weights: np.ndarray) -> float:
        return ctc_loss(forward({**parameters, "conv2.weight": weights}, images, anp), labels)

    gradient = grad(loss)(parameters["conv2.weight"])
    step = 1e-5
    for index in [(0, 0, 0, 0), (1, 2, 3, 4), (2, 1, 15, 31)]:
        up, down = parameters["conv2.weight"].copy(), parameters["conv2.weight"].copy()
        up[index] += step
        down[index] -= step
        numeric = (loss(up) - loss(down)) / (2 * step)
        assert gradient[index] == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def info(**changes: object) -> ModelInfo:
    values: dict[str, object] = {
        "version": 3,
        "site": "example.com",
        "alphabet": "ABC123",
        "threshold": 0.5,
        "heldout_accuracy": 0.8,
        "coverage": 0.6,
        "precision": 0.98,
        "labels": 1000,
        "input_height": HEIGHT,
    }
    values.update(changes)
    return ModelInfo(**values)  # type: ignore[arg-type]


def trained_like(classes: int, seed: int) -> dict[str, np.ndarray]:
    """Initial parameters with random scales and shifts, as training leaves them."""
    random = np.random.default_rng(seed)
    parameters = initial_parameters(classes, seed)
    for name in parameters:
        if name.endswith((".gamma", ".beta", ".bias")):
            parameters[name] = random.uniform(0.5, 1.5, parameters[name].shape).astype(np.float32)
    return parameters


def test_folded_normalisation_reads_as_the_normalised_network() -> None:
    parameters = trained_like(5, 4)
    images = batch(
        [np.random.default_rng(i).uniform(0, 1, (HEIGHT, 24)).astype(np.float32) for i in range(6)]
    )
    statistics: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    normalised = forward(parameters, images, statistics=statistics)
    assert set(statistics) == {"conv1", "conv2", "conv3", "frames"}
    reading = folded(parameters, statistics)
    assert not any(name.endswith((".gamma", ".beta")) for name in reading)
    np.testing.assert_allclose(forward(reading, images), normalised, rtol=1e-3, atol=1e-3)


def test_the_onnx_file_reads_as_the_numpy_forward_pass(tmp_path: Path) -> None:
    random = np.random.default_rng(6)
    statistics = {
        name: (random.normal(size=channels), random.uniform(0.5, 2, channels))
        for name, channels in [("conv1", 16), ("conv2", 32), ("conv3", 64), ("frames", 128)]
    }
    parameters = folded(trained_like(7, 5), statistics)
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes(parameters, info()))
    model = LearntModel.load(path)
    for seed, width in [(1, 40), (2, 85), (3, 3)]:
        values = np.random.default_rng(seed).uniform(-1, 1, size=(HEIGHT, width)).astype(np.float32)
        expected = forward(parameters, batch([values]))[0]
        np.testing.assert_allclose(model.logits(values), expected, rtol=1e-4, atol=1e-4)
    assert (model.version, model.site, model.alphabet) == (3, "example.com", "ABC123")
    assert (model.threshold, model.heldout_accuracy, model.coverage) == (0.5, 0.8, 0.6)
    assert count(parameters) > 100_000
    onnx.checker.check_model(onnx.load(str(path)))


def test_a_model_reads_with_the_confidence_its_threshold_was_chosen_on(tmp_path: Path) -> None:
    parameters = trained_like(7, 3)
    values = np.random.default_rng(4).uniform(-1, 1, size=(HEIGHT, 85)).astype(np.float32)
    letters = Alphabet(["", *"ABC123"])
    for confidence, read in [(TEXT_PROBABILITY, read_probabilities), (BEST_PATH, read_best_path)]:
        path = tmp_path / f"{confidence}.onnx"
        path.write_bytes(onnx_bytes(parameters, info(confidence=confidence)))
        model = LearntModel.load(path)
        assert model.info.confidence == confidence
        expected = read(softmax(model.logits(values)), letters)
        assert model.read_input(values) == expected
    # A file written before the measure was recorded chose its threshold on the best path.
    properties = info().properties()
    del properties["confidence"]
    assert ModelInfo.parse(properties).confidence == BEST_PATH


def test_choose_threshold_is_the_lowest_that_keeps_the_precision() -> None:
    readings = [
        Scored(0.99, True),
        Scored(0.95, True),
        Scored(0.9, False),
        Scored(0.8, True),
        Scored(0.7, True),
        Scored(0.6, True),
        Scored(0.5, False),
        Scored(0.4, False),
    ]
    # At 0.6: 6 answered, 5 right (83 %); at 0.5: 7 answered, 5 right (71 %).
    assert choose_threshold(readings, 0.8) == 0.6
    assert choose_threshold(readings, 0.75) == 0.6
    assert choose_threshold(readings, 1.0) == 0.95
    assert choose_threshold(readings, 0.5) == 0.4
    assert at_threshold(readings, 0.6) == (6 / 8, 5 / 6)
    assert at_threshold(readings, None) == (0.0, 0.0)
    assert at_threshold(readings, 0.999) == (0.0, 0.0)


def test_choose_threshold_keeps_equal_confidences_together_and_never_zero() -> None:
    # Two readings at 0.9, one wrong: 0.9 answers both (50 %), never only the right one.
    assert choose_threshold([Scored(0.9, True), Scored(0.9, False)], 0.97) is None
    assert choose_threshold([Scored(0.0, True), Scored(0.0, True)], 0.5) is None
    assert choose_threshold([], 0.97) is None


def test_labelling_probability_is_the_sum_over_all_alignments() -> None:
    random = np.random.default_rng(5)
    logits = random.normal(size=(5, 3))
    probabilities = np.exp(log_softmax(logits))
    for label in ([1, 2], [1, 1], [2], [2, 1, 2]):
        expected = math.exp(-brute_force_loss(logits, label))
        assert labelling_probability(probabilities, label) == pytest.approx(expected, rel=1e-9)
    # More characters than the frames can hold (a repeat needs a blank between).
    assert labelling_probability(probabilities, [1, 1, 1, 1]) == 0.0
    assert labelling_probability(np.zeros((0, 3)), [1]) == 0.0


def test_labelling_probability_agrees_with_the_training_sums() -> None:
    # Reading sums in linear space, rescaled frame by frame; training in log space. Over 60
    # frames the probabilities run from 1e-9 (the best path's text) down to 1e-85.
    random = np.random.default_rng(11)
    logits = random.normal(scale=3.0, size=(1, 60, 6))
    probabilities = np.exp(log_softmax(logits))[0]
    best = best_path_groups(probabilities)
    labels = [best, best[:-1], [1, 2, 3], [3], [], [2, 2, 2], [1] * 40]
    losses, _ = ctc_loss_and_gradient(logits.repeat(len(labels), axis=0), labels)
    for label, loss in zip(labels, losses, strict=True):
        expected = math.exp(-loss) if math.isfinite(loss) else 0.0
        assert labelling_probability(probabilities, label) == pytest.approx(expected, rel=1e-9)
    assert labelling_probability(probabilities, [1] * 40) == 0.0  # 40 repeats need 79 frames


CHARSET = ["", "a", "A", "b", "B"]


def frames(*rows: dict[int, float]) -> np.ndarray:
    """Hand-made network output: each frame's probabilities by class (the rest to blank)."""
    out = np.zeros((len(rows), len(CHARSET)))
    for t, row in enumerate(rows):
        for k, p in row.items():
            out[t, k] = p
        out[t, 0] = 1.0 - sum(row.values())
    return out


def test_confidence_is_the_probability_of_the_text_over_its_alignments() -> None:
    alphabet = Alphabet(CHARSET)
    # "ab" read from uncertain frame boundaries: every frame's top class is right, but the
    # transitions hesitate between a character and the blank, which does not change the
    # text. The product of each frame's top probability counts that hesitation as doubt.
    hesitant = frames({1: 0.6}, {1: 0.95}, {}, {3: 0.6}, {3: 0.95})
    reading = read_probabilities(hesitant, alphabet)
    product = read_best_path(hesitant, alphabet).confidence
    assert reading.text == "ab"
    assert product < 0.35 < 0.8 < reading.confidence <= 1.0
    # One character torn between two letters: at most the share of the likelier one.
    torn = frames({1: 0.99}, {}, {3: 0.55, 1: 0.44}, {})
    reading = read_probabilities(torn, alphabet)
    assert reading.text == "ab" and 0.5 < reading.confidence <= 0.55
    # Case is folded as the answer check folds it: "a" or "A" is the same answer.
    cased = frames({1: 0.5, 2: 0.49}, {})
    reading = read_probabilities(cased, alphabet)
    assert reading.text == "a" and reading.confidence == pytest.approx(0.99 * 1.0)
    # Nothing read: no confidence.
    assert read_probabilities(frames({}, {}), alphabet) == Reading("", 0.0)


def test_confidence_stays_in_range_and_never_below_the_best_path() -> None:
    random = np.random.default_rng(8)
    alphabet = Alphabet(CHARSET)
    for _ in range(200):
        logits = random.normal(scale=3.0, size=(int(random.integers(1, 12)), len(CHARSET)))
        probabilities = np.exp(log_softmax(logits))
        reading = read_probabilities(probabilities, alphabet)
        best_path = read_best_path(probabilities, alphabet)
        assert reading.text == best_path.text
        assert 0.0 <= reading.confidence <= 1.0
        # The best path is one of the text's alignments.
        assert reading.confidence >= best_path.confidence * (1 - 1e-9)


def test_default_epochs_pass_over_about_48000_images_within_the_range() -> None:
    assert [default_epochs(n) for n in (2400, 3200, 800, 100, 100_000)] == [20, 15, 40, 40, 8]


def test_the_newest_labels_are_held_out_whoever_read_them() -> None:
    train, heldout = _split(11, 0.3)
    assert heldout == [8, 9, 10]
    assert train == list(range(8))
    assert _split(3, 0.2) == ([0, 1], [2])


@pytest.mark.parametrize("share", [0.15, 0.2, 0.3])
def test_a_previous_model_never_trained_on_the_labels_that_judge_it(share: float) -> None:
    """Labels arrive in order; each model is trained on all of them so far. Whatever the
    previous model trained on (its own split of fewer labels), the next one's held-out
    labels are none of them."""
    for before in (1000, 1500, 2000):
        previous_train, _ = _split(before, share)
        _, heldout = _split(3000, share)
        assert not set(previous_train) & set(heldout)


def test_scored_readings_ignore_case_and_empty_text_is_wrong() -> None:
    readings = [Reading("ab3", 0.9), Reading("", 0.0), Reading("AB4", 0.8)]
    assert scored(readings, ["AB3", "", "AB3"]) == [
        Scored(0.9, True),
        Scored(0.0, False),
        Scored(0.8, False),
    ]


def test_precision_is_judged_without_a_local_readers_answers_coverage_with_them() -> None:
    readings = [Scored(0.9, True), Scored(0.8, True), Scored(0.7, False), Scored(0.6, True)]
    # The threshold chosen on the judging readings, coverage counted over all of them.
    judged_by_two = HeldoutScore.judged(readings, [False, True, False, True], 0.97)
    assert judged_by_two == HeldoutScore(3 / 4, 0.6, 1.0, 1.0)
    judged_by_three = HeldoutScore.judged(readings, [True, True, True, False], 0.97)
    assert judged_by_three == HeldoutScore(3 / 4, 0.8, 2 / 4, 1.0)
    assert HeldoutScore.judged(readings, [False] * 4, 0.97) == HeldoutScore(3 / 4, None, 0.0, 0.0)


def test_labels_a_local_reader_answered_train_but_never_judge_precision(tmp_path: Path) -> None:
    labels = [Label(image, answer, LOCAL) for answer, image in fixed_captchas("digits", 12, seed=4)]
    report = train_model(labels, tmp_path / "model.onnx", epochs=1)
    assert not report.promoted and report.threshold is None
    assert "no confidence threshold" in report.reason
    assert not (tmp_path / "model.onnx").exists()
    assert not labels[0].judges_precision
    assert Label(b"", "1", CLOUD).judges_precision and Label(b"", "1").judges_precision


def test_heldout_score() -> None:
    readings = [Scored(0.9, True), Scored(0.5, False), Scored(0.4, True), Scored(0.8, True)]
    assert HeldoutScore.of(readings, 0.97) == HeldoutScore(3 / 4, 0.8, 2 / 4, 1.0)
    # A previous model is scored at the threshold it reads with, whatever these labels say.
    assert HeldoutScore.at(readings, 0.45) == HeldoutScore(3 / 4, 0.45, 3 / 4, 2 / 3)
    assert HeldoutScore.at(readings, 0.95) == HeldoutScore(3 / 4, 0.95, 0.0, 0.0)


@pytest.mark.parametrize(
    ("new", "previous", "promoted", "why"),
    [
        (HeldoutScore(0.8, 0.5, 0.6, 0.98), None, True, "promoted ("),
        (HeldoutScore(0.8, None, 0.0, 0.0), None, False, "no confidence threshold keeps"),
        (HeldoutScore(0.8, 0.5, 0.6, 0.98), HeldoutScore(0.7, 0.6, 0.5, 0.98), True, "better"),
        (HeldoutScore(0.8, 0.5, 0.5, 0.98), HeldoutScore(0.7, 0.6, 0.5, 0.98), True, "better"),
        (HeldoutScore(0.8, 0.5, 0.4, 0.98), HeldoutScore(0.7, 0.6, 0.5, 0.98), False, "no better"),
        (HeldoutScore(0.7, 0.5, 0.5, 0.98), HeldoutScore(0.7, 0.6, 0.5, 0.98), False, "no better"),
        (HeldoutScore(0.9, None, 0.0, 0.0), HeldoutScore(0.2, None, 0.0, 0.0), False, "no conf"),
    ],
)
def test_promotion_rules(
    new: HeldoutScore, previous: HeldoutScore | None, promoted: bool, why: str
) -> None:
    verdict, reason = promotion(new, previous, 0.97)
    assert verdict is promoted
    assert why in reason and "\n" not in reason


def onnx_without_metadata(properties: dict[str, str]) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)])
    model.ir_version = 7
    helper.set_model_props(model, properties)
    return model.SerializeToString()  # type: ignore[no-any-return]


def learnt_properties(**changes: str) -> dict[str, str]:
    return {**info().properties(), **changes}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "onnxruntime cannot load it"),
        (b"\x08\x07garbage" * 20, "onnxruntime cannot load it"),
        (onnx_without_metadata({}), "no learnt model metadata"),
        (onnx_without_metadata(learnt_properties(version='"3"')), "version is not a int"),
        (onnx_without_metadata(learnt_properties(threshold="1.5")), "threshold is not a number"),
        (onnx_without_metadata(learnt_properties(alphabet='"AA"')), "repeats a character"),
        (onnx_without_metadata(learnt_properties(site="{")), "metadata is unreadable"),
        (onnx_without_metadata(learnt_properties(input_height="64")), "64 pixels high"),
        (onnx_without_metadata(learnt_properties(confidence='"vibes"')), "does not know"),
        (
            onnx_without_metadata(learnt_properties(format_version=str(FORMAT_VERSION + 1))),
            "newer than this version",
        ),
    ],
)
def test_bad_model_files_are_refused_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "site-v1.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as raised:
        LearntModel.load(path)
    assert str(path) in str(raised.value)


def test_a_model_file_missing_a_field_or_missing_altogether_is_refused(tmp_path: Path) -> None:
    properties = learnt_properties()
    del properties["alphabet"]
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_without_metadata(properties))
    with pytest.raises(ValueError, match="lacks 'alphabet'"):
        LearntModel.load(path)
    with pytest.raises(ValueError, match="cannot be read as a learnt model"):
        LearntModel.load(tmp_path / "absent.onnx")


def test_metadata_round_trips() -> None:
    assert ModelInfo.parse(info().properties()) == info()
    assert json.loads(info().properties()["alphabet"]) == "ABC123"


def test_network_input_is_the_fixed_height_and_refuses_non_images() -> None:
    _, image = fixed_captchas("digits", 1)[0]
    values = network_input(image)
    assert values.shape == (HEIGHT, 85) and values.dtype == np.float32
    assert -1.0 <= values.min() < values.max() <= 1.0
    with pytest.raises(InvalidImageError):
        network_input(b"<html>blocked</html>")
    with pytest.raises(InvalidImageError, match="over 100"):
        network_input(image, max_pixels=100)


def labels_of(style: str, count: int, seed: int) -> list[Label]:
    return [Label(image, answer) for answer, image in fixed_captchas(style, count, seed)]


@pytest.mark.parametrize(
    ("labels", "options", "message"),
    [
        ([Label(b"x", "AB")] * 30, {}, "0 readable labels; training needs at least 10"),
        ([Label(b"x", "")] * 20, {}, "label 0 has no answer text"),
        ([Label(b"x", " A")] * 20, {}, "spaces around it"),
        ([Label(b"x", "A")] * 20, {"heldout_share": 0.9}, "heldout_share must be"),
        ([Label(b"x", "A")] * 20, {"min_precision": 0}, "min_precision must be"),
    ],
)
def test_train_model_refuses_bad_arguments(
    tmp_path: Path, labels: list[Label], options: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train_model(labels, tmp_path / "model.onnx", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "model.onnx").exists()


def test_training_learns_seeded_captchas_and_a_worse_model_is_not_promoted(
    tmp_path: Path,
) -> None:
    labels = labels_of("digits", 400, seed=11)
    unreadable = [Label(b"not an image", "1234"), Label(b"\x89PNG\r\n\x1a\n", "5678")]
    seen: list[TrainingProgress] = []
    output = tmp_path / "digits.onnx"

    report = train_model(
        labels + unreadable, output, site="demo", progress=seen.append, seed=1, epochs=8
    )

    assert report.promoted, report.reason
    assert (report.version, report.labels, report.skipped, report.epochs) == (1, 400, 2, 8)
    assert [p.epoch for p in seen] == list(range(1, 9)) and seen[-1].epochs == 8
    assert seen[-1].loss < seen[0].loss
    # It reaches over 90 % here; the floor leaves room for slower or different machines.
    assert report.heldout_accuracy >= 0.5
    assert report.threshold is not None and 0 < report.threshold <= 1
    assert report.coverage > 0 and report.precision >= 0.97
    model = LearntModel.load(output)
    assert (model.version, model.site, model.alphabet) == (1, "demo", "0123456789")
    assert model.threshold == report.threshold
    assert model.heldout_accuracy == report.heldout_accuracy
    # Captchas it never saw: most are read right.
    fresh = fixed_captchas("digits", 50, seed=99)
    right = sum(model.read(image).text == answer for answer, image in fresh)
    assert right >= 20
    assert output.stat().st_size == report.model_bytes < 1_000_000

    # One epoch cannot beat it on the new held-out labels: nothing is written.
    again = tmp_path / "digits-v2.onnx"
    worse = train_model(labels, again, previous=output, seed=2, epochs=1)
    assert not worse.promoted and worse.version == 2
    assert not again.exists()
    assert "not promoted" in worse.reason


def test_a_missing_training_package_names_the_extra() -> None:
    with pytest.raises(
        LearnUnavailableError, match=r"needs no_such_package_zz, optional"
    ) as raised:
        require_learn("Training", ("autograd", "no_such_package_zz"))
    assert 'pip install "scrapy-capsolver-ocr[learn]"' in str(raised.value)
    require_learn("Training")  # the learn extra is installed here
