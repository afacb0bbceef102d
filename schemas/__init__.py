"""caselink's public contracts: topic names, enums, referral submissions and case events."""
