"""A bucket on moto's S3 server, public for reads like an R2 bucket behind a
domain (so CDN URLs can be fetched without signing)."""

from __future__ import annotations

import json


def s3_client(endpoint: str):
    import boto3

    keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)


def public_bucket(endpoint: str, bucket: str) -> None:
    s3 = s3_client(endpoint)
    s3.create_bucket(Bucket=bucket)
    read = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}
    statement = {**read, "Resource": f"arn:aws:s3:::{bucket}/*"}
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
