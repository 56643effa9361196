"""Run the Keras peer unchanged, recording its validation ROC-AUC and wall time after every epoch.

Runs in the peer's own environment (TensorFlow), not pneumoscan's:

    /tmp/peer/bin/python bench/peer_epoch_auc.py ../shared/peers/seed_keras_baseline.py TRAIN VAL TEST [epochs] [size]

The peer's script cannot take a callback, so this wrapper executes the script as it is (``runpy``) with
``keras.Model.fit`` wrapped to add one callback. At each epoch end the callback scores the validation set
(the same ``val`` dataset the script built) and prints ``PEER_EPOCH {json}``; the seconds spent scoring
are subtracted from the reported wall time, so the peer is not charged for our measurement.
"""

import json
import runpy
import sys
import time

import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

_fit = tf.keras.Model.fit


def _fit_with_auc(self, *args, **kwargs):
    val = kwargs.get("validation_data")

    class EpochAUC(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.spent = time.perf_counter(), 0.0

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            labels = np.concatenate([y.numpy().ravel() for _, y in val])
            probs = self.model.predict(val, verbose=0).ravel()
            record = {"epoch": epoch, "wall_s": round(now - self.start - self.spent, 2),
                      "val_auc": float(roc_auc_score(labels, probs)), "val_loss": float(logs.get("val_loss", "nan"))}
            self.spent += time.perf_counter() - now
            print("PEER_EPOCH " + json.dumps(record), flush=True)

    kwargs["callbacks"] = [*list(kwargs.get("callbacks") or []), EpochAUC()]
    return _fit(self, *args, **kwargs)


tf.keras.Model.fit = _fit_with_auc
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
