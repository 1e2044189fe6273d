"""hlo_profile: what each kernel of an optimised HLO module moves and costs, by source op."""

import json

from digan_jax import hlo_profile

# The shape of libtpu's optimised HLO: fused computations first, kernels in ENTRY with metadata and
# backend_config estimates; async slices into VMEM (S(1)); allocation custom-calls.
HLO = """
HloModule jit_step

%fused_computation.1 (param_0: f32[8,16]) -> f32[8,16] {
  %param_0 = f32[8,16]{1,0} parameter(0)
  ROOT %mul.0 = f32[8,16]{1,0} multiply(%param_0, %param_0), metadata={op_name="inner"}
}

%region_add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

ENTRY %main.2 (p: f32[8,16], w: bf16[16,4]) -> f32[8] {
  %p = f32[8,16]{1,0:T(8,128)} parameter(0), metadata={op_name="p"}
  %w = bf16[16,4]{1,0} parameter(1)
  %fusion.3 = f32[8,16]{1,0:T(8,128)} fusion(%p), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(step)/jit(main)/transpose(jvp(DualDiscriminator.image))/image_d/b128/conv1/mul" stack_frame_id=3}, backend_config={"window_config":{"estimated_cycles":"1200"}}
  %slice-start.1 = ((f32[8,16]{1,0}), f32[2,16]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%fusion.3), slice={[0:2], [0:16]}
  %slice-done.1 = f32[2,16]{1,0:S(1)} slice-done(%slice-start.1)
  %custom-call.4 = s32[4,4]{1,0} custom-call(), custom_call_target="AllocateBuffer"
  %custom-call.7 = f32[2,16]{1,0:S(1)} custom-call(%slice-done.1), custom_call_target="ConcatBitcast"
  %reduce.5 = f32[8]{0} reduce(%fusion.3, %c), dimensions={1}, to_apply=%region_add, metadata={op_name="jit(step)/jvp(Generator)/synthesis/b4_conv1/reduce_sum"}, backend_config={"estimated_cycles":"300"}
  ROOT %tuple.6 = (f32[8]{0}) tuple(%reduce.5)
}
"""


def test_kernels_bytes_cycles_and_sources():
  found = {i["name"]: i for i in hlo_profile.instructions(HLO)}
  # Fused and reducer bodies are inside kernels; parameters, tuples, async "done" halves and
  # buffer allocations move nothing of their own.
  assert set(found) == {"fusion.3", "slice-start.1", "reduce.5"}
  assert found["fusion.3"]["bytes"] == 2 * 8 * 16 * 4  # operand + result
  assert found["slice-start.1"]["bytes"] == 2 * 16 * 4  # the slice, not the whole operand
  assert found["reduce.5"]["bytes"] == 8 * 16 * 4 + 8 * 4
  assert found["fusion.3"]["cycles"] == 1200 and found["slice-start.1"]["cycles"] == 0
  # Transform wrappers are dropped so that one layer's passes share a key.
  assert found["fusion.3"]["source"] == "step/DualDiscriminator.image/image_d/b128/conv1/mul"
  assert found["reduce.5"]["source"] == "step/Generator/synthesis/b4_conv1/reduce_sum"
  assert found["slice-start.1"]["source"] == "<slice-start>"


def test_by_source_groups_and_ranks():
  found = hlo_profile.instructions(HLO)
  cycles = hlo_profile.by_source(found, "cycles", depth=3)
  assert cycles["total"] == 1500
  top = cycles["top"]
  assert [t["source"] for t in top[:2]] == [
    "step/DualDiscriminator.image/image_d",
    "step/Generator/synthesis",
  ]
  assert top[0]["cycles"] == 1200 and abs(top[0]["share"] - 0.8) < 1e-12
  assert top[0]["bytes"] == 2 * 8 * 16 * 4 and top[0]["kernels"] == 1
  nbytes = hlo_profile.by_source(found, "bytes")
  assert nbytes["total"] == sum(i["bytes"] for i in found)


def test_collectives_are_counted_from_hlo_text():
  hlo = """
  %all-reduce.1 = f32[128,4]{1,0} all-reduce(f32[128,4]{1,0} %x), replica_groups={}
  %ag = (bf16[2,8]{1,0}, bf16[16,8]{1,0}) all-gather-start(bf16[2,8]{1,0} %y), dimensions={0}
  %agd = bf16[16,8]{1,0} all-gather-done((bf16[2,8]{1,0}, bf16[16,8]{1,0}) %ag)
  %t = (f32[3]{0}, s32[2]{0}) all-reduce(f32[3]{0} %a, s32[2]{0} %b)
  """
  out = hlo_profile.collectives(hlo)
  assert out["all-reduce"] == dict(
    count=2, bytes=128 * 4 * 4 + 3 * 4 + 2 * 4, max_bytes=128 * 4 * 4
  )
  assert out["all-gather"] == dict(count=1, bytes=16 * 8 * 2, max_bytes=16 * 8 * 2)
  assert out["reduce-scatter"]["count"] == 0


def test_command_line_summary(tmp_path, capsys):
  path = tmp_path / "step.hlo.txt"
  path.write_text(HLO)
  assert hlo_profile.main([str(path), "--depth=3"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["kernels"] == 3
  assert out["cycles"]["total"] == 1500
  assert out["bytes"]["total"] == 2 * 8 * 16 * 4 + 2 * 16 * 4 + 8 * 16 * 4 + 8 * 4
  assert out["bytes"]["top"][0]["source"] == "step/DualDiscriminator.image/image_d"
  assert hlo_profile.main([str(tmp_path / "missing.txt")]) == 2
  assert "cannot read" in capsys.readouterr().err
