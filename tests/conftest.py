"""Settings for the whole suite."""

import os

from hypothesis import settings

# Property tests draw the same examples on every run, so CI passes or fails on the code alone;
# HYPOTHESIS_PROFILE=explore draws new ones (run it on demand to look for new failures).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
