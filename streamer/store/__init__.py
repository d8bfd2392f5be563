"""Checkpoint stores and the fleet that shares one.

    base       the interface: Commit, Done, StateStore, CheckpointError, LeaseLost
    sqlite     the embedded default: one process, one SQLite file
    postgres   a fleet's shared database: per-replica counters, claims, leases, the leader's queue
    leases     who reads what: lease taking, renewal and hand-back (the KCL pattern)
    leader     the one replica that merges window partials and runs the detector
"""
