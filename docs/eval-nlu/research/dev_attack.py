"""The committed classification levels attacked on dev sentences (text the attacker's public
text does not contain verbatim) beside the audit's held-out training rows (which it largely does)."""
import json, time
import numpy as np, torch
from del_server.adapter import Adapter
from del_server.attacks.mechanisms import Binomial
from del_server.attacks.suite import Attacker, AttackOptions, without_lm, ATTACKS
from del_server.models import load_model
from del_server.train.labelled import load_labelled
from del_server.train.classification.pipeline import ClassifyConfig
torch.set_num_threads(2)
loaded = load_model("all-MiniLM-L6-v2")
adapter = Adapter.load("del_server/adapters/minilm-sst2")
data = load_labelled("/work/shared/data/sst2", loaded.tokenizer, held_out=ClassifyConfig.held_out)
attacker = Attacker.of_encoder(loaded.model, data.train.stream(), AttackOptions(trigram_keep=256))
sets = {"dev": data.dev.windows(250, 16), "held_out_audit": data.held_out.windows(None, 16)[250:500]}
print({k: v.shape for k, v in sets.items()}, "dev tokens", len(data.dev.stream()))
out = {}
for name, prompts in sets.items():
    out[name] = {"blind": {a: r.rate for a, r in attacker.prior_alone(prompts).items()}}
    for level in adapter.calibration:
        mech = Binomial.at(mu=level.mu, dim=adapter.projection_dim, bits=level.bits, clip=adapter.clip)
        t = time.time()
        rates = attacker.attack(adapter, mech, prompts, seed=1, attacks=without_lm(ATTACKS))
        out[name][f"{level.target_attack_rate}"] = {a: [r.rate, r.high] for a, r in rates.items()}
        print(name, level.target_attack_rate, {a: f"{r.rate:.4f}/{r.high:.4f}" for a, r in rates.items()}, f"{time.time()-t:.0f}s", flush=True)
json.dump(out, open("/work/evalaux/lmprior/dev_attack.json", "w"), indent=1)
