"""ONNX graphs whose weights live in external data files.

`torch.onnx.export` (the dynamo exporter of recent torch, and any model over protobuf's 2 GB) writes the weights
to files beside the graph (`model.onnx.data`), named in each tensor's `external_data` by a path relative to the
graph's directory. A source is then a `.onnx` file and its data files, or a directory holding both.

Those names come from the model file, so they are checked before anything is read: a location that is absolute,
climbs out with `..`, or resolves (through a symlink) outside the model's directory is refused (SourceRefused),
the path traversal that ONNX loaders have been attacked with. The artifact the converter publishes is one
self-contained `model.onnx` when it fits in a protobuf (under 2 GB), else `model.onnx` with one `model.onnx.data`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelyard.convert.confine import join_inside
from modelyard.convert.errors import SourceUnavailable, SourceUnreadable

PROTOBUF_LIMIT = 2**31 - 1
"""A protobuf message cannot be larger (bytes): a bigger model keeps its weights in external data."""


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of a graph that can hold data: initializers, and constants in node attributes and subgraphs."""
    yield from graph.initializer
    yield from (t.values for t in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_locations(graph_path: Path) -> list[str]:
    """The external data files a graph names (relative locations, as written in the file), without reading them."""
    import onnx

    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: not an ONNX file
        raise SourceUnreadable(f"{graph_path.name} is not an ONNX model: {type(exc).__name__}: {exc}"[:500]) from exc
    found: list[str] = []
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location not in found:
            found.append(location)
    return found


def check_location(base: Path, location: str) -> Path:
    """The file a location names, inside `base`; SourceRefused for one that would be read from elsewhere."""
    return join_inside(base, location, "the ONNX graph's external data location")


def graph_of(path: Path) -> Path:
    """The graph file of a source: the path itself, or the one .onnx file of a directory."""
    if path.is_file():
        return path
    graphs = sorted(p for p in path.iterdir() if p.suffix == ".onnx" and p.is_file())
    if len(graphs) != 1:
        found = ", ".join(p.name for p in graphs) or "none"
        raise SourceUnavailable(f"an ONNX source directory must hold exactly one .onnx graph (found: {found})")
    return graphs[0]


def companions(graph: Path, fetch_missing: Any = None) -> list[Path]:
    """The graph's external data files, checked to be inside its directory and present. `fetch_missing(location,
    target)` downloads one that is not there yet (a remote source); without it, a missing file is reported."""
    out = []
    for location in external_locations(graph):
        target = check_location(graph.parent, location)
        if not target.is_file() and fetch_missing is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fetch_missing(location, target)
        if not target.is_file():
            raise SourceUnavailable(f"the ONNX graph {graph.name} keeps weights in {location!r}, which is not beside "
                                    "it: give the directory (or every data file next to the .onnx file)")
        out.append(target)
    return out


def write_artifact(graph: Path, artifact: Path) -> list[str]:
    """Write the source graph with its weights as the artifact; return the data files written beside it (none when
    the model fits in one protobuf)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=True)
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.save(model, str(artifact), save_as_external_data=False)
        return []
    data = artifact.name + ".data"
    onnx.save(model, str(artifact), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return [data]
