"""`pneumoscan dicom listen` as a child process whose scoring takes DELAY s per instance, so that a test can
kill it (SIGKILL) while acknowledged instances wait in its spool.

    python slow_node.py MODEL OUT PORT DELAY
"""

from __future__ import annotations

import sys
import time

from pneumoscan.dicom import Processor, StorageNode


def main() -> None:
    model, out, port, delay = sys.argv[1:5]
    processor = Processor(model, out)
    score = processor.process_many

    def slow(items):
        time.sleep(float(delay) * len(items))  # the network of a big model on a busy machine
        return score(items)

    processor.process_many = slow
    StorageNode(processor, int(port)).serve_forever()


if __name__ == "__main__":
    main()
