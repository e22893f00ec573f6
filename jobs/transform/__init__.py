"""Transform and quality: the dbt partition window and the Great Expectations suites that gate it."""
