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

from scrapy_capsolver_ocr.engines.learnt.ctc import ctc_loss, ctc_loss_and_gradient, log_softmax
from scrapy_capsolver_ocr.engines.learnt.inputs import HEIGHT, batch, network_input
from scrapy_capsolver_ocr.engines.learnt.metadata import FORMAT_VERSION, ModelInfo
from scrapy_capsolver_ocr.engines.learnt.model import LearntModel
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
from scrapy_capsolver_ocr.engines.learnt.training import Label, TrainingProgress, train_model
from scrapy_capsolver_ocr.engines.local import InvalidImageError
from scrapy_capsolver_ocr.engines.local.gate import Reading


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


def test_scored_readings_ignore_case_and_empty_text_is_wrong() -> None:
    readings = [Reading("ab3", 0.9), Reading("", 0.0), Reading("AB4", 0.8)]
    assert scored(readings, ["AB3", "", "AB3"]) == [
        Scored(0.9, True),
        Scored(0.0, False),
        Scored(0.8, False),
    ]


def test_heldout_score() -> None:
    score = HeldoutScore.of([Scored(0.9, True), Scored(0.5, False), Scored(0.4, True)], 0.97)
    assert score == HeldoutScore(2 / 3, 0.9, 1 / 3, 1.0)


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
