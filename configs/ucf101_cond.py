"""Class-conditional UCF-101 (101 classes, projection discriminator; paper App. K), train+test."""

from configs import ucf101_traintest


def get_config():
  config = ucf101_traintest.get_config()
  config.model.generator.c_dim = 101
  return config
