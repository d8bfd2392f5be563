"""ENI context beside the pipeline: from the records and from EC2, cached in the checkpoint store."""

from streamer.enrich.enricher import Enricher

__all__ = ["Enricher"]
