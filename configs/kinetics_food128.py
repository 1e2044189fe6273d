"""Kinetics-food 128x128 (29 Kinetics-600 food classes; prepare with --recipe=kinetics_food)."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "kinetics_food"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  return config
