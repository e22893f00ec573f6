"""Reference builds that tests and benchmarks compare the engine against: not used in production."""
