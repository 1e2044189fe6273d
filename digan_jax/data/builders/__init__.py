"""TFDS builders of the project (each module imports TensorFlow Datasets; import them lazily).

- `synthetic_videos`: procedural motion-family videos (no download).
- `prepared_videos`: the builder the prepare CLI writes user/recipe video collections with.
Both store one example per video: encoded frames, length, fps, label and source id.
"""
