"""The fakes against moto server: the same calls give the same shapes (and the same errors).

A fake may leave out a field no source reads, never add one moto lacks or give it another type. What the
model relies on in behaviour (pagination, redelivery and receive counts, a split's parent and children, a
drained shard's end) is compared too, so the fakes cannot drift from the API the sources are written for.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from botocore.exceptions import ClientError

from streamer.aws import AwsClients
from tests.model.fakes import Clock, FakeKinesis, FakeS3, FakeSqs

pytestmark = pytest.mark.integration


def shape(value: Any) -> Any:
    """A response with its values replaced by their types (lists by their first element's shape)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, str | int | float | bool) or value is None:
        return type(value).__name__
    return "stream"  # a streaming body (the fake's reads like aiobotocore's: checked by reading it)


def assert_covered(fake: Any, real: Any, where: str = "") -> None:
    """Every field the fake gives, moto gives too, with the same type."""
    if isinstance(fake, dict):
        assert isinstance(real, dict), f"{where}: moto gives {real}, the fake a dict"
        for key, value in fake.items():
            assert key in real, f"{where}.{key}: the fake gives it, moto does not (moto: {sorted(real)})"
            assert_covered(value, real[key], f"{where}.{key}")
    elif isinstance(fake, list):
        assert isinstance(real, list), f"{where}: moto gives {real}, the fake a list"
        if fake and real:
            assert_covered(fake[0], real[0], f"{where}[0]")
    else:
        assert fake == real, f"{where}: the fake gives {fake}, moto {real}"


def same(fake: dict[str, Any], real: dict[str, Any], where: str) -> None:
    assert_covered(shape(fake), shape(real), where)


async def error_code(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        await call
    return str(caught.value.response["Error"]["Code"])


@pytest.fixture
async def moto(aws: str) -> Any:
    clients = AwsClients()
    yield clients, aws
    await clients.close()


async def test_s3_get_and_list(moto: Any) -> None:
    clients, url = moto
    real = await clients.s3("us-east-1", url)
    fake = FakeS3()
    await real.create_bucket(Bucket="contract")
    fake.create_bucket("contract")
    for key in ("a/1.log", "a/2.log", "b/3.log"):
        put = [await s.put_object(Bucket="contract", Key=key, Body=b"x" * 10) for s in (fake, real)]
        assert put[0]["ETag"] == put[1]["ETag"]
    got = [await s.get_object(Bucket="contract", Key="a/1.log", IfMatch=put[0]["ETag"]) for s in (fake, real)]
    same(*got, "GetObject")
    bodies = []
    for g in got:
        async with g["Body"] as body:
            bodies.append(b"".join([c async for c in body.iter_chunks(4)]))
    assert bodies[0] == bodies[1] == b"x" * 10
    codes = [await error_code(s.get_object(Bucket="contract", Key="a/1.log", IfMatch='"0"')) for s in (fake, real)]
    assert codes[0] == codes[1]
    codes = [await error_code(s.get_object(Bucket="contract", Key="nope")) for s in (fake, real)]
    assert codes[0] == codes[1]
    pages: list[list[str]] = []
    for s in (fake, real):
        keys, kwargs = [], {"Bucket": "contract", "Prefix": "a/", "MaxKeys": 1}
        while True:
            page = await s.list_objects_v2(**kwargs)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        pages.append(keys)
    assert pages[0] == pages[1] == ["a/1.log", "a/2.log"]
    listed = [await s.list_objects_v2(Bucket="contract", Prefix="a/", MaxKeys=1) for s in (fake, real)]
    same(*listed, "ListObjectsV2")


async def test_sqs_visibility_redelivery_and_receive_counts(moto: Any) -> None:
    clients, url = moto
    real = await clients.sqs("us-east-1", url)
    real_url = (await real.create_queue(QueueName="contract"))["QueueUrl"]
    fake = FakeSqs(Clock())
    fake.create_queue(real_url)
    attrs = ["ApproximateReceiveCount", "SentTimestamp"]
    for s in (fake, real):
        await s.send_message(QueueUrl=real_url, MessageBody='{"Records": []}')
    first = [
        await s.receive_message(
            QueueUrl=real_url, MaxNumberOfMessages=10, VisibilityTimeout=30, MessageSystemAttributeNames=attrs
        )
        for s in (fake, real)
    ]
    same(*first, "ReceiveMessage")
    assert [r["Messages"][0]["Attributes"]["ApproximateReceiveCount"] for r in first] == ["1", "1"]
    empty = [await s.receive_message(QueueUrl=real_url, MaxNumberOfMessages=10, WaitTimeSeconds=0) for s in (fake, real)]
    assert [len(e.get("Messages", [])) for e in empty] == [0, 0]  # held: invisible
    changed = []
    for s, r in zip((fake, real), first, strict=True):
        entries = [
            {"Id": "0", "ReceiptHandle": r["Messages"][0]["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "1", "ReceiptHandle": "not-a-receipt", "VisibilityTimeout": 0},
        ]
        changed.append(await s.change_message_visibility_batch(QueueUrl=real_url, Entries=entries))
    same(*changed, "ChangeMessageVisibilityBatch")
    assert [[f["Id"] for f in c.get("Failed", [])] for c in changed] == [["1"], ["1"]]
    again = [
        await s.receive_message(
            QueueUrl=real_url, MaxNumberOfMessages=10, VisibilityTimeout=30, MessageSystemAttributeNames=attrs
        )
        for s in (fake, real)
    ]
    assert [r["Messages"][0]["Attributes"]["ApproximateReceiveCount"] for r in again] == ["2", "2"]  # redelivered
    queried = [
        await s.get_queue_attributes(
            QueueUrl=real_url, AttributeNames=["QueueArn", "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )
        for s in (fake, real)
    ]
    same(*queried, "GetQueueAttributes")
    assert [q["Attributes"]["ApproximateNumberOfMessagesNotVisible"] for q in queried] == ["1", "1"]
    deleted = [
        await s.delete_message(QueueUrl=real_url, ReceiptHandle=r["Messages"][0]["ReceiptHandle"])
        for s, r in zip((fake, real), again, strict=True)
    ]
    same(*deleted, "DeleteMessage")
    queried = [
        await s.get_queue_attributes(QueueUrl=real_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
        for s in (fake, real)
    ]
    assert [q["Attributes"]["ApproximateNumberOfMessagesNotVisible"] for q in queried] == ["0", "0"]


async def test_kinesis_records_iterators_split_and_merge(moto: Any) -> None:
    clients, url = moto
    real = await clients.kinesis("us-east-1", url)
    await real.create_stream(StreamName="contract", ShardCount=1)
    fake = FakeKinesis(Clock(), "contract", shards=1)
    both = (fake, real)
    for i in range(3):
        puts = [await s.put_record(StreamName="contract", Data=f"r{i}".encode(), PartitionKey=f"k{i}") for s in both]
        same(*puts, "PutRecord")
    listed = [await s.list_shards(StreamName="contract") for s in both]
    same(*listed, "ListShards")
    shard = [ls["Shards"][0]["ShardId"] for ls in listed]
    its = [
        await s.get_shard_iterator(StreamName="contract", ShardId=sh, ShardIteratorType="TRIM_HORIZON")
        for s, sh in zip(both, shard, strict=True)
    ]
    same(*its, "GetShardIterator")
    got = [await s.get_records(ShardIterator=i["ShardIterator"], Limit=2) for s, i in zip(both, its, strict=True)]
    same(*got, "GetRecords")
    assert [[r["Data"] for r in g["Records"]] for g in got] == [[b"r0", b"r1"]] * 2
    after = []
    for s, sh, g in zip(both, shard, got, strict=True):
        it = await s.get_shard_iterator(
            StreamName="contract",
            ShardId=sh,
            ShardIteratorType="AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=g["Records"][1]["SequenceNumber"],
        )
        after.append([r["Data"] for r in (await s.get_records(ShardIterator=it["ShardIterator"]))["Records"]])
    assert after == [[b"r2"], [b"r2"]]
    latest = []
    for s, sh in zip(both, shard, strict=True):
        it = await s.get_shard_iterator(StreamName="contract", ShardId=sh, ShardIteratorType="LATEST")
        latest.append((await s.get_records(ShardIterator=it["ShardIterator"]))["Records"])
    assert latest == [[], []]
    middle = str(2**127)
    for s, sh in zip(both, shard, strict=True):
        await s.split_shard(StreamName="contract", ShardToSplit=sh, NewStartingHashKey=middle)
    listed = [(await s.list_shards(StreamName="contract"))["Shards"] for s in both]
    for fake_shard, real_shard in zip(*listed, strict=True):
        same(fake_shard, real_shard, "ListShards after a split")
    for shards in listed:
        parent, *children = shards
        assert "EndingSequenceNumber" in parent["SequenceNumberRange"]
        assert [c.get("ParentShardId") for c in children] == [parent["ShardId"]] * 2
    for s, shards in zip(both, listed, strict=True):
        a, b = shards[1]["ShardId"], shards[2]["ShardId"]
        await s.merge_shards(StreamName="contract", ShardToMerge=a, AdjacentShardToMerge=b)
    merged = [(await s.list_shards(StreamName="contract"))["Shards"][-1] for s in both]
    same(*merged, "ListShards after a merge")
    assert all("AdjacentParentShardId" in m for m in merged)
    codes = [await error_code(s.get_records(ShardIterator="bogus")) for s in both]
    assert codes[0] == "InvalidArgumentException"
