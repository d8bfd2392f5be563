"""Default values shared by the config models and the command line.

Plain constants, so that `streamer --help` and `streamer replay` can show and
use them without importing pydantic (cold start).
"""

WINDOW_SECONDS = 60
LATENESS_SECONDS = 900
SCORE_THRESHOLD = 4.0
MIN_REJECTED_RECORDS = 50
WARMUP_WINDOWS = 10
BASELINE_ALPHA = 0.1
NAT_GATEWAY_PRICE_PER_GB = 0.045
#: NACL waiting replies one window holds at most (aggregate/pairing.py MAX_WAITING_REPLIES)
MAX_WAITING_REPLIES_PER_WINDOW = 20_000
