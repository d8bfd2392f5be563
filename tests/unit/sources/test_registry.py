"""Sources are plug-ins: every source module's config is registered once and builds its own runner."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import get_args

import streamer.sources
from streamer.config import parse_config
from streamer.settings import SourceSettings
from streamer.sources.registry import SourceConfig, source_types


def source_config_classes() -> set[type]:
    found: set[type] = set()
    for info in pkgutil.iter_modules(streamer.sources.__path__):
        module = importlib.import_module(f"streamer.sources.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, SourceSettings) and "type" in cls.model_fields and cls.__module__ == module.__name__:
                found.add(cls)
    return found


def test_every_source_module_config_is_registered_once() -> None:
    registered = set(get_args(get_args(SourceConfig)[0]))
    assert source_config_classes() == registered
    assert len(source_types()) == len(set(source_types())) == len(registered)


def test_every_registered_source_builds_its_runner_from_a_context() -> None:
    for cls in get_args(get_args(SourceConfig)[0]):
        assert inspect.iscoroutinefunction(cls.build), cls
        assert list(inspect.signature(cls.build).parameters) == ["self", "ctx"], cls


def test_the_root_config_accepts_every_registered_type_and_names_it_in_errors() -> None:
    config = parse_config({"sources": [{"type": "s3", "bucket": "abc"}]}, {})
    assert config.sources[0].type == "s3"
    for kind in source_types():
        assert kind in {"s3", "s3_sqs", "kinesis", "cloudwatch", "firehose_http"}
