"""Serving: ONNX export and model card, and the REST service with its web page (``pneumoscan serve``).

Nothing is imported here on purpose: ``pneumoscan.serving.export`` must not pull in FastAPI, and the
app (``pneumoscan.serving.app.create_app``) must not pull in torch when it serves an ONNX model.
"""
