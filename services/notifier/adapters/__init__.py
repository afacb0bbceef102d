"""Channel adapters beyond the plain webhook: group robots, email, SMS (see `channels.build_channels`)."""
