"""The moto S3 test bucket's name and fake credentials, shared by conftest.py's fixtures and the tests that
talk to the bucket directly."""

BUCKET = "modelfleet-test"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
