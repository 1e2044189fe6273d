"""User-facing errors: a mistake the user can fix, reported as one line that names the fix."""


class UserError(Exception):
  """Bad input (missing data, unknown dataset, bad config value, incompatible workdir, ...)."""


class NonFiniteLossError(UserError):
  """Training losses stayed non-finite for config.train.nonfinite_patience checks in a row."""
