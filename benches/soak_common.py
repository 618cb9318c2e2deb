"""Shared by benches/soak.py (the load) and benches/soak_app.py (the app):
the bodies both sides produce and check."""

# 64 bytes, as the bench upstream's small body.
SMALL = b"outrider-soak-app-64-byte-body-0123456789abcdefghijklmnopqrstuv\n"
assert len(SMALL) == 64

# Every large body is a prefix of this: a 251-byte period (a prime), so a
# chunk delivered at a wrong offset or twice does not match by accident.
PATTERN_MAX = 16 << 20
PATTERN = (bytes(range(251)) * (PATTERN_MAX // 251 + 1))[:PATTERN_MAX]
