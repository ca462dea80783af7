"""The stage runtime: stages are plain objects that take a batch of records and return outputs
and state changes; one runner owns the consumer, the batch loop, state recovery, flushing before
commit, metrics and dead letters for all of them (see ``runner.py``)."""
