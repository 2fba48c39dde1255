"""The asset graph, one module per stage: ingest -> features -> training -> evaluation."""
