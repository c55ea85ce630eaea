"""The trained network written as one ONNX file (opset 13) carrying its metadata.

The graph takes batch x 1 x HEIGHT x width images (NCHW, width a multiple of 4) and gives
batch x frames x classes logits: the same numbers as :func:`.network.forward`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metadata import ModelInfo
from .network import ROWS, Conv, Parameters, classes_of, layers

OPSET = 13
#: The ONNX IR version of opset 13: onnxruntime releases older than onnx read it.
IR_VERSION = 7
INPUT = "image"
OUTPUT = "logits"


def _conv_nodes(
    helper: Any, layer: Conv, source: str, parameters: Parameters
) -> tuple[list[Any], list[Any], str]:
    from onnx import numpy_helper

    weights = parameters[f"{layer.name}.weight"]  # height x width x in x out
    initializers = [
        numpy_helper.from_array(
            np.ascontiguousarray(weights.transpose(3, 2, 0, 1), dtype=np.float32), f"{layer.name}.W"
        ),
        numpy_helper.from_array(
            parameters[f"{layer.name}.bias"].astype(np.float32), f"{layer.name}.B"
        ),
    ]
    top, left = layer.size[0] // 2, layer.size[1] // 2
    nodes = [
        helper.make_node(
            "Conv",
            [source, f"{layer.name}.W", f"{layer.name}.B"],
            [f"{layer.name}.out"],
            kernel_shape=list(layer.size),
            pads=[top, left, top, left],
        )
    ]
    out = f"{layer.name}.out"
    if layer.relu:
        nodes.append(helper.make_node("Relu", [out], [f"{layer.name}.relu"]))
        out = f"{layer.name}.relu"
    if layer.pool != (1, 1):
        nodes.append(
            helper.make_node(
                "MaxPool",
                [out],
                [f"{layer.name}.pool"],
                kernel_shape=list(layer.pool),
                strides=list(layer.pool),
            )
        )
        out = f"{layer.name}.pool"
    return nodes, initializers, out


def onnx_bytes(parameters: Parameters, info: ModelInfo) -> bytes:
    """The serialised ONNX model of ``parameters``, with ``info`` in its metadata."""
    from onnx import TensorProto, helper, numpy_helper

    classes = classes_of(parameters)
    features, frames = layers(classes)
    nodes: list[Any] = []
    initializers: list[Any] = []
    source = INPUT
    for layer in features:
        more, weights, source = _conv_nodes(helper, layer, source, parameters)
        nodes += more
        initializers += weights
    # batch x channels x rows x columns -> batch x (channels * rows) x 1 x columns.
    channels = features[-1].channels * ROWS
    initializers.append(
        numpy_helper.from_array(np.array([0, channels, 1, -1], dtype=np.int64), "columns.shape")
    )
    nodes.append(helper.make_node("Reshape", [source, "columns.shape"], ["columns"]))
    source = "columns"
    for layer in frames:
        more, weights, source = _conv_nodes(helper, layer, source, parameters)
        nodes += more
        initializers += weights
    # batch x classes x 1 x frames -> batch x frames x classes.
    initializers.append(
        numpy_helper.from_array(np.array([0, classes, -1], dtype=np.int64), "frames.shape")
    )
    nodes.append(helper.make_node("Reshape", [source, "frames.shape"], ["frames"]))
    nodes.append(helper.make_node("Transpose", ["frames"], [OUTPUT], perm=[0, 2, 1]))
    graph = helper.make_graph(
        nodes,
        "learnt_reader",
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.FLOAT, ["batch", 1, info.input_height, "width"]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", "frames", classes])],
        initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="scrapy-capsolver-ocr",
        opset_imports=[helper.make_operatorsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, info.properties())
    return model.SerializeToString()  # type: ignore[no-any-return]
