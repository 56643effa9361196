"""The hospital side: receive chest radiographs over DICOM or DICOMweb, send results back as DICOM.

>>> from pneumoscan.dicom import Processor, StorageNode, Peer, pull
>>> processor = Processor("runs/latest", "dicom-out")              # model, output folder
>>> StorageNode(processor, 11112, forward=Peer.parse("PACS@10.0.0.5:104")).serve_forever()
>>> pull(processor, "http://pacs/dicom-web", study="1.2.3", store=True)

Each scored instance gets a Comprehensive SR (probability, label at the model's threshold, model, the
disclaimer) in its own study, optionally a Grad-CAM Secondary Capture, and a row in ``worklist.csv``.
NOT for diagnosis.
"""

from pneumoscan.dicom.instances import CHEST_SOP_CLASSES, Identifiers, refusal
from pneumoscan.dicom.node import Peer, StorageNode
from pneumoscan.dicom.processing import Outcome, Processor
from pneumoscan.dicom.web import PullResult, pull

__all__ = ["CHEST_SOP_CLASSES", "Identifiers", "Outcome", "Peer", "Processor", "PullResult", "StorageNode",
           "pull", "refusal"]
