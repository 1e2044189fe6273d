"""Video data: procedural synthetic videos, the prepare CLI (TFDS datasets from video folders and
the paper's recipes) and the input pipelines (training frame pairs, evaluation clips).

Importing this package does not import TensorFlow: `synthetic_videos`, `sampling`, `image_ops` and
the NumPy iterators of `pipeline` run without it; the TFDS builders, `storage` and the tf.data
iterators import it lazily (with its GPUs hidden). See DATASETS.md.
"""
