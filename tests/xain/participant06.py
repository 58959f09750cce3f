"""A xain-sdk 0.6 participant for tests: initialises `length` zeros, then adds a fixed delta per round.

It runs with the 0.6 SDK's own interpreter (protobuf 3.x), e.g.
`python tests/xain/participant06.py 127.0.0.1 50051 http://127.0.0.1:9000 bucket 0.25 --length 37`,
and exits when the coordinator answers FINISHED. It reports `samples` training samples per round.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from xain_sdk.config import Config
from xain_sdk.participant import Participant
from xain_sdk.participant_state_machine import start_participant


class AddDelta(Participant):
    def __init__(self, length: int, delta: float, samples: int, announce: bool = False, seconds: float = 0.0) -> None:
        super().__init__()
        self.length, self.delta, self.samples = length, np.float32(delta), samples
        self.announce, self.seconds = announce, seconds

    def init_weights(self) -> np.ndarray:
        return np.zeros(self.length, dtype=np.float32)

    def train_round(self, weights: np.ndarray, epochs: int, epoch_base: int) -> tuple[np.ndarray, int]:
        if self.announce:  # lets a test kill it while it holds a lease
            print("training", flush=True)
        time.sleep(self.seconds)
        self.update_metrics(0, epoch_base, delta=float(self.delta))
        return weights + self.delta, self.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("storage_endpoint")
    parser.add_argument("bucket")
    parser.add_argument("delta", type=float)
    parser.add_argument("--length", type=int, default=37)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--announce", action="store_true", help="print 'training' when a round starts")
    parser.add_argument("--train-seconds", type=float, default=0.0, help="how long each round's training takes")
    parser.add_argument("--access-key-id", default="edgefl-test")
    parser.add_argument("--secret-access-key", default="edgefl-test-secret")
    args = parser.parse_args()
    config = Config.from_unchecked_dict(
        {
            "coordinator": {"host": args.host, "port": args.port},
            "storage": {
                "endpoint": args.storage_endpoint,
                "bucket": args.bucket,
                "access_key_id": args.access_key_id,
                "secret_access_key": args.secret_access_key,
            },
            "logging": {"level": "warning"},
        }
    )
    participant = AddDelta(args.length, args.delta, args.samples, args.announce, args.train_seconds)
    start_participant(participant, config)
    print(f"participant {participant.dummy_id} finished", flush=True)


if __name__ == "__main__":
    main()
