"""A xain-sdk 0.8 participant for tests: each round it returns the global vector plus a fixed delta.

It runs with the SDK's own interpreter (not edgefl's), e.g.
`/tmp/xain08/bin/python tests/xain/participant08.py http://127.0.0.1:4321 0.25`, and exits when the
coordinator says `finish`, printing how many rounds it trained. Model bytes are `.npy` of the
flat float32 vector (docs/XAIN.md), so with deltas d_i the average after a round is exactly the
previous global plus the mean of the d_i whenever those are exact binary fractions.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
from xain_sdk import ParticipantABC, configure_logging, run_participant


class AddDelta(ParticipantABC):
    def __init__(self, delta: float, train_seconds: float = 0.0, announce: bool = False) -> None:
        self.delta = np.float32(delta)
        self.rounds = 0
        self.train_seconds = train_seconds
        self.announce = announce

    def deserialize_training_input(self, data: bytes) -> np.ndarray:
        vector = np.load(io.BytesIO(data), allow_pickle=False)
        if vector.dtype != np.dtype("<f4") or vector.ndim != 1:
            raise ValueError(f"expected a flat float32 vector, got {vector.dtype} {vector.shape}")
        return vector

    def train_round(self, training_input: np.ndarray) -> np.ndarray:
        self.rounds += 1
        if self.announce:  # a test kills a participant while it trains
            print("training", flush=True)
        time.sleep(self.train_seconds)
        return training_input + self.delta

    def serialize_training_result(self, training_result: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, training_result.astype("<f4"), allow_pickle=False)
        return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("coordinator_url")
    parser.add_argument("delta", type=float)
    parser.add_argument("--heartbeat-period", type=float, default=0.2)
    parser.add_argument("--train-seconds", type=float, default=0.0, help="how long each round's training takes")
    parser.add_argument("--announce", action="store_true", help="print 'training' when a round's training starts")
    args = parser.parse_args()
    configure_logging()
    participant = AddDelta(args.delta, args.train_seconds, args.announce)
    run_participant(participant, args.coordinator_url, heartbeat_period=args.heartbeat_period)
    print(f"finished after {participant.rounds} rounds", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
