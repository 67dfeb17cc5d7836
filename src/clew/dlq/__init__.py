"""The dead-letter queue as a user sees it, and its replay.

- :mod:`~clew.dlq.records`: the dead-letter record of the ``dlq`` topic;
- :mod:`~clew.dlq.snapshot`: the read model, the ``dlq`` lake table joined with the ledger;
- :mod:`~clew.dlq.ledger`: what each replayed row became (``state.db``);
- :mod:`~clew.dlq.replay`: revalidating rows against their source's current plan.

Importing this package loads none of them, so the stages that write dead letters import
:mod:`clew.dlq.records` alone.
"""
