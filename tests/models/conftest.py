# The moto server fixtures live in tests/storage/s3_fixtures.py.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from s3_fixtures import moto_server, s3_bucket, s3_env  # noqa: E402,F401
