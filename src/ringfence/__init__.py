"""ringfence: an exchange core where every balance is provable, every withdrawal is policed and
every mismatch halts."""

__version__ = "0.1.0"
