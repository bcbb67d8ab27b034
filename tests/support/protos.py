"""Test .proto files, compiled at test time with grpcio-tools (the official protoc), so the
tests encode messages with the official `protobuf` package and never with our own code.

`compile_protos(tmp_dir)` returns the generated modules and the FileDescriptorSet path.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

EVERYTHING_PROTO = """
syntax = "proto3";
package wiretrail.test;

message Inner {
  string text = 1;
  int32 n = 2;
}

message Node {
  Node child = 1;
  string name = 2;
}

message Everything {
  enum Kind { ZERO = 0; ONE = 1; TWO = 2; }
  int32 i32 = 1;
  int64 i64 = 2;
  uint64 u64 = 3;
  sint32 s32 = 4;
  bool flag = 5;
  fixed64 f64 = 6;
  sfixed32 sf32 = 7;
  double d = 8;
  float f = 9;
  string text = 10;
  bytes blob = 11;
  Inner inner = 12;
  repeated int32 packed = 13;
  repeated Inner many = 14;
  Kind kind = 15;
  map<string, string> labels = 16;
  int32 negative = 17;
  string unicode = 18;
  Node tree = 19;
  fixed32 f32 = 20;
}

service Tools {
  rpc Run(stream Everything) returns (stream Inner);
}
"""

LEGACY_PROTO = """
syntax = "proto2";
package wiretrail.legacy;

message Old {
  optional group Legacy = 1 {
    optional string note = 2;
    optional int32 count = 3;
  }
  optional string after = 4;
}
"""


@dataclass
class Compiled:
    everything: object  # the everything_pb2 module
    legacy: object  # the legacy_pb2 module
    descriptor_set: Path


def compile_files(directory: Path, files: dict[str, str], descriptor_set: str) -> tuple[dict, Path]:
    """Compile {file name: .proto text} with protoc; ({module name: module}, descriptor set path)."""
    from grpc_tools import protoc

    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    fds = directory / descriptor_set
    rc = protoc.main(["protoc", f"-I{directory}", f"--python_out={directory}", "--include_imports",
                      f"--descriptor_set_out={fds}", *files])
    assert rc == 0, f"protoc failed ({rc})"
    sys.path.insert(0, str(directory))
    try:
        modules = {name[:-len(".proto")]: importlib.import_module(name[:-len(".proto")] + "_pb2") for name in files}
    finally:
        sys.path.remove(str(directory))
    return modules, fds


def compile_protos(directory: Path) -> Compiled:
    modules, fds = compile_files(directory, {"wt_everything.proto": EVERYTHING_PROTO,
                                             "wt_legacy.proto": LEGACY_PROTO}, "everything.pb")
    return Compiled(modules["wt_everything"], modules["wt_legacy"], fds)
