"""`pneumoscan dicom listen` and `pneumoscan dicom pull`: a DICOM node and a DICOMweb client."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys

from pneumoscan.provenance import DISCLAIMER


def register(subparsers) -> None:
    """Add the ``dicom`` group with ``listen`` and ``pull``."""
    from pneumoscan.cli.commands import HelpFormatter, add_command

    group = subparsers.add_parser(
        "dicom", help="Receive chest X-rays from a PACS (DICOM, DICOMweb) and send results back as DICOM.",
        description="Score chest radiographs as a DICOM node or from a DICOMweb server; results are DICOM "
                    "Comprehensive SRs (and Grad-CAM Secondary Captures) in the source's study, plus "
                    "worklist.csv sorted by probability.\n\n" + DISCLAIMER,
        epilog="example:\n  pneumoscan dicom listen runs/latest --port 11112 --ae-title PNEUMOSCAN --out dicom-out",
        formatter_class=HelpFormatter,
    )
    commands = group.add_subparsers(title="commands", metavar="COMMAND")
    group.set_defaults(func=lambda args: group.print_help() or 2)

    listen = add_command(
        commands, "listen", "Run a DICOM Storage SCP that scores each chest radiograph as it arrives.",
        "pneumoscan dicom listen runs/latest --port 11112 --ae-title PNEUMOSCAN --out dicom-out "
        "--forward ORTHANC@127.0.0.1:4242", run_listen,
    )
    _common(listen)
    listen.add_argument("--port", type=int, default=11112, help="TCP port to listen on")
    listen.add_argument("--ae-title", default="PNEUMOSCAN", help="this node's AE title")
    listen.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 to accept a PACS on another machine")
    listen.add_argument("--forward", metavar="AET@HOST:PORT", help="send the results there with C-STORE")
    limits = listen.add_argument_group("limits per peer (a sender over one is sent an A-ABORT)")
    limits.add_argument("--max-pdu-kib", type=int, default=64, help="largest P-DATA PDU accepted (advertised)")
    limits.add_argument("--max-dataset-mib", type=int, default=64, help="largest instance accepted")
    limits.add_argument("--pdu-timeout", type=float, default=10.0,
                        help="seconds a PDU (and the association request) may take to arrive once begun")
    limits.add_argument("--idle-timeout", type=float, default=60.0, help="seconds an association may stay silent")
    limits.add_argument("--max-associations", type=int, default=16, help="associations at once, all peers")
    limits.add_argument("--max-per-peer", type=int, default=8, help="associations at once from one address")

    pull = add_command(
        commands, "pull", "Find chest radiographs on a DICOMweb server (QIDO-RS), fetch (WADO-RS) and score them.",
        "pneumoscan dicom pull runs/latest --url http://127.0.0.1:8042/dicom-web --since 2026-11-01 "
        "--out dicom-out --store", run_pull,
    )
    _common(pull)
    pull.add_argument("--url", required=True, help="the DICOMweb root, e.g. http://pacs:8042/dicom-web")
    which = pull.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="the StudyInstanceUID to score")
    which.add_argument("--since", metavar="DATE", help="every study from this date on (YYYY-MM-DD)")
    pull.add_argument("--store", action="store_true", help="send the results back with STOW-RS")
    bounds = pull.add_argument_group("limits (a server over one ends the pull with the reason; results so far are kept)")
    bounds.add_argument("--deadline", type=float, default=3600.0, help="seconds for the whole pull")
    bounds.add_argument("--read-timeout", type=float, default=60.0, help="seconds one read may wait for a byte")
    bounds.add_argument("--max-instance-mib", type=int, default=64, help="largest instance accepted")


def _common(command) -> None:
    command.add_argument("model", metavar="MODEL", help="run folder, .safetensors, .ckpt, exported .onnx, or default or fast "
                         "(the bundled models)")
    command.add_argument("--out", metavar="DIR", default="dicom-out",
                         help="folder for sr/, overlay/ and worklist.csv/.json")
    command.add_argument("--overlay", action="store_true",
                         help="also make a Grad-CAM Secondary Capture (needs the PyTorch weights)")
    command.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def _logging() -> None:
    from pneumoscan.dicom.logs import guard_library_logs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    # One line per association or request is noise here: pneumoscan logs what it does with each.
    for library in ("pynetdicom", "dicomweb_client"):
        logging.getLogger(library).setLevel(logging.WARNING)
    guard_library_logs()


def run_listen(args) -> int:
    from pneumoscan.dicom import Peer, Processor, StorageNode
    from pneumoscan.dicom.limits import Limits
    from pneumoscan.dicom.node import check_ae_title

    forward = Peer.parse(args.forward) if args.forward else None
    check_ae_title(args.ae_title)
    limits = Limits(max_pdu_bytes=args.max_pdu_kib * 1024, max_dataset_bytes=args.max_dataset_mib * 2**20,
                    pdu_timeout=args.pdu_timeout, idle_timeout=args.idle_timeout,
                    max_associations=args.max_associations, max_associations_per_peer=args.max_per_peer)
    _logging()
    processor = Processor(args.model, args.out, overlay=args.overlay, device=args.device)
    node = StorageNode(processor, args.port, args.ae_title, host=args.host, forward=forward, limits=limits)
    print(DISCLAIMER, file=sys.stderr)
    # SIGTERM (a service manager stopping the node) ends it like Ctrl-C: the queued results are sent first.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        node.serve_forever()
    print(f"received {node.received} instance(s); worklist in {processor.out / 'worklist.csv'}", file=sys.stderr)
    stages = ", ".join(f"{stage} {seconds * 1000:.1f} ms" for stage, seconds in node.timings().items())
    print(f"time per instance: {stages}", file=sys.stderr)
    return 0


def run_pull(args) -> int:
    from pneumoscan.dicom import Processor, pull
    from pneumoscan.dicom.bounded_http import PullLimits
    from pneumoscan.dicom.web import parse_since

    if args.since:
        parse_since(args.since)  # a bad date is a one-line error before the model is loaded
    limits = PullLimits(deadline=args.deadline, read_timeout=args.read_timeout,
                        max_instance_bytes=args.max_instance_mib * 2**20)
    _logging()
    processor = Processor(args.model, args.out, overlay=args.overlay, device=args.device)
    result = pull(processor, args.url, study=args.study, since=args.since, store=args.store, limits=limits)
    from pneumoscan.dicom.instances import shown_uid

    scored = [o for o in result.outcomes if o.scored]
    for outcome in result.outcomes:
        what = f"{outcome.probability:.4f}  {outcome.label}" if outcome.scored else f"refused: {outcome.reason}"
        print(f"{shown_uid(outcome.ids.sop_instance_uid)}  {what}")
    for uid, why in result.skipped_studies:
        print(f"study {uid}  {why}")
    parts = [f"scored {len(scored)} of {len(result.outcomes)} instance(s)",
             f"{len(result.skipped_series)} series skipped"]
    if result.skipped_studies:
        parts.append(f"{len(result.skipped_studies)} stud{'y' if len(result.skipped_studies) == 1 else 'ies'} skipped")
    if args.store:
        parts.append(f"{result.stored} result(s) stored")
    print("\n" + ", ".join(parts) + f"; worklist in {processor.out / 'worklist.csv'}")
    print(DISCLAIMER, file=sys.stderr)
    return 0
