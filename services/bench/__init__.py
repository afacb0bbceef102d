"""`caselink bench`: the end-to-end benchmark (raw broker baseline, durable inbox/outbox floor,
Kafka pipeline, HTTP intake).

Pure parts (`network`, `workload`, `stats`, `ledger`) carry no I/O; the rest drives a real stack.
"""
