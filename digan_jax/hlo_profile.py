"""What an optimised HLO module moves: collectives, and HBM traffic per instruction and source op.

XLA's cost analysis gives one total of bytes accessed. To see which layers own it, every
instruction that runs as its own kernel (everything outside fused computations and reducers, minus
bookkeeping ops that move nothing) is charged its operand bytes plus its result bytes, and charged
to the JAX op it came from (`metadata={op_name=...}`), with the jit/transform wrappers removed
so that the forward, its transpose and the R1 double-backward of one layer land side by side.
This is the HloCostAnalysis rule for unfused ops; for a fusion it overcounts operands that are
only partly read (slices, broadcasts). The compiler's own total is far larger on TPU programs (959
GB against 93 GB of kernel operands and results for the bf16 paper step on v5e:2x2): it also counts
traffic between the ops inside a fused kernel, which stays on chip.

  python -m digan_jax.hlo_profile FILE.hlo.txt [--depth=5] [--top=15]

prints the kernels' total bytes and estimated cycles, the sources that take most of each, and the
collectives, as JSON, from an optimised module kept by `digan_jax.aot --hlo_dir`.
"""

from __future__ import annotations

import collections
import json
import math
import re
import sys
from typing import Any

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(
  r"=\s*(?P<shape>\(?[^=]*?\)?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\("
)
_ARRAY_RE = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64|c64)\[([\d,]*)\]")
_DTYPE_BYTES = dict(
  pred=1, s8=1, u8=1, s16=2, u16=2, bf16=2, f16=2, s32=4, u32=4, f32=4, s64=8, u64=8, f64=8, c64=8
)
# `%name = shape opcode(operands), attributes`; shapes hold no lower-case word followed by "(".
_INSTRUCTION_RE = re.compile(
  r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s(?P<op>[a-z][\w\-]*)\((?P<rest>.*)$"
)
_COMPUTATION_RE = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_CALLED_RE = re.compile(r"\b(?:calls|to_apply)=%?([\w.\-]+)")
_OPERAND_RE = re.compile(r"%([\w.\-]+)")
_OP_NAME_RE = re.compile(r'op_name="([^"]*)"')
_CYCLES_RE = re.compile(r'"estimated_cycles":"(\d+)"')
# Ops that alias, bundle or only schedule: no HBM traffic of their own.
_FREE_OPS = frozenset(
  (
    "parameter constant get-tuple-element tuple bitcast opt-barrier after-all partition-id "
    "replica-id iota while conditional call copy-done all-gather-done all-reduce-done "
    "collective-permute-done async-done send-done recv-done add-dependency"
  ).split()
)
# libtpu custom calls that only allocate, or join buffers already side by side in VMEM (S(1)).
_FREE_CUSTOM_CALLS = ("AllocateBuffer", "ConcatBitcast")
# jit/transform wrappers in op names: dropped so one layer's passes share a key.
_WRAPPER_RE = re.compile(r"^(jit|pjit|jvp|transpose|vmap|remat|checkpoint|custom_jvp_call)\(.*\)$")


def array_bytes(text: str) -> list[int]:
  """Sizes in bytes of every array type written in `text`, in order."""
  return [
    _DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
    for dt, dims in _ARRAY_RE.findall(text)
  ]


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{op: {count, bytes, max_bytes}} over the optimised HLO (async ops counted once, at their
  start; max_bytes: the largest single op)."""
  out = {op: dict(count=0, bytes=0, max_bytes=0) for op in COLLECTIVES}
  for m in _COLLECTIVE_RE.finditer(hlo_text):
    arrays = array_bytes(m["shape"])
    if m["start"] and m["op"] in ("all-gather", "collective-permute") and len(arrays) > 1:
      arrays = arrays[len(arrays) // 2 :]  # (operands, results[, contexts]): count the results
    out[m["op"]]["count"] += 1
    out[m["op"]]["bytes"] += sum(arrays)
    out[m["op"]]["max_bytes"] = max(out[m["op"]]["max_bytes"], sum(arrays))
  return out


def source_op(op_name: str) -> str:
  """'jit(f)/jit(main)/transpose(jvp(G))/synthesis/b128_conv1/dot_general' ->
  'f/G/synthesis/b128_conv1/dot_general': each wrapper is replaced by the name it wraps."""
  parts = []
  for part in op_name.split("/"):
    while _WRAPPER_RE.match(part):
      part = part[part.index("(") + 1 : -1]
    if part and part != "main":
      parts.append(part)
  return "/".join(parts) or op_name


def instructions(hlo_text: str) -> list[dict[str, Any]]:
  """Every instruction that runs as its own kernel: name, opcode, bytes (operands + result) and
  the source op it came from."""
  lines = hlo_text.splitlines()
  nested = set()  # fused computations and reducers: their instructions live inside a kernel
  result_bytes = {}  # instruction name -> bytes of its result (names are unique in a module)
  for line in lines:
    if " fusion(" in line or "to_apply=" in line:
      nested.update(_CALLED_RE.findall(line))
    m = _INSTRUCTION_RE.match(line)
    if m:
      result_bytes[m["name"]] = sum(array_bytes(m["shape"]))
  out, computation = [], None
  for line in lines:
    if line.rstrip().endswith("{") and not _INSTRUCTION_RE.match(line):
      m = _COMPUTATION_RE.match(line)
      computation = m["name"] if m else None
      continue
    if computation is None or computation in nested:
      continue
    m = _INSTRUCTION_RE.match(line)
    if not m or m["op"] in _FREE_OPS or m["op"].endswith("-done"):
      continue
    rest = m["rest"]
    if any(f'custom_call_target="{t}"' in rest for t in _FREE_CUSTOM_CALLS):
      continue
    if m["op"].endswith("-start"):
      # (operands, destination, context): an async copy or slice moves its destination once.
      nbytes = min((b for b in array_bytes(m["shape"]) if b > 8), default=0)
    else:
      operands = rest.split("), ")[0] if "), " in rest else rest
      nbytes = result_bytes[m["name"]] + sum(
        result_bytes.get(n, 0) for n in _OPERAND_RE.findall(operands)
      )
    name = _OP_NAME_RE.search(rest)
    cycles = _CYCLES_RE.search(rest)
    out.append(
      dict(
        name=m["name"],
        opcode=m["op"],
        bytes=nbytes,
        cycles=int(cycles[1]) if cycles else 0,
        source=source_op(name[1]) if name else f"<{m['op']}>",
      )
    )
  return out


def by_source(
  found: list[dict[str, Any]], field: str = "bytes", top: int = 15, depth: int | None = None
) -> dict[str, Any]:
  """The total of `field` ("bytes" or "cycles") over `instructions(...)`, and the `top` source ops
  by it with their share, kernel count and bytes; `depth` groups by the first path components
  (e.g. 5: "train_step/DualDiscriminator.image/image_d/b128/conv1")."""
  total, groups, counts, nbytes = (
    0,
    collections.Counter(),
    collections.Counter(),
    collections.Counter(),
  )
  for ins in found:
    key = "/".join(ins["source"].split("/")[:depth]) if depth else ins["source"]
    groups[key] += ins[field]
    nbytes[key] += ins["bytes"]
    counts[key] += 1
    total += ins[field]
  return dict(
    total=total,
    top=[
      dict(source=k, share=v / total if total else 0.0, kernels=counts[k], bytes=nbytes[k])
      | ({field: v} if field != "bytes" else {})
      for k, v in groups.most_common(top)
    ],
  )


def summary(hlo_text: str, depth: int | None = 5, top: int = 15) -> dict[str, Any]:
  """Bytes and cycles by source op, and the collectives, of one optimised module."""
  found = instructions(hlo_text)
  return dict(
    kernels=len(found),
    bytes=by_source(found, "bytes", top, depth),
    cycles=by_source(found, "cycles", top, depth),
    collectives=collectives(hlo_text),
  )


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog="python -m digan_jax.hlo_profile", description=__doc__)
  parser.add_argument("hlo", help="an optimised HLO module (digan_jax.aot --hlo_dir)")
  parser.add_argument("--depth", type=int, default=5, help="source path components to group by")
  parser.add_argument("--top", type=int, default=15)
  args = parser.parse_args(argv)
  try:
    with open(args.hlo) as f:
      text = f.read()
  except OSError as e:
    print(f"error: cannot read {args.hlo}: {e.strerror}", file=sys.stderr)
    return 2
  print(json.dumps(summary(text, args.depth or None, args.top), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
