"""decode_files: many files decoded on worker processes, in order, and in place where no process may start."""

from __future__ import annotations

import multiprocessing

from helpers.synthetic import write_synthetic_image
from pneumoscan.inference.decoding import decode_file, decode_files


def test_a_daemonic_process_decodes_its_files_itself(tmp_path):
    """A worker of a multiprocessing pool may not start processes of its own (Classifier.predict called
    there): the files are decoded in it, with the rows decoding them anywhere else gives."""
    files = [str(write_synthetic_image(tmp_path / f"x{i:03d}.png", i % 2, seed=i)) for i in range(70)]
    expected = [decode_file(f, 32, "pad") for f in files]
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def decode() -> None:
        sender.send([(d.path, d.pixels.tobytes(), d.error) for d in decode_files(files, 32, "pad", workers=2)])

    worker = context.Process(target=decode, daemon=True)
    worker.start()
    worker.join(120)

    assert receiver.poll(1), "the daemonic process failed to decode (see its traceback above)"
    assert receiver.recv() == [(d.path, d.pixels.tobytes(), d.error) for d in expected]
