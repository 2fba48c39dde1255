"""Times the reference ``lems`` 0.1.1 (Keras 3 on the torch backend) on inputs written by
benchmarks/model_throughput.py, and prints one JSON line: {"forward": samples/s, "train": samples/s}.

It runs in its own virtualenv, because the reference pins Keras and its own TKAN and KAN
packages that do not belong in ours:

    python3 -m venv ../lems-ref
    ../lems-ref/bin/pip install torch==2.13.0 lems==0.1.1 keras tkan

model_throughput.py starts it with ``--reference-python ../lems-ref/bin/python``; by hand:

    ../lems-ref/bin/python benchmarks/reference_lems.py INPUTS.npz CONFIG_JSON STEPS THREADS WARMUP
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(inputs_path: str, config_json: str, steps: int, threads: int, warm: int) -> None:
    os.environ["KERAS_BACKEND"] = "torch"
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import keras
    from lems.data_formater import add_config_to_y
    from lems.loss import lem_loss
    from lems.models import LargeExecutionModel

    cfg = json.loads(config_json)
    data = np.load(inputs_path)
    x, rmin, rmax, vol, px = (data[k] for k in ("x", "min_rate", "max_rate", "volumes", "prices"))
    batch = x.shape[0]
    model = LargeExecutionModel(lookback=cfg["lookback"], n_ahead=cfg["n_ahead"], hidden_size=cfg["hidden_size"],
                                hidden_rnn_layer=cfg["rnn_layers"], num_heads=cfg["num_heads"],
                                num_embedding=cfg["num_embedding"], fused_mlp_hidden_dim=cfg["fused_hidden"])
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=lem_loss)
    inputs = [x, rmin[:, None], rmax[:, None]]
    y = add_config_to_y(np.stack([vol, px], -1))
    # Steady state, as ours is timed: Keras spends seconds at the start of every fit (tracing,
    # data adapters), so time from the end of the WARM-th batch to the end of the last one.
    ends = []

    class BatchClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            ends.append(time.perf_counter())

    model.fit([np.concatenate([a] * (warm + steps)) for a in inputs], np.concatenate([y] * (warm + steps)),
              batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[BatchClock()])
    train = batch * steps / (ends[-1] - ends[warm - 1])
    for _ in range(warm):
        model.predict(inputs, batch_size=batch, verbose=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.predict(inputs, batch_size=batch, verbose=0)
    forward = batch * steps / (time.perf_counter() - t0)
    print(json.dumps({"forward": forward, "train": train, "keras": keras.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
