"""Kafka topic names and their partition counts (CONTRACT §4)."""

REFERRALS_SUBMITTED = "caselink.referrals.submitted"
REFERRALS_REJECTED = "caselink.referrals.rejected"
CASE_EVENTS = "caselink.case.events"
# Internal: intake hands worker and supervisor actions to the router through this topic.
CASE_COMMANDS = "caselink.case.commands"
# Internal: the router's answer to each command (applied, or why not), keyed by case id.
CASE_COMMAND_RESULTS = "caselink.case.command-results"

DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    """Return the dead-letter topic of a consumed topic."""
    return topic + DLQ_SUFFIX


_SOURCE_PARTITIONS: dict[str, int] = {
    REFERRALS_SUBMITTED: 12,
    REFERRALS_REJECTED: 3,
    CASE_EVENTS: 12,
    CASE_COMMANDS: 12,
    CASE_COMMAND_RESULTS: 12,
}

# Topics our services consume, and so the ones that need a dead-letter topic.
CONSUMED_TOPICS: tuple[str, ...] = (REFERRALS_SUBMITTED, CASE_EVENTS, CASE_COMMANDS, CASE_COMMAND_RESULTS)

# A DLQ keeps the source's partition count so a message can keep its key's partition.
TOPIC_PARTITIONS: dict[str, int] = {
    **_SOURCE_PARTITIONS,
    **{dlq(topic): _SOURCE_PARTITIONS[topic] for topic in CONSUMED_TOPICS},
}
