"""A training job with no framework: fit y = 3x + 1 by gradient descent, in plain Python.

Writes what every cloudtrain job may write into $CLOUDTRAIN_OUTPUT_DIR: a model file,
metrics.jsonl (one line per epoch) and metrics.json (the final summary).
"""

import json
import os
import random

out = os.environ.get("CLOUDTRAIN_OUTPUT_DIR", ".")
epochs = int(os.environ.get("EPOCHS", "20"))
rng = random.Random(0)
data = [(x, 3 * x + 1 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(200))]
w = b = 0.0
with open(os.path.join(out, "metrics.jsonl"), "w") as series:
    for epoch in range(1, epochs + 1):
        gw = sum(2 * (w * x + b - y) * x for x, y in data) / len(data)
        gb = sum(2 * (w * x + b - y) for x, y in data) / len(data)
        w, b = w - 0.5 * gw, b - 0.5 * gb
        loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
        series.write(json.dumps({"epoch": epoch, "loss": loss}) + "\n")
        print(f"epoch {epoch} loss {loss:.4f}", flush=True)
with open(os.path.join(out, "model.json"), "w") as f:
    json.dump({"w": w, "b": b}, f)
with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({"loss": loss, "w": w, "b": b, "epochs": epochs}, f)
