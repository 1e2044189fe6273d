"""Speed, memory and MFU measurements of a config's networks, printed as JSON.

  python -m digan_jax.benchmark SUBCOMMAND --config=configs/X.py [--config.FIELD=VALUE ...] [flags]

Subcommands (every one that builds networks builds the config's, as digan_jax.main would):
  train   the training step on in-memory random data at config.train.global_batch_size: every
          phase of the step's phase table (G, D, R1) compiled and timed on its own (comparable
          with the official per-phase numbers) and every compiled variant of the fused step (with
          and without the lazy R1 phase); per-iteration figures amortise each lazy phase over its
          interval (config.train.r1_every).
  render  the generator: one jitted call per batch of --batch_sizes whole videos of
          config.sample.num_frames frames (fresh init), config.model.compute_dtype.
  i3d     the Flax I3D forward pass of FVD: config.eval.batch_size clips of config.data.num_frames
          frames at 224x224.
  data    input pipelines at the config's resolution, clip settings and global batch: synthetic
          videos generated in memory through the NumPy pipeline, and (--tf, the default) the
          synthetic TFDS dataset build and the tf.data pipeline over it.

  python -m digan_jax.benchmark train --config=configs/default.py --config.train.global_batch_size=4
  python -m digan_jax.benchmark render --config=configs/default.py --batch_sizes=1,8
  python -m digan_jax.benchmark i3d --config=configs/default.py --config.eval.batch_size=4
  python -m digan_jax.benchmark data --config=configs/default.py --num_videos=1000

Common flags: --repeats (timed calls), --warmup (untimed calls after compilation), --output (also
write the JSON there). `--help` after a subcommand lists its flags. Only `data` imports TensorFlow
(only with --tf).

Field names (the same in every subcommand):
  A measurement (one timed function; `measure.measure`, the only timing helper):
    compile_s     seconds to lower and compile a jitted function (the persistent compilation
                  cache, when set, shortens it); absent for plain Python calls (data pipelines)
    step_s        mean wall seconds per call after the warm-up, each call blocked until ready
    step_s_min    the fastest timed call; step_s_all: every timed call
    items         what one call processes: videos (train, render, data generate/build), clips
                  (i3d, data pipelines)
    items_per_s   items / step_s
    flops         XLA cost-analysis FLOPs of one call, per device (null where XLA reports none)
    tflops_per_s  flops / step_s / 1e12, per device
    mfu           flops / step_s / peak_flops (null where the device's peak is unknown)
  Every report: benchmark (the subcommand), config (its file), platform, device_kind, num_devices,
    num_processes, jax, repeats, warmup, peak_bytes and peak_bytes_source (device peak, or process
    RSS); train, render and i3d also peak_flops (dense FLOP/s of one device at the compute dtype,
    from reference.json; null where unknown).
  train: init_s (steps and state creation); phases.<name> (a measurement plus `every`);
    variants.step / variants.step_r1 (a measurement plus `lazy`, the lazy phases it runs, and
    `share`, the fraction of iterations that run it); amortised.phases / amortised.variants (one
    iteration: step_s, flops and rates as above, steps_per_s, kimg_per_day); iteration_s (the
    headline, from `iteration_from`: variants when timed); reference (where reference.json has
    timings for this setup: their phase_s, iteration_s amortised with this config's r1_every, the
    speedup per phase and per iteration, and their source).
  render: batches[] (a measurement per batch size plus batch, frames_per_s).
  i3d: forward (a measurement), flops_per_item (FLOPs per clip).
  data: generate, numpy, build, tf (measurements), dataset, dataset_bytes.

Reference figures (device peaks, other implementations' timings) are data with their sources:
digan_jax/benchmark/reference.json.
"""

from digan_jax.benchmark.cli import main

__all__ = ["main"]
