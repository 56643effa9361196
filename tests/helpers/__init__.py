"""Helpers shared by the tests (``tests/`` is on the path: ``from helpers.synthetic import ...``).

- :mod:`helpers.synthetic`: fake radiographs with a visible "opacity" for pneumonia.
- :mod:`helpers.images`: odd and broken image files, DICOMs written with pydicom.
- :mod:`helpers.fake_runs`: a run folder with an untrained model (evaluation without training).
- :mod:`helpers.corpus`: the corpus of hostile inputs and a CLI runner for the robustness tests.
- :mod:`helpers.chest_dicoms`: chest radiographs (and what a PACS also sends) as DICOM, for the DICOM node.
- :mod:`helpers.properties`: how many examples a property test draws (fewer in the inner loop).
- :mod:`helpers.shared`: expensive read-only fixtures (exported models) made once per run, even under xdist.
"""
