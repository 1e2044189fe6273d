"""User-facing errors: a mistake the user can fix, reported as one line that names the fix."""


class UserError(Exception):
  """Bad input (missing data, unknown dataset, bad config value, incompatible workdir, ...)."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value (config_checks.validate); also a ValueError for callers that
  build objects from a config directly."""


class NonFiniteLossError(UserError):
  """Training losses stayed non-finite for config.train.nonfinite_patience checks in a row."""


class CorruptDataError(UserError):
  """A prepared dataset's record or encoded frame does not read back (damaged after preparation)."""
