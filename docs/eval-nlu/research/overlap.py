import numpy as np
from del_server.models import load_model
from del_server.train.labelled import load_labelled
from del_server.train.classification.pipeline import ClassifyConfig
loaded = load_model("all-MiniLM-L6-v2")
data = load_labelled("/work/shared/data/sst2", loaded.tokenizer, held_out=ClassifyConfig.held_out)
pub = data.train.stream().tolist(); held = data.held_out.stream()
win = data.held_out.windows(None, 16)[250:500]
dev = load_labelled("/work/shared/data/sst2", loaded.tokenizer, held_out=ClassifyConfig.held_out).dev.stream()
devwin = dev[: (len(dev)//16)*16].reshape(-1,16)[:250]
for n in (3, 4, 6, 8, 12):
    grams = set(tuple(pub[i:i+n]) for i in range(len(pub)-n+1))
    for name, w in (("held", win), ("dev", devwin)):
        covered = np.zeros(w.shape, bool)
        for r in range(w.shape[0]):
            row = w[r].tolist()
            for i in range(16-n+1):
                if tuple(row[i:i+n]) in grams:
                    covered[r, i:i+n] = True
        print(n, name, f"{covered.mean():.3f}", flush=True)
