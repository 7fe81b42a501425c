# The moto server fixtures live in s3_fixtures.py so that other test packages can import them too.
from s3_fixtures import moto_server, s3_bucket, s3_env  # noqa: F401
